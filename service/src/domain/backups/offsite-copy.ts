// Owns the copy of backups off the machine: every finished per-app dump (and its .sha256 sidecar) to
// <OFFSITE_REMOTE>/dumps, and pgBackRest's repository to <OFFSITE_REMOTE>/pgbackrest, through rclone
// (src/db/offsite/rclone.ts). What may be removed on the remote is decided here, and only here:
//   - dumps are COPIED, never synced: an emptied or lost BACKUP_DIR never removes a remote file. The remote loses a
//     dump only when removeDumps names it (the retention policy chose it);
//   - the repository is SYNCED (pgBackRest's expire removes old backups and WAL, and the remote should follow), but
//     guarded: a repository that looks lost or empty is refused, so a wiped disk never wipes the remote; and its
//     .info files go last, so the remote never names a backup whose files are not there yet.
// Recovering from the remote is the operator's (runbooks/fetch-offsite.sh), never the service's.
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import type { Logger } from 'pino';
import { Rclone } from '../../db/offsite/rclone.js';
import type { Config } from '../../shared/config.js';
import { OffsiteCopyFailedError, OffsiteCopyRefusedError } from '../../shared/errors.js';
import { BACKUP_FILE_PATTERN, CHECKSUM_SUFFIX } from './backup-files.js';

/** What /health's details and the README say when no remote is configured. */
export const NO_OFFSITE_COPY = 'no off-site remote is configured (OFFSITE_REMOTE): every backup is on the same disk as the data';


/** pgBackRest's files that name what the repository holds (backup.info, archive.info and their .copy): sent last. */
const INFO_FILE = /\.info(?:\.copy)?$/;
/** A pgBackRest backup label (full, or differential/incremental on top of one): a directory under backup/<stanza>/. */
const BACKUP_LABEL = /^\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?$/;

/** The remote as shown to people: an rclone connection string's parameters (`name,key=value:`) are never shown. */
function shownRemote(remote: string): string {
  return remote.replace(/^([^,:]*),[^:]*:/, '$1,…:');
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return false;
    throw err;
  }
}

/** The backups a backup.info names as current (its [backup:current] section), or undefined when it is not text (an encrypted repository). */
function currentBackups(backupInfo: string): string[] | undefined {
  const section = /^\[backup:current\]\s*$([\s\S]*?)(?=^\[|(?![\s\S]))/m.exec(backupInfo);
  if (!/^\[backrest\]\s*$/m.test(backupInfo)) return undefined;
  if (!section) return [];
  return [...section[1]!.matchAll(/^([^=\s]+)=/gm)].map((m) => m[1]!);
}

/** Every file under `dir` whose name `wanted` accepts, relative to `dir` (symbolic links are not followed). */
async function filesUnder(dir: string, wanted: (name: string) => boolean): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((entry) => entry.isFile() && wanted(entry.name)).map((entry) => relative(dir, join(entry.parentPath ?? entry.path, entry.name)));
}

export class OffsiteCopy {
  /** OFFSITE_REMOTE is set: backups are copied off the machine. */
  readonly enabled: boolean;
  private readonly remote: string | undefined;
  private readonly stanza: string | undefined;
  private readonly rclone: Rclone;
  private readonly log: Logger;

  constructor(config: Config, log: Logger) {
    this.remote = config.OFFSITE_REMOTE;
    this.enabled = this.remote !== undefined;
    this.stanza = config.PGBACKREST_STANZA;
    this.rclone = new Rclone(config);
    this.log = log.child({ component: 'offsite-copy' });
  }

  /** Where backups are copied to, as configured (`offsite:pg-provisioner`); null when they are not. Never credentials. */
  describe(): { remote: string | null } {
    return { remote: this.remote === undefined ? null : shownRemote(this.remote) };
  }

  private target(sub: 'dumps' | 'pgbackrest'): string {
    if (this.remote === undefined) throw new Error('OffsiteCopy: OFFSITE_REMOTE is not set (check `enabled` first)');
    return `${this.remote.replace(/\/+$/, '')}/${sub}`;
  }

  /**
   * Copies every finished dump in `localDir` (`*.dump`, never `*.partial`) to <remote>/dumps, then their checksum
   * sidecars (`*.dump.sha256`): a sidecar on the remote means its dump was sent whole before it. Never removes
   * anything there. A file already there with the same size and time is skipped; every file sent is checked against
   * its hash where the remote can give one (rclone's own check after each transfer: sftp with a shell, S3, …).
   */
  async copyDumps(localDir: string): Promise<{ copied: number }> {
    const target = this.target('dumps');
    if (!(await isDirectory(localDir))) throw new OffsiteCopyFailedError('dumps', 'local_missing');
    const started = Date.now();
    const only = (glob: string) => ['--max-depth=1', `--include=${glob}`];
    const dumps = await this.rclone.run('dumps', ['copy', localDir, target, ...only('*.dump')]);
    const sidecars = await this.rclone.run('dumps', ['copy', localDir, target, ...only(`*.dump${CHECKSUM_SUFFIX}`)]);
    const copied = dumps.copied.length + sidecars.copied.length;
    this.log.info({ remote: this.describe().remote, copied, durationMs: Date.now() - started }, 'off-site copy of the dumps done');
    return { copied };
  }

  /**
   * Removes these dumps (file names, as BackupFiles lists them) and their checksum sidecars from <remote>/dumps:
   * what the retention policy removed here. Files not there are fine. Any other name is refused (a bug).
   */
  async removeDumps(files: string[]): Promise<void> {
    const target = this.target('dumps');
    for (const file of files) {
      if (!BACKUP_FILE_PATTERN.test(file)) throw new TypeError(`OffsiteCopy.removeDumps: ${JSON.stringify(file)} is not a backup file's name`);
    }
    if (files.length === 0) return;
    const names = files.flatMap((file) => [file, `${file}${CHECKSUM_SUFFIX}`]);
    try {
      // One listing and one removal per file listed, whatever else is there; --files-from-raw: the names as given.
      const run = await this.rclone.run('removing dumps', ['delete', target, '--max-depth=1', '--files-from-raw=-'], `${names.join('\n')}\n`);
      this.log.info({ remote: this.describe().remote, removed: run.deleted.length }, 'removed dumps from the off-site copy');
    } catch (err) {
      // rclone exits 3 when the directory itself is missing: nothing was ever copied there, so nothing to remove.
      if (err instanceof OffsiteCopyFailedError && err.exitCode === 3) return;
      throw err;
    }
  }

  /**
   * Syncs pgBackRest's repository at `repoDir` to <remote>/pgbackrest, in three steps: the data files are copied
   * (backups, WAL); then the .info files as they were before that copy began (so every backup they name was whole
   * locally, and now is on the remote); then what the repository no longer has is removed from the remote (what
   * expire removed), the files of every backup those .info files name excepted. Refused (OffsiteCopyRefusedError,
   * nothing sent or removed) when the repository looks lost or empty: no backup.info or archive.info for the stanza,
   * or no backup in it. Symbolic links (`latest`) are skipped: pgBackRest needs none to restore.
   */
  async copyClusterRepo(repoDir: string): Promise<void> {
    const target = this.target('pgbackrest');
    const stanza = this.stanza;
    if (stanza === undefined) throw new OffsiteCopyRefusedError('the pgBackRest repository', 'PGBACKREST_STANZA is off, so there is no stanza to check the repository by');
    if (!(await isDirectory(repoDir))) throw new OffsiteCopyRefusedError('the pgBackRest repository', `${repoDir} is missing: it looks lost`);
    const started = Date.now();

    // The .info files, read once, before anything is sent: they are what the remote will be told it holds.
    const staged = await mkdtemp(join(tmpdir(), 'pgprov-offsite-'));
    try {
      const infoFiles = await filesUnder(repoDir, (name) => INFO_FILE.test(name));
      for (const file of infoFiles) {
        await mkdir(dirname(join(staged, file)), { recursive: true, mode: 0o700 });
        await copyFile(join(repoDir, file), join(staged, file));
      }
      const named = await this.checkRepository(repoDir, staged, stanza);

      const skipInfo = ['--skip-links', '--filter=- *.info', '--filter=- *.info.copy'];
      const sent = await this.rclone.run('pgbackrest repository (data files)', ['copy', repoDir, target, ...skipInfo]);
      const info = await this.rclone.run('pgbackrest repository (.info files)', ['copy', staged, target, '--skip-links']);
      // Checked again, on the repository as it is now, just before anything is removed from the remote: the copy
      // above takes minutes for a full backup, and a repository lost meanwhile (a disk wiped while the service
      // runs, the restore drill: test/stack/pitr-offsite.test.ts) would otherwise have the sync remove every WAL
      // segment from the remote, the one copy left.
      await this.checkRepository(repoDir, repoDir, stanza);
      const keepNamed = named.map((label) => `--filter=- /backup/${stanza}/${label}/**`);
      const pruned = await this.rclone.run('pgbackrest repository (removals)', ['sync', repoDir, target, ...skipInfo, ...keepNamed]);
      this.log.info(
        { remote: this.describe().remote, copied: sent.copied.length + info.copied.length + pruned.copied.length, removed: pruned.deleted.length, durationMs: Date.now() - started },
        'off-site copy of the pgBackRest repository done',
      );
    } finally {
      await rm(staged, { recursive: true, force: true });
    }
  }

  /** The guard: the stanza's backup.info and archive.info (as staged), at least one backup, each named one present. Returns their labels. */
  private async checkRepository(repoDir: string, staged: string, stanza: string): Promise<string[]> {
    const refuse = (reason: string) => new OffsiteCopyRefusedError('the pgBackRest repository', `${reason}: it looks lost or empty`);
    const read = (file: string) => readFile(join(staged, file), 'utf8').catch(() => undefined);
    const backupInfo = (await read(join('backup', stanza, 'backup.info'))) ?? (await read(join('backup', stanza, 'backup.info.copy')));
    if (backupInfo === undefined) throw refuse(`no backup/${stanza}/backup.info`);
    if ((await read(join('archive', stanza, 'archive.info'))) === undefined && (await read(join('archive', stanza, 'archive.info.copy'))) === undefined) {
      throw refuse(`no archive/${stanza}/archive.info`);
    }
    const backupDir = join(repoDir, 'backup', stanza);
    // An encrypted repository's backup.info is not text: its backups are the directories named as labels.
    const labels = currentBackups(backupInfo) ?? (await readdir(backupDir)).filter((name) => BACKUP_LABEL.test(name));
    if (labels.length === 0) throw refuse(`backup/${stanza}/backup.info names no backup`);
    for (const label of labels) {
      if (!(await isDirectory(join(backupDir, label)))) throw refuse(`backup ${label}, which backup.info names, is not in backup/${stanza}/`);
    }
    return labels;
  }
}
