// Owns backup files: dumps of one app's database in BACKUP_DIR, named app_<name>-<incarnation>-<UTC time>.dump,
// listed from the directory (nothing else there is ever read or listed). A new file is written under a temporary
// name first, made 0600 before anything writes into it, checked (the caller's `verify` reads it whole) and its
// SHA-256 written beside it (<file>.sha256, as sha256sum writes it, so `sha256sum -c` checks a copy anywhere),
// and only then takes its name: a listed file is always whole, verified and never readable by others; the
// directory is readable by the service's user only. What writes and reads the dump is the caller's (pg_dump and
// pg_restore, src/db/postgres-server/dump-restore.ts).
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { join } from 'node:path';
import type { Config } from '../../shared/config.js';
import { BackupNotFoundError } from '../../shared/errors.js';
import { APP_DATABASE_REGEX, type AppIdentifiers } from '../../shared/object-names.js';

export interface BackupFile {
  file: string;
  app_name: string;
  /** The incarnation of the app the dump was taken of; null for dumps named before incarnations existed. */
  incarnation: string | null;
  size_bytes: number;
  created_at: string;
  /** The dump's SHA-256 in hex, from its .sha256 file beside it; null for dumps made before checksums. */
  sha256?: string | null;
}

/** A backup file as its name tells it: no disk access beyond reading the directory. */
export type BackupName = Omit<BackupFile, 'size_bytes' | 'sha256'>;

/** Names one incarnation of an app, as the keys of newestOfEach's map. */
export function incarnationKey(appName: string, incarnation: string | null): string {
  return `${appName}/${incarnation}`;
}

/** The newest backup of each incarnation of each app, keyed by incarnationKey, out of `backups` newest first (as names() lists them). */
export function newestOfEach(backups: readonly BackupName[]): Map<string, BackupName> {
  const newest = new Map<string, BackupName>();
  for (const backup of backups) {
    const key = incarnationKey(backup.app_name, backup.incarnation);
    if (!newest.has(key)) newest.set(key, backup);
  }
  return newest;
}

/** The checksum file beside a dump: `<hex>  <file>`, as sha256sum writes it. */
export const CHECKSUM_SUFFIX = '.sha256';

async function sha256Of(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

/** Every backup file name: the app's database name (app_<name>), its incarnation, and the time of the dump. */
export const BACKUP_FILE_PATTERN = new RegExp(`^${APP_DATABASE_REGEX}-(?:([0-9a-f]{16})-)?(\\d{4})(\\d{2})(\\d{2})T(\\d{2})(\\d{2})(\\d{2})(\\d{3})Z\\.dump$`);

function parseBackupFile(file: string): BackupName | undefined {
  const m = BACKUP_FILE_PATTERN.exec(file);
  if (!m) return undefined;
  return { file, app_name: m[1]!, incarnation: m[2] ?? null, created_at: `${m[3]}-${m[4]}-${m[5]}T${m[6]}:${m[7]}:${m[8]}.${m[9]}Z` };
}

/** Newest first; within one moment, by name. */
function newestFirst(x: BackupName, y: BackupName): number {
  return y.created_at.localeCompare(x.created_at) || y.file.localeCompare(x.file);
}

function backupFileName(app: AppIdentifiers, incarnation: string, date: Date): string {
  return `${app.database}-${incarnation}-${date.toISOString().replace(/[-:.]/g, '')}.dump`; // …-20261124T210512345Z.dump
}

export class BackupFiles {
  private readonly dir: string;

  constructor(config: Config) {
    this.dir = config.BACKUP_DIR;
  }

  /** BACKUP_DIR, made if missing, readable by the service's user only. */
  private async directory(): Promise<string> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await chmod(this.dir, 0o700).catch(() => {}); // a directory made by someone else stays as it is
    return this.dir;
  }

  /**
   * A new backup of this incarnation of the app, named for now: `write` fills the file at the path it is given
   * (an empty file, 0600, under a temporary name), `verify` reads it whole (it throws if the dump cannot be
   * read), its checksum is written beside it, and it then takes its backup name; on any failure both go.
   */
  async create(app: AppIdentifiers, incarnation: string, write: (path: string) => Promise<void>, verify: (path: string) => Promise<void>): Promise<BackupFile> {
    const file = backupFileName(app, incarnation, new Date());
    const path = join(await this.directory(), file);
    const partial = `${path}.partial`;
    const checksumFile = `${path}${CHECKSUM_SUFFIX}`;
    let sha256: string;
    try {
      await (await open(partial, 'wx', 0o600)).close();
      await write(partial);
      await verify(partial);
      sha256 = await sha256Of(partial);
      await writeFile(checksumFile, `${sha256}  ${file}\n`, { mode: 0o600, flag: 'w' });
      await rename(partial, path);
    } catch (err) {
      await Promise.all([rm(partial, { force: true }), rm(checksumFile, { force: true })]);
      throw err;
    }
    return { ...parseBackupFile(file)!, size_bytes: (await stat(path)).size, sha256 };
  }

  /** Every backup's name in BACKUP_DIR (of every app and incarnation, deleted ones included), newest first: the directory alone. */
  async names(filter: (backup: BackupName) => boolean = () => true): Promise<BackupName[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    return names
      .map(parseBackupFile)
      .filter((backup): backup is BackupName => backup !== undefined && filter(backup))
      .sort(newestFirst);
  }

  /** Every backup in BACKUP_DIR (of every app and incarnation, deleted ones included), newest first, with its size. */
  async list(filter: (backup: BackupName) => boolean = () => true): Promise<BackupFile[]> {
    const backups = await this.names(filter);
    return Promise.all(backups.map(async (backup) => ({ ...backup, size_bytes: (await stat(join(this.dir, backup.file))).size })));
  }

  /** The backups of one incarnation of an app, newest first, each with its checksum. */
  async listOf(app: AppIdentifiers, incarnation: string): Promise<BackupFile[]> {
    const backups = await this.list((backup) => backup.app_name === app.appName && backup.incarnation === incarnation);
    return Promise.all(backups.map(async (backup) => ({ ...backup, sha256: await this.checksumOf(backup.file) })));
  }

  /** The SHA-256 recorded beside a dump; null when there is none (made before checksums) or it cannot be read. */
  private async checksumOf(file: string): Promise<string | null> {
    const text = await readFile(join(this.dir, `${file}${CHECKSUM_SUFFIX}`), 'utf8').catch(() => '');
    return /^([0-9a-f]{64})\s/.exec(text)?.[1] ?? null;
  }

  /** Removes backup files (and their checksums); those already gone are no error. */
  async remove(files: string[]): Promise<void> {
    for (const file of files) {
      if (!parseBackupFile(file)) throw new Error(`not a backup file name: ${file}`);
      await rm(join(this.dir, file), { force: true });
      await rm(join(this.dir, `${file}${CHECKSUM_SUFFIX}`), { force: true });
    }
  }

  /**
   * Removes what dumps cut short left behind (the service was killed mid-dump): `.partial` files (and the checksum
   * written beside one) untouched for longer than any dump may take. Returns their names.
   */
  async removeLeftovers(olderThanMs: number): Promise<string[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const removed: string[] = [];
    for (const name of names.filter((n) => n.endsWith('.partial'))) {
      const path = join(this.dir, name);
      const stats = await stat(path).catch(() => undefined);
      if (!stats || Date.now() - stats.mtimeMs < olderThanMs) continue;
      const file = name.slice(0, -'.partial'.length);
      // The checksum first: once the .partial is gone, nothing of the cut-short dump is left.
      await rm(join(this.dir, `${file}${CHECKSUM_SUFFIX}`), { force: true });
      await rm(path, { force: true });
      removed.push(name);
    }
    return removed;
  }

  /** BACKUP_DIR, where the files are (the off-site copy reads it). */
  get directoryPath(): string {
    return this.dir;
  }

  /** One backup file by name; BackupNotFoundError for anything not in BACKUP_DIR under a backup's name. */
  async find(appName: string, file: string): Promise<BackupFile & { path: string }> {
    const [backup] = await this.list((candidate) => candidate.file === file);
    if (!backup) throw new BackupNotFoundError(appName, file);
    return { ...backup, path: join(this.dir, file) };
  }
}
