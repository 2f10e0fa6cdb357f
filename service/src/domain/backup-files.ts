// Owns backup files: pg_dump custom-format dumps of one app's database in BACKUP_DIR, named
// app_<name>-<incarnation>-<UTC time>.dump, listed from the directory, restored with pg_restore. The client
// programs of PostgreSQL 15 do the work, logged in as an agent with the app's own rights (src/agents.ts), never
// as the superuser. No SQL here. Files and the directory are readable by the service's user only.
import { execFile } from 'node:child_process';
import { chmod, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { AgentLogin } from '../db/postgres-server/agent-roles.js';
import type { AppIdentifiers } from '../shared/app-names.js';
import type { Config } from '../shared/config.js';
import { watchLockWaits } from '../shared/lock-watch.js';
import { BackupBlockedError, BackupFailedError, BackupNotFoundError, BackupNotRestorableError, BackupRefusedError, DatabaseUnavailableError } from '../shared/errors.js';

const run = promisify(execFile);

export interface BackupFile {
  file: string;
  app_name: string;
  /** The incarnation of the app the dump was taken of; null for dumps named before incarnations existed. */
  incarnation: string | null;
  size_bytes: number;
  created_at: string;
}

/** Every backup file name; nothing else in BACKUP_DIR is ever read or listed. */
export const BACKUP_FILE_PATTERN = /^app_([a-z0-9_]{3,32})-(?:([0-9a-f]{16})-)?(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(\d{3})Z\.dump$/;

function parseBackupFile(file: string): Omit<BackupFile, 'size_bytes'> | undefined {
  const m = BACKUP_FILE_PATTERN.exec(file);
  if (!m) return undefined;
  return { file, app_name: m[1]!, incarnation: m[2] ?? null, created_at: `${m[3]}-${m[4]}-${m[5]}T${m[6]}:${m[7]}:${m[8]}.${m[9]}Z` };
}

function backupFileName(app: AppIdentifiers, incarnation: string, date: Date): string {
  return `${app.database}-${incarnation}-${date.toISOString().replace(/[-:.]/g, '')}.dump`; // …-20261124T210512345Z.dump
}

/**
 * What went wrong in a client program, in our words. Its stderr can quote text a tenant chose (object names,
 * messages raised by its functions, row values), so it is read here for a category and never logged or
 * returned.
 */
function failureCategory(stderr: string): 'unavailable' | 'lock' | 'refused' | 'other' {
  if (/connection to server|could not connect|server closed the connection|timeout expired|the database system is/i.test(stderr)) return 'unavailable';
  // pg_dump's --lock-wait-timeout sets statement_timeout around its LOCK TABLE statements, and only there.
  if (/could not obtain lock|lock timeout|canceling statement due to (?:lock|statement) timeout/i.test(stderr)) return 'lock';
  if (/permission denied|row-level security/i.test(stderr)) return 'refused';
  return 'other';
}

export class Backups {
  private readonly config: Config;

  constructor(config: Config) {
    this.config = config;
  }

  private connectionArgs(database: string, agent: AgentLogin): string[] {
    const { DATABASE_HOST, DATABASE_PORT } = this.config;
    return [`--host=${DATABASE_HOST}`, `--port=${DATABASE_PORT}`, `--username=${agent.user}`, `--dbname=${database}`, '--no-password'];
  }

  private env(agent: AgentLogin): NodeJS.ProcessEnv {
    return { PATH: process.env.PATH, PGPASSWORD: agent.password, PGAPPNAME: 'pg-provisioner-backup', PGCONNECT_TIMEOUT: '10' };
  }

  /** BACKUP_DIR, made if missing, readable by the service's user only. */
  private async directory(): Promise<string> {
    const dir = this.config.BACKUP_DIR;
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700).catch(() => {}); // a directory made by someone else stays as it is
    return dir;
  }

  /**
   * Dumps the app's database as its agent. Written under a temporary name first (made 0600 before pg_dump
   * opens it), so a listed file is always whole and never readable by others.
   */
  async dump(app: AppIdentifiers, incarnation: string, agent: AgentLogin): Promise<BackupFile> {
    const file = backupFileName(app, incarnation, new Date());
    const path = join(await this.directory(), file);
    const partial = `${path}.partial`;
    try {
      await (await open(partial, 'wx', 0o600)).close();
      const lockWaitMs = this.config.BACKUP_LOCK_WAIT_TIMEOUT_MS;
      await this.runProgram('pg_dump', app, agent, this.config.PG_DUMP_PATH, [
        ...this.connectionArgs(app.database, agent),
        '--format=custom',
        `--lock-wait-timeout=${lockWaitMs}`,
        `--file=${partial}`,
      ]);
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
      names = await readdir(this.config.BACKUP_DIR);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const backups = names
      .map(parseBackupFile)
      .filter((backup): backup is Omit<BackupFile, 'size_bytes'> => backup !== undefined && filter(backup))
      .sort((x, y) => y.created_at.localeCompare(x.created_at) || y.file.localeCompare(x.file));
    return Promise.all(backups.map(async (backup) => ({ ...backup, size_bytes: (await stat(join(this.config.BACKUP_DIR, backup.file))).size })));
  }

  /** The backups of one incarnation of an app, newest first. */
  async listOf(app: AppIdentifiers, incarnation: string): Promise<BackupFile[]> {
    return this.list((backup) => backup.app_name === app.appName && backup.incarnation === incarnation);
  }

  /** One backup file by name; BackupNotFoundError for anything not in BACKUP_DIR under a backup's name. */
  async find(appName: string, file: string): Promise<BackupFile & { path: string }> {
    const [backup] = await this.list((candidate) => candidate.file === file);
    if (!backup) throw new BackupNotFoundError(appName, file);
    return { ...backup, path: join(this.config.BACKUP_DIR, file) };
  }

  /**
   * Restores a dump into `database` as the app's agent: every object is created as (and so owned by) the app's
   * login role, and anything the dump's own code does runs with the app's rights at most.
   */
  async restore(path: string, file: string, database: string, app: AppIdentifiers, agent: AgentLogin): Promise<void> {
    try {
      await this.runProgram('pg_restore', app, agent, this.config.PG_RESTORE_PATH, [
        ...this.connectionArgs(database, agent),
        `--role=${app.username}`,
        '--no-owner',
        '--exit-on-error',
        '--single-transaction',
        path,
      ]);
    } catch (err) {
      if (err instanceof BackupFailedError) throw new BackupNotRestorableError(file, app.appName);
      throw err;
    }
  }

  /**
   * Runs a client program; while it runs, watches the agent's session, and stops the program once it has
   * waited BACKUP_LOCK_WAIT_TIMEOUT_MS for a lock (a tenant's transaction can hold one for as long as it likes;
   * pg_dump's --lock-wait-timeout covers only its first table locks). Failures become our own errors.
   */
  private async runProgram(program: 'pg_dump' | 'pg_restore', app: AppIdentifiers, agent: AgentLogin, path: string, args: string[]): Promise<void> {
    const lockWaitMs = this.config.BACKUP_LOCK_WAIT_TIMEOUT_MS;
    const stop = new AbortController();
    let blocked = false;
    const watching = watchLockWaits(stop.signal, agent.waitingOnLock, lockWaitMs, () => {
      blocked = true;
      stop.abort();
    });
    try {
      await run(path, args, { env: this.env(agent), timeout: this.config.BACKUP_TIMEOUT_MS, signal: stop.signal });
    } catch (err) {
      const category = blocked ? 'lock' : failureCategory(String((err as { stderr?: unknown }).stderr ?? ''));
      if (category === 'unavailable') throw new DatabaseUnavailableError();
      if (category === 'lock') throw new BackupBlockedError(app.appName, Math.round(lockWaitMs / 1000));
      if (category === 'refused' && program === 'pg_dump') throw new BackupRefusedError(app.appName, 'an object in its database cannot be read by its own role: permission denied or row-level security');
      const { code, signal } = err as { code?: unknown; signal?: unknown };
      throw Object.assign(new BackupFailedError(program, app.appName), { exitCode: typeof code === 'number' ? code : undefined, signal: typeof signal === 'string' ? signal : undefined });
    } finally {
      stop.abort();
      await watching;
    }
  }
}
