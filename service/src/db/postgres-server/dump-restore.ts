// Owns the client programs of PostgreSQL 15 that copy an app's database out and back in: pg_dump (custom format,
// into a file the caller names) and pg_restore, logged in as an agent with the app's own rights
// (agent-roles.ts), never as the superuser. While a program runs, its agent's session is watched for lock waits.
// Failures become the service's own errors; a program's stderr can quote tenant data and is never logged.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Config } from '../../shared/config.js';
import { BackupBlockedError, BackupFailedError, BackupNotRestorableError, BackupRefusedError, DatabaseUnavailableError } from '../../shared/errors.js';
import { watchLockWaits } from '../../shared/lock-watch.js';
import type { AppIdentifiers } from '../../shared/object-names.js';
import type { ServerAddress } from '../superuser-connections.js';
import type { AgentLogin } from './agent-roles.js';
import { parseDumpListing, type DumpListing } from './dump-contents.js';

const run = promisify(execFile);

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

export class DumpAndRestore {
  private readonly config: Config;
  private readonly server: Pick<ServerAddress, 'host' | 'port'>;

  /** The programs reach the server at `server`'s address (as the service does); paths and bounds from `config`. */
  constructor(server: Pick<ServerAddress, 'host' | 'port'>, config: Config) {
    this.server = server;
    this.config = config;
  }

  private connectionArgs(database: string, agent: AgentLogin): string[] {
    const { host, port } = this.server;
    return [`--host=${host}`, `--port=${port}`, `--username=${agent.user}`, `--dbname=${database}`, '--no-password'];
  }

  private env(agent: AgentLogin): NodeJS.ProcessEnv {
    return { PATH: process.env.PATH, PGPASSWORD: agent.password, PGAPPNAME: 'pg-provisioner-backup', PGCONNECT_TIMEOUT: '10' };
  }

  /** Dumps the app's database as its agent into `file` (which exists, empty, readable by the service's user only). */
  async dump(app: AppIdentifiers, agent: AgentLogin, file: string): Promise<void> {
    await this.runProgram('pg_dump', app, agent, this.config.PG_DUMP_PATH, [
      ...this.connectionArgs(app.database, agent),
      '--format=custom',
      `--lock-wait-timeout=${this.config.BACKUP_LOCK_WAIT_TIMEOUT_MS}`,
      `--file=${file}`,
    ]);
  }

  /**
   * Reads the dump at `path` whole, as a restore would, without a server: pg_restore writes every object and
   * every row of it as SQL to /dev/null, so a truncated or corrupt file (a bad block, a short write) fails here,
   * when it is made, not on the day it is needed. Its stderr can quote the dump's contents: never logged.
   */
  async verify(path: string, app: AppIdentifiers): Promise<void> {
    try {
      await run(this.config.PG_RESTORE_PATH, ['--file=/dev/null', path], { env: { PATH: process.env.PATH }, timeout: this.config.BACKUP_TIMEOUT_MS });
    } catch {
      throw new BackupFailedError('pg_restore (the check of the new dump)', app.appName);
    }
  }

  /**
   * The dump's table of contents (`pg_restore --list`, without a server): what a restore must prepare as the
   * superuser (src/db/postgres-server/dump-contents.ts). A dump it cannot read is not restorable.
   */
  async listing(path: string, file: string, app: AppIdentifiers): Promise<DumpListing> {
    try {
      const { stdout } = await run(this.config.PG_RESTORE_PATH, ['--list', path], {
        env: { PATH: process.env.PATH },
        timeout: this.config.BACKUP_TIMEOUT_MS,
        maxBuffer: 256 * 1024 * 1024, // a line per object: an app with a million objects lists in ~100 MB
      });
      return parseDumpListing(stdout);
    } catch {
      throw new BackupNotRestorableError(file, app.appName);
    }
  }

  /**
   * Restores the dump at `path` (the backup named `file`) into `database` as the app's agent: every object is
   * created as (and so owned by) the app's login role, and anything the dump's own code does runs with the app's
   * rights at most. `useList`, when given, is the listing pg_restore follows instead of the whole dump (entries
   * the service made as the superuser beforehand commented out), written to a private file for the run.
   */
  async restore(path: string, file: string, database: string, app: AppIdentifiers, agent: AgentLogin, useList?: string): Promise<void> {
    const listDir = useList === undefined ? undefined : await mkdtemp(join(tmpdir(), 'pgprov-restore-list-'));
    try {
      const listArgs: string[] = [];
      if (listDir !== undefined && useList !== undefined) {
        const listFile = join(listDir, 'contents.list');
        await writeFile(listFile, useList, { mode: 0o600 });
        listArgs.push(`--use-list=${listFile}`);
      }
      await this.runProgram('pg_restore', app, agent, this.config.PG_RESTORE_PATH, [
        ...this.connectionArgs(database, agent),
        `--role=${app.username}`,
        '--no-owner',
        '--exit-on-error',
        '--single-transaction',
        ...listArgs,
        path,
      ]);
    } catch (err) {
      if (err instanceof BackupFailedError) throw new BackupNotRestorableError(file, app.appName);
      throw err;
    } finally {
      if (listDir !== undefined) await rm(listDir, { recursive: true, force: true });
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
