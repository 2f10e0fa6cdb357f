// Owns backup files: pg_dump custom-format dumps of one app's database in BACKUP_DIR, named
// app_<name>-<UTC time>.dump, listed from the directory, restored with pg_restore. No SQL here: the client
// programs of PostgreSQL 15 do the work, connected as the superuser.
import { execFile } from 'node:child_process';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { AppIdentifiers } from './app-names.js';
import type { Config } from './config.js';
import { BackupNotFoundError, DatabaseUnavailableError } from './errors.js';

const run = promisify(execFile);

export interface BackupFile {
  file: string;
  size_bytes: number;
  created_at: string;
}

/** The shape of every backup file name; nothing else in BACKUP_DIR is ever read or listed. */
export const BACKUP_FILE_PATTERN = /^app_[a-z0-9_]{3,32}-\d{8}T\d{9}Z\.dump$/;

function timestamp(date: Date): string {
  return date.toISOString().replace(/[-:.]/g, ''); // 20261124T210512345Z
}

function createdAt(file: string): string {
  const m = /-(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(\d{3})Z\.dump$/.exec(file)!;
  return `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}.${m[7]}Z`;
}

/** pg_dump/pg_restore say "connection to server … failed" when Postgres is away: that is a 503, not a bug. */
function clientProgramError(program: string, err: unknown): Error {
  const stderr = String((err as { stderr?: unknown }).stderr ?? '');
  if (/connection to server|could not connect|server closed the connection|timeout expired/i.test(stderr)) return new DatabaseUnavailableError();
  return Object.assign(new Error(`${program} failed`), { cause: err, stderr: stderr.slice(0, 2000) });
}

export class Backups {
  private readonly config: Config;

  constructor(config: Config) {
    this.config = config;
  }

  private connectionArgs(database: string): string[] {
    const { DATABASE_HOST, DATABASE_PORT, POSTGRES_USER } = this.config;
    return [`--host=${DATABASE_HOST}`, `--port=${DATABASE_PORT}`, `--username=${POSTGRES_USER}`, `--dbname=${database}`, '--no-password'];
  }

  private get env(): NodeJS.ProcessEnv {
    return { PATH: process.env.PATH, PGPASSWORD: this.config.POSTGRES_PASSWORD, PGAPPNAME: 'pg-provisioner-backup', PGCONNECT_TIMEOUT: '10' };
  }

  /** Dumps the app's database. Written under a temporary name first, so a listed file is always whole. */
  async dump(app: AppIdentifiers): Promise<BackupFile> {
    await mkdir(this.config.BACKUP_DIR, { recursive: true });
    const file = `${app.database}-${timestamp(new Date())}.dump`;
    const path = join(this.config.BACKUP_DIR, file);
    const partial = `${path}.partial`;
    try {
      await run(this.config.PG_DUMP_PATH, [...this.connectionArgs(app.database), '--format=custom', `--file=${partial}`], {
        env: this.env,
        timeout: this.config.BACKUP_TIMEOUT_MS,
      });
      await rename(partial, path);
    } catch (err) {
      await rm(partial, { force: true });
      throw clientProgramError('pg_dump', err);
    }
    return { file, size_bytes: (await stat(path)).size, created_at: createdAt(file) };
  }

  /** The app's backups, newest first. */
  async list(app: AppIdentifiers): Promise<BackupFile[]> {
    let names: string[];
    try {
      names = await readdir(this.config.BACKUP_DIR);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const mine = names.filter((name) => BACKUP_FILE_PATTERN.test(name) && name.startsWith(`${app.database}-`)).sort().reverse();
    return Promise.all(
      mine.map(async (file) => ({ file, size_bytes: (await stat(join(this.config.BACKUP_DIR, file))).size, created_at: createdAt(file) })),
    );
  }

  /** The path of one of the app's backups; BackupNotFoundError for anything else (other apps', paths, typos). */
  async pathOf(app: AppIdentifiers, file: string): Promise<string> {
    const known = await this.list(app);
    if (!known.some((backup) => backup.file === file)) throw new BackupNotFoundError(app.appName, file);
    return join(this.config.BACKUP_DIR, file);
  }

  /** Restores a dump into `database`, every object created as (and so owned by) the app's login role. */
  async restore(path: string, database: string, app: AppIdentifiers): Promise<void> {
    try {
      await run(
        this.config.PG_RESTORE_PATH,
        [...this.connectionArgs(database), `--role=${app.username}`, '--no-owner', '--exit-on-error', '--single-transaction', path],
        { env: this.env, timeout: this.config.BACKUP_TIMEOUT_MS },
      );
    } catch (err) {
      throw clientProgramError('pg_restore', err);
    }
  }
}
