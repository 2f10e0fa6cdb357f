// Owns the provisioner: the service without its HTTP face: builds, from the config, the system store and the
// Postgres server apps live on (src/db/; today one server, which also holds the system store), the app
// operations and the background work that starts and stops with the service (once the system's own schema is
// current, src/db/system-store/migrations.ts): the reconciler (once at start, then
// every RECONCILE_INTERVAL_MS, never two runs at once), the storage quota's checks (every
// STORAGE_CHECK_INTERVAL_MS, which also measure the apps' sizes GET /apps lists), the ready pool's
// refilling, the credential stock, and making pgBackRest's stanza (in the background, until it exists: without it
// no WAL is archived). The http layer holds one (src/http/plugins/provisioner.ts) and reaches
// Postgres only through it.
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { AppRoleLimits } from '../db/postgres-server/app-objects.js';
import { appLoginVerifiers } from '../db/postgres-server/app-objects.js';
import { credentialLoginVerifiers } from '../db/postgres-server/credential-objects.js';
import type { ClusterBackup } from '../db/postgres-server/cluster-backup.js';
import { PostgresServer } from '../db/postgres-server/postgres-server.js';
import { PgBouncer, poolerAdminPassword, type Pooler, type PoolUsage } from '../db/pooler/pgbouncer.js';

export type { PoolUsage } from '../db/pooler/pgbouncer.js';
import { SuperuserConnections, type ServerAddress } from '../db/superuser-connections.js';
import { countReadyApps, readyApps } from '../db/system-store/registry.js';
import { SystemStore } from '../db/system-store/system-store.js';
import type { Config } from '../shared/config.js';
import { SchemaNewerThanCodeError } from '../shared/errors.js';
import { POOLER_ADMIN_USER } from '../shared/object-names.js';
import { AppOperations } from './app-operations.js';
import { defaultRoleLimits } from './app-settings.js';
import { AuditTrail } from './audit-trail.js';
import { BackupFiles, incarnationKey } from './backups/backup-files.js';
import { BackupSchedules, type BackupScheduleStatus } from './backups/schedules.js';
import { crashPoints } from './crash-points.js';
import { CredentialStock } from './credential-stock.js';
import { OperationEnvelope } from './operation-envelope.js';
import { AppListing } from './operations/read.js';
import { ReadyPool } from './ready-pool.js';
import { Reconciler } from './reconciler.js';
import { NO_OFFSITE_COPY, OffsiteCopy } from './backups/offsite-copy.js';
import { Slots } from './slots.js';
import { StorageQuota, type StorageQuotaStatus } from './storage-quota.js';

/** Whether Postgres answers (the system store and the server), for GET /health (see SuperuserConnections.checkHealth). */
export interface HealthCheck {
  check(): Promise<void>;
  /** Whether the apps' door answers: 'ok', 'unavailable', or 'none' (no pooler; apps reach Postgres directly). */
  pooler(): 'ok' | 'unavailable' | 'none';
  /** Where backups are kept: off the machine or not, and whether the last copy there succeeded. */
  backups(): BackupsHealth;
}

/**
 * GET /health's word on backups. offsite 'none': no remote is configured and every backup is on the same disk
 * as the data (`warning` says so); 'ok': the last copy off the machine succeeded; 'failing': it failed and is
 * being retried; 'pending': none has finished since the start.
 */
export interface BackupsHealth {
  offsite: 'none' | 'ok' | 'failing' | 'pending';
  warning?: string;
}

/** What /health says when no remote is configured (the README says it too). */
export const SAME_DISK_WARNING = NO_OFFSITE_COPY;

function backupsHealth(status: BackupScheduleStatus): BackupsHealth {
  if (!status.offsiteConfigured) return { offsite: 'none', warning: SAME_DISK_WARNING };
  if (status.offsiteCopyFailing) return { offsite: 'failing' };
  return { offsite: status.lastOffsiteCopy ? 'ok' : 'pending' };
}

/** What the service tells about itself (GET /metrics). Each read may fail while Postgres is away. */
export interface ProvisionerStatistics {
  /** The server's connection pool (today shared with the system store): all, idle, and the requests waiting for one. */
  connectionPool(): { total: number; idle: number; waiting: number };
  readyApps(): Promise<number>;
  readySets(): Promise<{ ready: number; preparing: number }>;
  /** The apps' door's pools, per app (empty without a pooler). */
  poolerPools(): Promise<PoolUsage[]>;
  poolerUp(): boolean | undefined;
  /** The scheduled backups' record: failures, the last cluster backup and off-site copy. */
  backupSchedules(): BackupScheduleStatus;
  /** Each ready app and when its newest backup (of its present incarnation) was made; null: none yet. */
  newestAppBackups(): Promise<Array<{ app: string; newestAt: Date | null }>>;
  /** WAL archiving (pg_stat_archiver); undefined without cluster backups. */
  walArchiving(): Promise<{ lastArchivedAt: Date | null; failures: number; lastFailedAt: Date | null } | undefined>;
  /** The storage quota's last check: apps near or over their limits, enforcements so far. */
  storage(): StorageQuotaStatus;
}

/** How long the start waits for the schema check and the server's setup before it starts regardless. */
const START_CHECK_WAIT_MS = 2_000;

/** The limits every app's login role gets unless the operator set its own (src/domain/app-settings.ts). */
export const appRoleLimits: (config: Config) => AppRoleLimits = defaultRoleLimits;

/**
 * Today's wiring of the two seams: one Postgres server (DATABASE_HOST, DATABASE_PORT, the superuser), which also
 * holds the system store (SYSTEM_DATABASE); both share one pool of superuser connections
 * (PostgresServerOptions.sharedConnections). Closing the store closes that pool.
 */
export function openStoreAndServer(config: Config, log: Logger): { store: SystemStore; server: PostgresServer } {
  const address: ServerAddress = { host: config.DATABASE_HOST, port: config.DATABASE_PORT, user: config.POSTGRES_USER, password: config.POSTGRES_PASSWORD };
  const connections = new SuperuserConnections(address, config.SYSTEM_DATABASE, config, log);
  const store = new SystemStore(connections, config);
  const pooler = poolerOf(config, log);
  const server = new PostgresServer({ id: 'default', address, publicHost: config.PUBLIC_DB_HOST, publicPort: config.PUBLIC_DB_PORT, sharedConnections: connections, pooler }, config, log);
  return { store, server };
}

/** The apps' door in front of the server, when POOLER_AUTH_FILE is set: PgBouncer, fed the server's app logins. */
function poolerOf(config: Config, log: Logger): ((server: PostgresServer) => Pooler) | undefined {
  const authFile = config.POOLER_AUTH_FILE;
  if (!authFile) return undefined;
  const settings = {
    authFile,
    hbaTemplate: config.POOLER_HBA_TEMPLATE,
    hbaFile: config.POOLER_HBA_FILE ?? join(dirname(authFile), 'pgbouncer-hba.conf'),
    databasesFile: config.POOLER_DATABASES_FILE ?? join(dirname(authFile), 'databases.ini'),
    serverHost: config.POOLER_SERVER_HOST,
    serverPort: config.POOLER_SERVER_PORT,
    adminHost: config.POOLER_ADMIN_HOST,
    adminPort: config.POOLER_ADMIN_PORT,
    adminUser: POOLER_ADMIN_USER,
    adminPassword: poolerAdminPassword(config.POSTGRES_PASSWORD),
    poolMode: config.POOLER_POOL_MODE,
    timeoutMs: config.POOLER_TIMEOUT_MS,
  };
  return (server) => {
    // The door's catalog reads run on a connection of their own: an operation holding a pool connection waits
    // for them, and must not wait for a second one from the same pool.
    const catalog = server.connections.dedicated();
    // The apps' own logins and their extra credentials' (src/db/postgres-server/credential-objects.ts).
    return new PgBouncer(settings, () => catalog.run(async (db) => [...(await appLoginVerifiers(db)), ...(await credentialLoginVerifiers(db))]), log);
  };
}

export class Provisioner {
  readonly operations: AppOperations;
  readonly audit: AuditTrail;
  readonly health: HealthCheck;
  readonly statistics: ProvisionerStatistics;
  private readonly config: Config;
  private readonly log: Logger;
  private readonly store: SystemStore;
  private readonly server: PostgresServer;
  private readonly credentials = new CredentialStock(16);
  private readonly readyPool: ReadyPool;
  private readonly listing: AppListing;
  private readonly reconciler: Reconciler;
  private readonly schedules: BackupSchedules;
  private readonly storage: StorageQuota;
  private timer?: NodeJS.Timeout;
  private reconciling?: Promise<void>;
  private readonly stopping = new AbortController();
  private stanzaMaking?: Promise<void>;

  constructor(config: Config, log: Logger) {
    this.config = config;
    this.log = log;
    const { store, server } = openStoreAndServer(config, log);
    this.store = store;
    this.server = server;
    const limits = appRoleLimits(config);
    const crashPoint = crashPoints(config, log);
    this.audit = new AuditTrail(store);
    const envelope = new OperationEnvelope(store, server, this.audit, log);
    const backupFiles = new BackupFiles(config);
    this.readyPool = new ReadyPool(store, server, config, log, limits, crashPoint);
    this.listing = new AppListing(store, server, envelope, backupFiles);
    const operationDeps = {
      store,
      server,
      envelope,
      readyPool: this.readyPool,
      credentials: this.credentials,
      listing: this.listing,
      backupFiles,
      backupSlots: new Slots(config.BACKUP_MAX_CONCURRENT, 'backups and restores'),
      rotationSlots: new Slots(config.ROTATION_MAX_CONCURRENT, 'rotations'),
      limits,
      config,
      log,
      crashPoint,
    };
    this.operations = new AppOperations(operationDeps);
    this.schedules = new BackupSchedules({ store, envelope, audit: this.audit, operations: operationDeps, backupFiles, cluster: server.clusterBackup, offsite: new OffsiteCopy(config, log), config, log });
    this.listing.failingBackups = () => this.schedules.status.failingApps;
    this.reconciler = new Reconciler({ store, server, audit: this.audit, readyPool: this.readyPool, config, log, crashPoint });
    this.storage = new StorageQuota({ store, server, audit: this.audit, config, log, crashPoint, onAppSizes: (sizes) => this.listing.takeSizes(sizes) });
    this.listing.storageOf = (appName) => this.storage.appStorage(appName);
    const healthOf = (connections: SuperuserConnections) => connections.checkHealth(config.HEALTH_TIMEOUT_MS, config.HEALTH_REUSE_MS);
    // One ping when the store lives on the server (the hot route pays for nothing more), else one each.
    const pooler = () => (server.pooler.enabled ? (server.pooler.isUp() ? 'ok' : 'unavailable') : 'none');
    const backups = () => backupsHealth(this.schedules.status);
    this.health = server.sharesConnectionsWith(store)
      ? { check: () => healthOf(server.connections), pooler, backups }
      : { check: async () => void (await Promise.all([healthOf(server.connections), healthOf(store.connections)])), pooler, backups };
    const { pool } = server.connections;
    this.statistics = {
      connectionPool: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
      readyApps: () => countReadyApps(store.pool),
      readySets: () => this.readyPool.counts(),
      poolerPools: () => server.pooler.pools(),
      poolerUp: () => ({ ok: true, unavailable: false, none: undefined })[pooler()],
      backupSchedules: () => this.schedules.status,
      walArchiving: async () => {
        const status = await server.clusterBackup?.archiverStatus();
        return status && { lastArchivedAt: status.lastArchivedTime, failures: status.failedCount, lastFailedAt: status.lastFailedTime };
      },
      newestAppBackups: async () => {
        const [apps, newest] = await Promise.all([readyApps(store.pool), this.schedules.newestBackups()]);
        return apps.map((app) => {
          const backup = newest.get(incarnationKey(app.app_name, app.incarnation));
          return { app: app.app_name, newestAt: backup ? new Date(backup.created_at) : null };
        });
      },
      storage: () => this.storage.status,
    };
  }

  /**
   * Checks the system's own schema (migrating it if need be) and sets the server up, then starts the background
   * work: a reconcile now and then on a timer, the credential stock, the ready pool's refilling. Rejects, starting
   * nothing, when the database is at a schema version newer than this code knows (SchemaNewerThanCodeError): the
   * service must not start against it. Postgres away or not answering is no reason not to start: the check waits
   * at most START_CHECK_WAIT_MS, and the work and every operation try again (each operation checks the schema
   * first, so a newer one found later fails every operation instead).
   */
  async start(): Promise<void> {
    const checked = Promise.all([
      this.store.ensureSchema().catch((err: unknown) => {
        if (err instanceof SchemaNewerThanCodeError) throw err; // any other failure: the first reconcile logs it
      }),
      this.server.ensureSetUp().catch(() => {}), // Postgres away: every operation tries again first
      // The apps' door's list of logins, before PgBouncer starts (the stack and compose start it after the
      // service); if Postgres or PgBouncer is away, it is tried again in the background until it holds. At a
      // start PgBouncer is not up yet by design (its RELOAD fails): not a warning; the retries warn once it has answered.
      this.server.pooler.loginsChanged().catch((err: unknown) => this.log.info({ err }, 'the pooler has not taken the app logins yet (it starts after the service); trying again')),
    ]);
    this.server.pooler.start();
    const bound = new AbortController();
    await Promise.race([checked, sleep(START_CHECK_WAIT_MS, undefined, { signal: bound.signal }).catch(() => {})]).finally(() => bound.abort());
    void this.reconcileOnce();
    void this.credentials.refill();
    this.readyPool.start();
    const clusterBackup = this.server.clusterBackup;
    if (clusterBackup) this.stanzaMaking = this.makeStanza(clusterBackup);
    this.schedules.start();
    this.storage.start();
    this.timer = setInterval(() => void this.reconcileOnce(), this.config.RECONCILE_INTERVAL_MS);
    this.timer.unref();
  }

  /**
   * The whole cluster's backups (pgBackRest), or undefined when PGBACKREST_STANZA is off: what the backup schedule
   * calls (backup, info, archiverStatus).
   */
  get clusterBackup(): ClusterBackup | undefined {
    return this.server.clusterBackup;
  }

  /**
   * Makes pgBackRest's stanza, trying again until it exists (Postgres may be starting, or away): 2 s after the
   * first failure, doubling up to a minute. The first failure is logged at info (at a first start Postgres may
   * not answer yet), each later one at warn: until the stanza exists, no WAL is archived.
   */
  private async makeStanza(clusterBackup: ClusterBackup): Promise<void> {
    const signal = this.stopping.signal;
    for (let failures = 0, delayMs = 2_000; !signal.aborted; failures++, delayMs = Math.min(delayMs * 2, 60_000)) {
      try {
        await clusterBackup.ensureStanza();
        this.log.info({ stanza: clusterBackup.stanza }, 'cluster backups: the pgBackRest stanza is ready, WAL is archived');
        return;
      } catch (err) {
        const fields = { err, stanza: clusterBackup.stanza, failures: failures + 1 };
        if (failures === 0) this.log.info(fields, 'cluster backups: the pgBackRest stanza could not be made yet; trying again');
        else this.log.warn(fields, "cluster backups: the pgBackRest stanza still cannot be made; WAL is not archived until it is (see Postgres's log)");
      }
      await sleep(delayMs, undefined, { signal }).catch(() => {});
    }
  }

  /** Stops the background work (waiting for a reconcile in progress), then closes the connections. */
  async stop(): Promise<void> {
    this.stopping.abort();
    clearInterval(this.timer);
    await this.schedules.stop();
    await this.storage.stop();
    await this.stanzaMaking;
    await this.readyPool.stop();
    await this.reconciling;
    await this.server.close();
    await this.store.close();
  }

  private reconcileOnce(): Promise<void> {
    this.reconciling ??= this.reconciler
      .run()
      .then((report) => this.log.info({ repaired: report.repaired.length, skipped_busy: report.skippedBusy, failed: report.failed }, 'reconcile finished'))
      // A login changed outside the service (an app's own ALTER ROLE … PASSWORD) reaches the door here at the
      // latest; a door that is away is tried again by itself (src/db/pooler/pgbouncer.ts), not counted here.
      .then(() => this.server.pooler.loginsChanged().catch(() => {}))
      .catch((err) => this.log.warn({ err }, 'reconcile failed; it will run again'))
      .finally(() => {
        this.reconciling = undefined;
      });
    return this.reconciling;
  }
}
