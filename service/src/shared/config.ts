// Owns the service's settings: one zod schema for the environment, parsed once at start.
// Handlers never read process.env; they get the parsed Config.
import { z } from 'zod';
import { DEFAULT_ALLOWED_EXTENSIONS, parseAllowedExtensions } from './extension-policy.js';
import { parseSchedule, ScheduleError } from './schedule.js';
import { DURATION_PATTERN, sizeBytes } from './setting-values.js';

const port = z.coerce.number().int().min(1).max(65535);
const durationMs = z.coerce.number().int().min(1);
/** A schedule's written form (src/shared/schedule.ts), checked at start. */
const schedule = (fallback: string) =>
  z
    .string()
    .default(fallback)
    .superRefine((text, ctx) => {
      try {
        parseSchedule(text);
      } catch (err) {
        if (!(err instanceof ScheduleError)) throw err;
        ctx.addIssue({ code: 'custom', message: err.message });
      }
    });

export const ConfigSchema = z.object({
  HOST: z.string().min(1).default('0.0.0.0'),
  PORT: port.default(8080),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Pretty, human-readable logs; defaults to "only when stdout is a terminal". */
  LOG_PRETTY: z.stringbool().optional(),

  /** Where the service reaches Postgres as the superuser: a Unix socket directory (default) or a host name. */
  DATABASE_HOST: z.string().min(1).default('/var/run/postgresql'),
  DATABASE_PORT: port.default(5432),
  POSTGRES_USER: z.string().min(1).default('postgres'),
  POSTGRES_PASSWORD: z
    .string({ error: 'required: set it in .env or the environment' })
    .min(1, 'required: set it in .env or the environment'),
  /** The system's own database, created by init/02-create-databases.sql. */
  SYSTEM_DATABASE: z.string().min(1).default('provisioner'),
  DATABASE_POOL_SIZE: z.coerce.number().int().min(2).max(20).default(5),
  /**
   * Bounds on every database call, so no request waits longer than about their sum (10 s) even when Postgres
   * is frozen: a pool connection within CONNECT, an answer within STATEMENT (after which the service stops
   * waiting and discards the connection; Postgres finishes the statement, and the reconciler what it left).
   */
  DATABASE_CONNECT_TIMEOUT_MS: durationMs.default(3_000),
  DATABASE_STATEMENT_TIMEOUT_MS: durationMs.default(7_000),
  /** How long an operation waits for another one on the same app (or any Postgres lock) before giving up. */
  DATABASE_LOCK_TIMEOUT_MS: durationMs.default(10_000),
  HEALTH_TIMEOUT_MS: durationMs.default(1_500),
  /** How long one health ping's answer is shared by every /health request. */
  HEALTH_REUSE_MS: z.coerce.number().int().min(0).max(1_000).default(250),
  /**
   * While a new health ping is under way, /health answers from the last success if it is no older than this
   * (a ping is slow while the ready pool's CREATE DATABASE runs). Failures are never served stale.
   */
  HEALTH_STALE_MS: z.coerce.number().int().min(0).max(2_000).default(1_000),

  /** Backups: where dumps are written (compose mounts ./backups here), and the client programs (PostgreSQL 15). */
  BACKUP_DIR: z.string().min(1).default('/backups'),
  PG_DUMP_PATH: z.string().min(1).default('pg_dump'),
  PG_RESTORE_PATH: z.string().min(1).default('pg_restore'),
  BACKUP_TIMEOUT_MS: durationMs.default(15 * 60_000),
  /**
   * How long a dump may wait for a lock one of the app's own sessions holds before it gives up (409): a tenant
   * can hold a lock for as long as it likes, and must not hold a backup, or a connection of ours, with it.
   */
  BACKUP_LOCK_WAIT_TIMEOUT_MS: durationMs.default(10_000),
  /** Backups and restores running at once, at most (each holds a connection of its own); more get a 503. */
  BACKUP_MAX_CONCURRENT: z.coerce.number().int().min(1).max(20).default(2),
  // --- Scheduled backups, retention, cluster archiving, off-site copies (src/domain/backups/schedules.ts) --------
  /**
   * When each app is dumped by itself (src/shared/schedule.ts): `off`, `every <N>m|h` (e.g. every 6h), `daily HH:MM`
   * or `weekly <mon…sun> HH:MM`, in UTC. Each app's turn falls at a point of its own within BACKUP_SPREAD_MINUTES
   * after the scheduled time (a hash of its name), so thousands of apps never start at once.
   */
  BACKUP_SCHEDULE: schedule('daily 03:00'),
  BACKUP_SPREAD_MINUTES: z.coerce.number().int().min(0).max(10_080).default(120),
  /** Scheduled dumps running at once (each takes one connection of its own and one pg_dump). */
  BACKUP_SCHEDULED_CONCURRENCY: z.coerce.number().int().min(1).max(8).default(1),
  /** A failed scheduled dump is tried again after this long, doubling each time up to an hour. */
  BACKUP_RETRY_DELAY_MS: durationMs.default(5 * 60_000),
  /** How often the schedules look for work that is due. */
  BACKUP_SCHEDULER_TICK_MS: durationMs.default(30_000),
  /**
   * Retention of each live app's dumps: keep the newest BACKUP_KEEP_LAST and every dump younger than
   * BACKUP_KEEP_DAYS; remove the rest. 0 turns a rule off; both 0: nothing is removed. The newest dump is never removed.
   */
  BACKUP_KEEP_LAST: z.coerce.number().int().min(0).max(10_000).default(7),
  BACKUP_KEEP_DAYS: z.coerce.number().int().min(0).max(36_500).default(0),
  /** A deleted app's dumps are kept this many days after its last dump, then removed (0: kept for ever). */
  DELETED_APP_BACKUP_GRACE_DAYS: z.coerce.number().int().min(0).max(36_500).default(30),

  /**
   * pgBackRest's stanza for the whole cluster (pgbackrest.conf; WAL archived by postgres.conf's archive_command).
   * Empty: no cluster backups. The service runs pgBackRest on the Postgres host through Postgres itself (COPY …
   * PROGRAM, as the Postgres OS user, as archive_command does): src/db/postgres-server/cluster-backup.ts.
   */
  PGBACKREST_STANZA: z
    .string()
    // Put into the command the service runs on the Postgres host (COPY … FROM PROGRAM): a plain name only.
    .regex(/^(|off|[A-Za-z0-9][A-Za-z0-9_-]{0,63})$/, 'must be a pgBackRest stanza name (letters, digits, _ and -), or empty or off')
    .default('pgprov')
    .transform((stanza) => (stanza === '' || stanza === 'off' ? undefined : stanza)),
  /** When the cluster is backed up (same forms as BACKUP_SCHEDULE): incremental, or full when the last full is older than CLUSTER_FULL_BACKUP_EVERY_DAYS. */
  CLUSTER_BACKUP_SCHEDULE: schedule('daily 01:00'),
  CLUSTER_FULL_BACKUP_EVERY_DAYS: z.coerce.number().int().min(1).max(365).default(7),
  /** The longest one pgBackRest command may take. */
  CLUSTER_BACKUP_TIMEOUT_MS: durationMs.default(6 * 3_600_000),
  /** pgBackRest's repository as the service can read it, to copy it off the machine (compose mounts it read-only). Empty: not copied. */
  PGBACKREST_REPO_PATH: z
    .string()
    .optional()
    .transform((path) => (path === '' ? undefined : path)),

  /**
   * Off the machine: an rclone remote and path (e.g. offsite:pg-provisioner) that every dump and pgBackRest's
   * repository are copied to; the remote is defined in RCLONE_CONFIG (rclone's own file). Empty: backups stay on
   * the same disk as the data, and /health and the README say so.
   */
  OFFSITE_REMOTE: z
    .string()
    .optional()
    .transform((remote) => (remote === '' ? undefined : remote))
    // A remote defined in RCLONE_CONFIG, by name: never a connection string (`:sftp,pass=…:` or `name,key=…:`),
    // whose parameters would be credentials in rclone's argv and in what /health shows.
    .refine((remote) => remote === undefined || /^[A-Za-z0-9_][A-Za-z0-9_.@+ -]*:/.test(remote), {
      message: 'use <remote name>:<path>, the remote defined in RCLONE_CONFIG (e.g. offsite:pg-provisioner), not a connection string with parameters',
    }),
  RCLONE_PATH: z.string().min(1).default('rclone'),
  RCLONE_CONFIG: z
    .string()
    .optional()
    .transform((path) => (path === '' ? undefined : path)),
  /** When the copy off the machine runs (same forms as BACKUP_SCHEDULE); also after every cluster backup. */
  OFFSITE_SCHEDULE: schedule('every 1h'),
  OFFSITE_TIMEOUT_MS: durationMs.default(3 * 3_600_000),
  // --- end scheduled backups ------------------------------------------------------------------------------------

  /**
   * Rotations running at once, at most: each waits out the server's authentication_timeout on a connection of
   * its own (SECURITY.md, promise 9). More wait for a free slot up to DATABASE_LOCK_TIMEOUT_MS, then get a 503.
   */
  ROTATION_MAX_CONCURRENT: z.coerce.number().int().min(1).max(20).default(8),

  /**
   * The ready pool: sets of app objects prepared in the background so provisioning is one short transaction.
   * Each set costs about 7.5 MB of disk (a copy of template1). 0 turns the pool off.
   */
  READY_POOL_SIZE: z.coerce.number().int().min(0).max(1000).default(5),
  READY_POOL_REFILL_PER_SECOND: z.coerce.number().min(0.01).max(100).default(2),
  /** Refilling starts only after this long without a handover (at once when the pool is empty). */
  READY_POOL_REFILL_QUIET_MS: z.coerce.number().int().min(0).max(600_000).default(1_000),

  /** The reconciler repairs half-made and half-removed apps at start and then every this often. */
  RECONCILE_INTERVAL_MS: durationMs.default(60_000),

  /**
   * Tests only: the name of a crash point (e.g. provision:after-create-database) at which the process kills
   * itself with SIGKILL, to prove that reconciliation repairs whatever a crash leaves. Never set in production.
   */
  CRASH_AT: z.string().optional(),

  /**
   * The apps' door: the host and port written into the connection strings handed to apps (connection_string).
   * With the pooler (POOLER_AUTH_FILE), PgBouncer's; without it, Postgres's own.
   */
  PUBLIC_DB_HOST: z.string().min(1).default('pgbouncer'),
  PUBLIC_DB_PORT: port.default(6432),
  /**
   * The sslmode every connection string carries. require (default): the door serves TLS (pgbouncer-hba.conf
   * requires it), and libpq, psycopg, pgx and JDBC encrypt without checking the certificate; node-postgres reads
   * require as verify-full and wants the CA (GET /tls/ca.crt). verify-full: when the certificate is one clients
   * already trust. disable: only where the door serves no TLS.
   */
  PUBLIC_DB_SSLMODE: z.enum(['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']).default('require'),
  /**
   * The direct door, an opt-in: Postgres's own port as apps reach it (docker-compose.direct-postgres.yml), for
   * clients that need session features through a pooler in transaction mode cannot give (LISTEN, session
   * advisory locks, migrations that SET things). Set: answers carry direct_connection_string too. Empty: off.
   */
  DIRECT_DB_HOST: z
    .string()
    .optional()
    .transform((host) => (host === '' ? undefined : host)),
  DIRECT_DB_PORT: port.default(5432),

  // --- The pooler (src/db/pooler/pgbouncer.ts, pgbouncer.ini) -----------------------------------------------
  /**
   * PgBouncer's auth_file, which the service keeps (a volume both share in compose). Empty: no pooler; apps
   * reach Postgres directly at PUBLIC_DB_HOST.
   */
  POOLER_AUTH_FILE: z
    .string()
    .optional()
    .transform((path) => (path === '' ? undefined : path)),
  /**
   * The door's rules (the repo's pgbouncer-hba.conf, compose mounts it here), which the service renders with each
   * app's lines into POOLER_HBA_FILE (empty: pgbouncer-hba.conf beside POOLER_AUTH_FILE), pgbouncer.ini's auth_hba_file.
   */
  POOLER_HBA_TEMPLATE: z.string().min(1).default('/etc/pgprov/pgbouncer-hba.conf'),
  POOLER_HBA_FILE: z
    .string()
    .optional()
    .transform((path) => (path === '' ? undefined : path)),
  /** The file pgbouncer.ini's [databases] includes, which the service writes (empty: databases.ini beside POOLER_AUTH_FILE). */
  POOLER_DATABASES_FILE: z
    .string()
    .optional()
    .transform((path) => (path === '' ? undefined : path)),
  /** Postgres as PgBouncer reaches it (the host and port of every [databases] entry). */
  POOLER_SERVER_HOST: z.string().min(1).default('postgres'),
  POOLER_SERVER_PORT: port.default(5432),
  /** PgBouncer's admin console: its socket directory (unix_socket_dir) and port. */
  POOLER_ADMIN_HOST: z.string().min(1).default('/var/run/pgbouncer'),
  POOLER_ADMIN_PORT: port.default(6432),
  /** pgbouncer.ini's pool_mode, which every answer states (pooling); a stack test checks the two agree. */
  POOLER_POOL_MODE: z.enum(['session', 'transaction', 'statement']).default('transaction'),
  POOLER_TIMEOUT_MS: durationMs.default(2_000),

  /** The CA certificate that signed the doors' TLS certificate (init/setup/make-tls.sh), served at GET /tls/ca.crt. */
  TLS_CA_FILE: z
    .string()
    .optional()
    .transform((path) => (path === '' ? undefined : path)),

  /** Wrong admin keys one client address may present per window before it is locked out (429). */
  AUTH_MAX_FAILED_ATTEMPTS: z.coerce.number().int().min(1).default(10),
  AUTH_FAILED_ATTEMPTS_WINDOW_MS: durationMs.default(60_000),

  // --- ADMIN_KEY_FILE (src/shared/secrets.ts, src/server.ts) ----------------------------------------------------
  /**
   * Opt-in pinned admin key: a file (a Docker secret) holding sha256:<the key's SHA-256 in hex>, or the key
   * itself (sk_…); read once at start, which refuses a file it cannot use. Unset or empty: a new random key at
   * every start, printed once in the log (the default).
   */
  ADMIN_KEY_FILE: z
    .string()
    .optional()
    .transform((path) => (path === '' ? undefined : path)),
  // --- end ADMIN_KEY_FILE ---------------------------------------------------------------------------------------

  // --- TRUSTED_PROXY (src/http/trusted-proxy.ts) ----------------------------------------------------------------
  /**
   * Whose X-Forwarded-For is believed, so that lockouts, logs and the audit log see the real client: a
   * comma-separated list of IP addresses or host names (resolved with DNS at start, every 10 s, and when an
   * unknown peer sends X-Forwarded-For). Only the immediate peer counts. Default: 127.0.0.1, where nginx connects
   * from in the local stack; compose sets `nginx`. Empty: nobody's (every client is its TCP peer address).
   */
  TRUSTED_PROXY: z
    .string()
    .default('127.0.0.1')
    .transform((list) => list.split(',').map((entry) => entry.trim()).filter((entry) => entry !== ''))
    .superRefine((entries, ctx) => {
      const proxyAddress = z.union([z.ipv4(), z.ipv6(), z.hostname()]);
      for (const entry of entries.filter((e) => !proxyAddress.safeParse(e).success)) {
        ctx.addIssue({ code: 'custom', message: `${JSON.stringify(entry)} is neither an IP address nor a host name` });
      }
    }),
  // --- end TRUSTED_PROXY ----------------------------------------------------------------------------------------

  /** Companion databases one app may have at most (POST /apps/:name/databases); 0: none. */
  APP_MAX_COMPANION_DATABASES: z.coerce.number().int().min(0).max(100).default(5),

  /** Limits set on every app's login role (see SECURITY.md). */
  APP_CONNECTION_LIMIT: z.coerce.number().int().min(1).max(1000).default(10),
  APP_TEMP_FILE_LIMIT: z.string().regex(/^\d+(kB|MB|GB)$/, 'use a size such as 1GB or 512MB').default('1GB'),
  APP_STATEMENT_TIMEOUT: z.string().regex(/^\d+(ms|s|min|h)?$/, 'use a duration such as 5min').default('0'),
  APP_IDLE_IN_TRANSACTION_TIMEOUT: z.string().regex(/^\d+(ms|s|min|h)?$/, 'use a duration such as 10min').default('10min'),
  /**
   * idle_session_timeout of every app login role: a session idle (outside a transaction) this long is ended. 0
   * (default): never. It ends PgBouncer's idle server connections to the app too.
   */
  APP_IDLE_SESSION_TIMEOUT: z.string().regex(DURATION_PATTERN, 'use a duration such as 30min, or 0 (off)').default('0'),

  // --- APP_EXTENSIONS_ALLOWED (src/shared/extension-policy.ts) -----------------------------------------------------
  /**
   * Extensions the service installs as the superuser into an app's database on request (POST
   * /apps/:name/extensions): comma-separated names; empty: none. Only extensions Postgres lets a superuser alone
   * create; trusted ones an app creates itself. Names the service refuses (dblink, postgres_fdw, file_fdw, …) stop
   * the start, each with its reason.
   */
  APP_EXTENSIONS_ALLOWED: z
    .string()
    .default(DEFAULT_ALLOWED_EXTENSIONS.join(','))
    .transform((text, ctx) => {
      const { names, problems } = parseAllowedExtensions(text);
      for (const message of problems) ctx.addIssue({ code: 'custom', message });
      return names;
    }),
  // --- end APP_EXTENSIONS_ALLOWED ------------------------------------------------------------------------------------
  /** How many extra credentials (POST /apps/:name/credentials) one app may have at once. */
  APP_MAX_CREDENTIALS: z.coerce.number().int().min(0).max(100).default(5),

  // --- Storage quota per app (src/domain/storage-quota.ts) -------------------------------------------------------
  /**
   * How much disk one app may use: its database and its companion databases together (Postgres has no quota of
   * its own; the service measures and enforces, README "Storage quota"). A size in Postgres's units (1024-based:
   * 500MB, 1GB, 2TB), or `off`: no limit for apps without one of their own (PATCH /apps/:name/settings
   * storage_limit, which still holds). Kept as written (GET /apps/:name/settings shows it); storageLimitBytes reads
   * it. Default 1GB: the design point is a VM of 1 GB of RAM, where Postgres's cache is 768 MB
   * (effective_cache_size) and the disk is typically 20 to 50 GB shared by hundreds of apps (an empty app takes
   * 7.5 MB, 2,000 of them 16 GB: BENCHMARKS.md). An app that outgrows the cache is one to size by hand, and at 1 GB
   * one runaway app can take 1.2 GB (the hard limit below) plus what it writes between two checks, not the disk.
   */
  APP_STORAGE_LIMIT: z
    .string()
    .refine((text) => text === 'off' || (sizeBytes(text) ?? 0) > 0, 'use a size such as 500MB or 1GB, or off')
    .default('1GB'),
  /** GET /apps/:name and /metrics say "warning" once an app uses this share of its limit. */
  APP_STORAGE_WARN_PERCENT: z.coerce.number().int().min(1).max(100).default(80),
  /**
   * Over its limit an app is made read-only (default_transaction_read_only, which a session can lift for itself);
   * over this share of its limit its logins are suspended too (CONNECTION LIMIT 0, which it cannot lift), until it
   * is under its limit again or the limit is raised.
   */
  APP_STORAGE_HARD_LIMIT_PERCENT: z.coerce.number().int().min(100).max(1000).default(120),
  /**
   * How often the apps' sizes are checked against their limits. Each check measures only the databases that were
   * written or used since the last one (pg_stat_database, pg_stat_activity), and every database at least every
   * RECONCILE_INTERVAL_MS; so it stays cheap at 2,000 mostly idle apps. What an app can write between two checks
   * is the disk reserve to keep (README, "Storage quota": 5 s at the fastest rate measured here, 190 MB/s, is ~1 GB).
   */
  STORAGE_CHECK_INTERVAL_MS: durationMs.default(5_000),
  // --- end storage quota ----------------------------------------------------------------------------------------
});

/** APP_STORAGE_LIMIT in bytes; undefined for off (no default limit). */
export function storageLimitBytes(config: Pick<Config, 'APP_STORAGE_LIMIT'>): number | undefined {
  return config.APP_STORAGE_LIMIT === 'off' ? undefined : sizeBytes(config.APP_STORAGE_LIMIT);
}

export type Config = z.infer<typeof ConfigSchema>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Parses the environment; throws a ConfigError whose message names every bad setting. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const result = ConfigSchema.safeParse(env);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const name = issue.path.join('.');
    const value = env[name];
    const hint = value === undefined ? 'is missing' : 'is invalid';
    return `  ${name} ${hint}: ${issue.message}`;
  });
  throw new ConfigError(`Invalid configuration:\n${problems.join('\n')}`);
}
