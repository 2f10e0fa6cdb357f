// Owns the whole cluster's backups with pgBackRest (pgbackrest.conf at the repo's top): making the stanza, full,
// differential and incremental backups (pgBackRest expires what repo1-retention-full no longer keeps after each),
// what the repository holds (info), and how WAL archiving fares (pg_stat_archiver).
//
// pgBackRest must run on the Postgres host, as the Postgres OS user, beside the data directory and the repository:
// in compose that is the postgres container, not the service's. So the service runs it through Postgres itself,
// as the superuser it already is: COPY … FROM PROGRAM, on a connection of its own, exactly as archive_command runs
// `pgbackrest archive-push` (the postmaster's environment names pgbackrest.conf and the password file). The command
// is built here from fixed words and the validated PGBACKREST_STANZA only, never from a request (SECURITY.md,
// "Cluster backups: COPY … FROM PROGRAM"). Its stdout (JSON for info) comes back as the rows of a temporary table;
// its stderr lands in Postgres's log. A failure becomes ClusterBackupFailedError with pgBackRest's exit code only.
import type pg from 'pg';
import type { OwnConnection, Queryable } from '../queryable.js';
import { ClusterBackupBusyError, ClusterBackupFailedError, DatabaseUnavailableError, isDatabaseUnavailable } from '../../shared/errors.js';
import { SQLSTATE, sqlState } from '../../shared/sqlstate.js';

export type ClusterBackupType = 'full' | 'diff' | 'incr';

const BACKUP_TYPES: readonly ClusterBackupType[] = ['full', 'diff', 'incr'];

/** One backup in the repository, as `pgbackrest info` tells it. */
export interface ClusterBackupSet {
  /** pgBackRest's label, e.g. 20261207-230928F or 20261207-230928F_20261207-231000I. */
  label: string;
  type: ClusterBackupType;
  startedAt: Date;
  stoppedAt: Date;
  /** The cluster's size, and what this backup copied (all of it for a full one). */
  sizeBytes: number;
  deltaBytes: number;
  /** What it takes in the repository (compressed), in all and what this backup added. */
  repositorySizeBytes: number;
  repositoryDeltaBytes: number;
  /** The backup this one depends on (differential, incremental), or null. */
  prior: string | null;
  /** The first and last WAL segment a restore of it needs. */
  walStart: string;
  walStop: string;
}

/** What the repository holds for the stanza. */
export interface ClusterBackupInfo {
  stanza: string;
  /** pgBackRest's status: 0 ok, 1 missing stanza path, 2 no valid backups, 3 missing stanza data, …; and its words. */
  status: { code: number; message: string };
  /** Oldest first. */
  backups: ClusterBackupSet[];
  /** The oldest and newest WAL segment archived (null when none is). */
  archive: { min: string | null; max: string | null };
}

/** How WAL archiving fares (pg_stat_archiver), and where the server is writing now. */
export interface ArchiverStatus {
  archivedCount: number;
  lastArchivedWal: string | null;
  lastArchivedTime: Date | null;
  failedCount: number;
  lastFailedWal: string | null;
  lastFailedTime: Date | null;
  /** pg_current_wal_lsn(), and the segment it is in (archived once it is finished and switched). */
  currentWalLsn: string;
  currentWalFile: string;
}

export interface ClusterBackupOptions {
  /** pgBackRest's stanza (PGBACKREST_STANZA, validated by the config). */
  stanza: string;
  /** The longest one command may take (CLUSTER_BACKUP_TIMEOUT_MS). */
  timeoutMs: number;
  /** A superuser connection of its own to the server (ended after each command). */
  connect: () => Promise<OwnConnection>;
  /** For single short reads (pg_stat_archiver). */
  pool: Queryable;
}

/** What a command may be made of: the words below and the stanza (SECURITY.md: nothing from a request). */
const SAFE_COMMAND = /^[A-Za-z0-9 =_.-]+$/;

/** After the program's own bound (`timeout`), Postgres's, then the client's: each a little later than the one before. */
const KILL_AFTER_SECONDS = 30;
const SERVER_MARGIN_MS = 60_000;
const CLIENT_MARGIN_MS = 120_000;

export class ClusterBackup {
  readonly stanza: string;
  private readonly options: ClusterBackupOptions;
  private stanzaMade?: Promise<void>;

  constructor(options: ClusterBackupOptions) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(options.stanza)) throw new Error(`not a pgBackRest stanza name: ${JSON.stringify(options.stanza)}`);
    this.options = options;
    this.stanza = options.stanza;
  }

  /**
   * Makes the stanza in the repository (pgBackRest's stanza-create; nothing to do when it exists and matches this
   * cluster), without which WAL is not archived. Resolves once it exists; shared by callers while it runs; after a
   * failure the next call tries again.
   */
  ensureStanza(): Promise<void> {
    this.stanzaMade ??= this.run('stanza-create').then(
      () => undefined,
      (err: unknown) => {
        this.stanzaMade = undefined;
        throw err;
      },
    );
    return this.stanzaMade;
  }

  /** pgBackRest's check: the configuration is right and a WAL switch reaches the repository (waits for it). */
  async check(): Promise<void> {
    await this.run('check');
  }

  /**
   * A backup of the whole cluster, run to its end (an immediate checkpoint first, start-fast); then pgBackRest
   * expires what repo1-retention-full no longer keeps. A `diff` or `incr` with no full backup before it is made
   * full by pgBackRest. Resolves with the new backup.
   */
  async backup(type: ClusterBackupType): Promise<ClusterBackupSet> {
    if (!BACKUP_TYPES.includes(type)) throw new Error(`not a backup type: ${String(type)}`);
    await this.ensureStanza();
    await this.run(`backup --type=${type}`);
    const newest = (await this.info()).backups.at(-1);
    if (!newest) throw new ClusterBackupFailedError('backup', undefined);
    return newest;
  }

  /** What the repository holds (pgbackrest info --output=json). */
  async info(): Promise<ClusterBackupInfo> {
    const output = await this.run('--output=json info');
    return parseInfo(output, this.stanza);
  }

  /** WAL archiving's counters (pg_stat_archiver), and the current WAL position. */
  async archiverStatus(): Promise<ArchiverStatus> {
    const { rows } = await this.options.pool.query<{
      archived_count: string;
      last_archived_wal: string | null;
      last_archived_time: Date | null;
      failed_count: string;
      last_failed_wal: string | null;
      last_failed_time: Date | null;
      current_wal_lsn: string;
      current_wal_file: string;
    }>(
      `SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time,
              pg_current_wal_lsn()::text AS current_wal_lsn, pg_walfile_name(pg_current_wal_lsn()) AS current_wal_file
         FROM pg_stat_archiver`,
    );
    const row = rows[0]!;
    return {
      archivedCount: Number(row.archived_count),
      lastArchivedWal: row.last_archived_wal,
      lastArchivedTime: row.last_archived_time,
      failedCount: Number(row.failed_count),
      lastFailedWal: row.last_failed_wal,
      lastFailedTime: row.last_failed_time,
      currentWalLsn: row.current_wal_lsn,
      currentWalFile: row.current_wal_file,
    };
  }

  /**
   * Runs `pgbackrest --stanza=<stanza> <args>` on the Postgres host through COPY … FROM PROGRAM, bounded by
   * `timeout` (CLUSTER_BACKUP_TIMEOUT_MS; then SIGTERM, which pgBackRest answers by stopping cleanly), on a
   * connection of its own; resolves with its stdout, line by line.
   */
  private async run(args: string): Promise<string> {
    const { timeoutMs, connect } = this.options;
    const seconds = Math.max(1, Math.ceil(timeoutMs / 1000));
    const command = `timeout --kill-after=${KILL_AFTER_SECONDS} ${seconds} pgbackrest --stanza=${this.stanza} ${args}`;
    if (!SAFE_COMMAND.test(command)) throw new Error('refusing to run a pgBackRest command with characters beyond the safe set');
    const name = args.replace(/^--output=json /, '');
    let client: OwnConnection;
    try {
      client = await connect();
    } catch (err) {
      if (isDatabaseUnavailable(err)) throw new DatabaseUnavailableError();
      throw err;
    }
    // pg's query_timeout (the client's bound) is supported per query but missing from @types/pg's QueryConfig.
    const query = (text: string) => client.query<{ line: string }>({ text, query_timeout: timeoutMs + CLIENT_MARGIN_MS } as pg.QueryConfig);
    try {
      await query(`SET statement_timeout = ${timeoutMs + SERVER_MARGIN_MS}`);
      await query('CREATE TEMPORARY TABLE pgbackrest_output (n bigint GENERATED ALWAYS AS IDENTITY, line text)');
      // csv with a delimiter and a quote that never occur: every line is one value, backslashes (JSON) kept.
      await query(`COPY pgbackrest_output (line) FROM PROGRAM '${command}' WITH (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')`);
      const { rows } = await query("SELECT coalesce(line, '') AS line FROM pgbackrest_output ORDER BY n");
      return rows.map((row) => row.line).join('\n');
    } catch (err) {
      throw this.failure(name, err, seconds);
    } finally {
      await client.end().catch(() => {});
    }
  }

  /** Postgres's "program … failed" (exit code in its DETAIL) in the service's words; never the program's output. */
  private failure(command: string, err: unknown, timeoutSeconds: number): Error {
    if (sqlState(err) === SQLSTATE.externalRoutineException) {
      const detail = String((err as { detail?: unknown }).detail ?? '');
      const exit = /exited with exit code (\d+)/.exec(detail);
      const exitCode = exit ? Number(exit[1]) : undefined;
      if (exitCode === 50) return new ClusterBackupBusyError(command);
      // 124: `timeout` stopped it; 137: it had to be killed as well.
      if (exitCode === 124 || exitCode === 137) return new ClusterBackupFailedError(command, exitCode, timeoutSeconds);
      return new ClusterBackupFailedError(command, exitCode);
    }
    if (sqlState(err) === SQLSTATE.queryCanceled) return new ClusterBackupFailedError(command, undefined, timeoutSeconds);
    if (isDatabaseUnavailable(err)) return new DatabaseUnavailableError();
    return err instanceof Error ? err : new Error(String(err));
  }
}

interface InfoJson {
  name?: unknown;
  status?: { code?: unknown; message?: unknown };
  archive?: Array<{ min?: unknown; max?: unknown }>;
  backup?: Array<{
    label?: unknown;
    type?: unknown;
    prior?: unknown;
    timestamp?: { start?: unknown; stop?: unknown };
    info?: { size?: unknown; delta?: unknown; repository?: { size?: unknown; delta?: unknown } };
    archive?: { start?: unknown; stop?: unknown };
  }>;
}

const text = (value: unknown): string => (typeof value === 'string' ? value : '');
const count = (value: unknown): number => (typeof value === 'number' ? value : 0);
const epoch = (value: unknown): Date => new Date(count(value) * 1000);

/** `pgbackrest --output=json info`'s answer for one stanza, in our shape. */
export function parseInfo(output: string, stanza: string): ClusterBackupInfo {
  let parsed: unknown;
  try {
    parsed = JSON.parse(output);
  } catch {
    throw new ClusterBackupFailedError('info', undefined);
  }
  const entry = (Array.isArray(parsed) ? (parsed as InfoJson[]) : []).find((one) => one?.name === stanza);
  if (!entry) throw new ClusterBackupFailedError('info', undefined);
  const archives = entry.archive ?? [];
  return {
    stanza,
    status: { code: count(entry.status?.code), message: text(entry.status?.message) },
    backups: (entry.backup ?? []).map((backup) => ({
      label: text(backup.label),
      type: (BACKUP_TYPES as readonly string[]).includes(text(backup.type)) ? (text(backup.type) as ClusterBackupType) : 'full',
      startedAt: epoch(backup.timestamp?.start),
      stoppedAt: epoch(backup.timestamp?.stop),
      sizeBytes: count(backup.info?.size),
      deltaBytes: count(backup.info?.delta),
      repositorySizeBytes: count(backup.info?.repository?.size),
      repositoryDeltaBytes: count(backup.info?.repository?.delta),
      prior: typeof backup.prior === 'string' ? backup.prior : null,
      walStart: text(backup.archive?.start),
      walStop: text(backup.archive?.stop),
    })),
    archive: {
      min: archives.map((a) => text(a.min)).filter(Boolean).sort()[0] ?? null,
      max: archives.map((a) => text(a.max)).filter(Boolean).sort().at(-1) ?? null,
    },
  };
}
