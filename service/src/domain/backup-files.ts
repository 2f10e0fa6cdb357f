// Owns backup files: dumps of one app's database in BACKUP_DIR, named app_<name>-<incarnation>-<UTC time>.dump,
// listed from the directory (nothing else there is ever read or listed). A new file is written under a temporary
// name first, made 0600 before anything writes into it, so a listed file is always whole and never readable by
// others; the directory is readable by the service's user only. What writes the dump is the caller's
// (pg_dump, src/db/postgres-server/dump-restore.ts).
import { chmod, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Config } from '../shared/config.js';
import { BackupNotFoundError } from '../shared/errors.js';
import { APP_DATABASE_REGEX, type AppIdentifiers } from '../shared/object-names.js';

export interface BackupFile {
  file: string;
  app_name: string;
  /** The incarnation of the app the dump was taken of; null for dumps named before incarnations existed. */
  incarnation: string | null;
  size_bytes: number;
  created_at: string;
}

/** Every backup file name: the app's database name (app_<name>), its incarnation, and the time of the dump. */
export const BACKUP_FILE_PATTERN = new RegExp(`^${APP_DATABASE_REGEX}-(?:([0-9a-f]{16})-)?(\\d{4})(\\d{2})(\\d{2})T(\\d{2})(\\d{2})(\\d{2})(\\d{3})Z\\.dump$`);

function parseBackupFile(file: string): Omit<BackupFile, 'size_bytes'> | undefined {
  const m = BACKUP_FILE_PATTERN.exec(file);
  if (!m) return undefined;
  return { file, app_name: m[1]!, incarnation: m[2] ?? null, created_at: `${m[3]}-${m[4]}-${m[5]}T${m[6]}:${m[7]}:${m[8]}.${m[9]}Z` };
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
   * (an empty file, 0600, under a temporary name), which then takes its backup name; on failure it is removed.
   */
  async create(app: AppIdentifiers, incarnation: string, write: (path: string) => Promise<void>): Promise<BackupFile> {
    const file = backupFileName(app, incarnation, new Date());
    const path = join(await this.directory(), file);
    const partial = `${path}.partial`;
    try {
      await (await open(partial, 'wx', 0o600)).close();
      await write(partial);
      await rename(partial, path);
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    }
    return { ...parseBackupFile(file)!, size_bytes: (await stat(path)).size };
  }

  /** Every backup in BACKUP_DIR (of every app and incarnation, deleted ones included), newest first. */
  async list(filter: (backup: Omit<BackupFile, 'size_bytes'>) => boolean = () => true): Promise<BackupFile[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const backups = names
      .map(parseBackupFile)
      .filter((backup): backup is Omit<BackupFile, 'size_bytes'> => backup !== undefined && filter(backup))
      .sort((x, y) => y.created_at.localeCompare(x.created_at) || y.file.localeCompare(x.file));
    return Promise.all(backups.map(async (backup) => ({ ...backup, size_bytes: (await stat(join(this.dir, backup.file))).size })));
  }

  /** The backups of one incarnation of an app, newest first. */
  async listOf(app: AppIdentifiers, incarnation: string): Promise<BackupFile[]> {
    return this.list((backup) => backup.app_name === app.appName && backup.incarnation === incarnation);
  }

  /** One backup file by name; BackupNotFoundError for anything not in BACKUP_DIR under a backup's name. */
  async find(appName: string, file: string): Promise<BackupFile & { path: string }> {
    const [backup] = await this.list((candidate) => candidate.file === file);
    if (!backup) throw new BackupNotFoundError(appName, file);
    return { ...backup, path: join(this.dir, file) };
  }
}
