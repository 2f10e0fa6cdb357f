// Owns Prometheus metrics, served at GET /metrics on the service's own port (nginx does not route it):
// requests and latency per route, outcomes and latency per app operation, connection pool usage, number of apps,
// ready-pool sets, the apps' door (PgBouncer up or not, and each app's pool there, from SHOW POOLS), backups (each
// app's newest, WAL archiving, cluster backups, off-site copies, and failures), the storage quota (apps near or over
// their limits, enforcements), and the process's own (memory, event loop, GC). Metrics depend on the operations (they
// observe them and read the provisioner's statistics); the operations know nothing of metrics.
import fp from 'fastify-plugin';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { PoolUsage } from '../../domain/provisioner.js';

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export default fp(
  async (app) => {
    const register = new Registry();
    collectDefaultMetrics({ register, prefix: 'pgprov_' });

    const requests = new Counter({ name: 'pgprov_http_requests_total', help: 'HTTP requests by route, method and status', labelNames: ['route', 'method', 'status'], registers: [register] });
    const requestSeconds = new Histogram({ name: 'pgprov_http_request_duration_seconds', help: 'HTTP request latency by route and method', labelNames: ['route', 'method'], buckets: LATENCY_BUCKETS, registers: [register] });
    const operations = new Counter({ name: 'pgprov_operations_total', help: 'App operations by name and outcome', labelNames: ['operation', 'outcome'], registers: [register] });
    const operationSeconds = new Histogram({ name: 'pgprov_operation_duration_seconds', help: 'App operation latency by name', labelNames: ['operation'], buckets: LATENCY_BUCKETS, registers: [register] });
    new Gauge({
      name: 'pgprov_db_pool_connections',
      help: 'Superuser pool connections by state (total, idle, waiting requests)',
      labelNames: ['state'],
      registers: [register],
      collect() {
        const pool = app.statistics.connectionPool();
        this.set({ state: 'total' }, pool.total);
        this.set({ state: 'idle' }, pool.idle);
        this.set({ state: 'waiting' }, pool.waiting);
      },
    });
    new Gauge({
      name: 'pgprov_apps',
      help: 'Apps that are ready',
      registers: [register],
      async collect() {
        try {
          this.set(await app.statistics.readyApps());
        } catch {
          // Postgres away: the gauge keeps its last value; /health says why.
        }
      },
    });

    new Gauge({
      name: 'pgprov_ready_pool_sets',
      help: 'Ready-pool sets by state (ready to hand over, being prepared)',
      labelNames: ['state'],
      registers: [register],
      async collect() {
        try {
          const counts = await app.statistics.readySets();
          this.set({ state: 'ready' }, counts.ready);
          this.set({ state: 'preparing' }, counts.preparing);
        } catch {
          // Postgres away: keep the last values.
        }
      },
    });

    new Gauge({
      name: 'pgprov_pooler_up',
      help: "Whether the apps' door (PgBouncer) answers its admin console: 1 or 0 (absent without a pooler)",
      registers: [register],
      collect() {
        const up = app.statistics.poolerUp();
        if (up !== undefined) this.set(up ? 1 : 0);
      },
    });
    // Per app (database), from the door's SHOW POOLS, asked once per scrape (below) for both gauges: clients using
    // or waiting for a server connection, the server connections the door holds to Postgres for it, the oldest wait.
    let poolsOfThisScrape: PoolUsage[] = [];
    new Gauge({
      name: 'pgprov_pooler_connections',
      help: "The apps' door's connections per app database: clients active and waiting, servers active and idle",
      labelNames: ['database', 'state'],
      registers: [register],
      collect() {
        this.reset();
        for (const pool of poolsOfThisScrape) {
          this.set({ database: pool.database, state: 'client_active' }, pool.clientsActive);
          this.set({ database: pool.database, state: 'client_waiting' }, pool.clientsWaiting);
          this.set({ database: pool.database, state: 'server_active' }, pool.serversActive);
          this.set({ database: pool.database, state: 'server_idle' }, pool.serversIdle);
        }
      },
    });
    new Gauge({
      name: 'pgprov_pooler_client_max_wait_seconds',
      help: "How long the oldest client of each app database has waited for a server connection at the apps' door",
      labelNames: ['database'],
      registers: [register],
      collect() {
        this.reset();
        for (const pool of poolsOfThisScrape) this.set({ database: pool.database }, pool.maxWaitSeconds);
      },
    });

    // --- backups that run by themselves (src/domain/backups/schedules.ts) -------------------------------------------
    // Each ready app's newest backup, read once per scrape (below) for both gauges; undefined: Postgres was away.
    let newestBackupsOfThisScrape: Array<{ app: string; newestAt: Date | null }> | undefined;
    new Gauge({
      name: 'pgprov_app_newest_backup_age_seconds',
      help: "Age of each ready app's newest backup (scheduled or asked for), in seconds; apps with none are in pgprov_apps_without_backup",
      labelNames: ['app'],
      registers: [register],
      collect() {
        if (!newestBackupsOfThisScrape) return; // Postgres away: keep the last values
        const now = Date.now();
        this.reset();
        for (const { app: name, newestAt } of newestBackupsOfThisScrape) if (newestAt) this.set({ app: name }, Math.max(0, (now - newestAt.getTime()) / 1000));
      },
    });
    new Gauge({
      name: 'pgprov_apps_without_backup',
      help: 'Ready apps that have no backup yet',
      registers: [register],
      collect() {
        if (newestBackupsOfThisScrape) this.set(newestBackupsOfThisScrape.filter((entry) => entry.newestAt === null).length);
      },
    });
    // WAL archiving (pg_stat_archiver), read once per scrape; undefined: off, or Postgres away.
    let archivingOfThisScrape: Awaited<ReturnType<typeof app.statistics.walArchiving>>;
    /**
     * A gauge of how long ago something happened, in seconds; +Inf while it never has (so `age > limit` alerts on
     * "never" too). `known` false: nothing to say this scrape (Postgres away, or the feature off): the last value stays.
     */
    const ageGauge = (name: string, help: string, when: () => { known: boolean; at?: Date | null }) =>
      new Gauge({
        name,
        help: `${help}, in seconds; +Inf while it never has`,
        registers: [register],
        collect() {
          const { known, at } = when();
          if (known) this.set(at ? Math.max(0, (Date.now() - at.getTime()) / 1000) : Infinity);
        },
      });
    ageGauge('pgprov_wal_archive_last_success_age_seconds', 'Age of the last WAL segment archived (pgBackRest archive-push)', () => ({ known: archivingOfThisScrape !== undefined, at: archivingOfThisScrape?.lastArchivedAt }));
    ageGauge('pgprov_wal_archive_last_failure_age_seconds', 'Age of the last failed attempt to archive a WAL segment', () => ({ known: archivingOfThisScrape !== undefined, at: archivingOfThisScrape?.lastFailedAt }));
    new Counter({
      name: 'pgprov_wal_archive_failures_total',
      help: "Failed attempts to archive a WAL segment, as Postgres counts them (pg_stat_archiver.failed_count)",
      registers: [register],
      collect() {
        if (!archivingOfThisScrape) return;
        this.reset();
        this.inc(archivingOfThisScrape.failures);
      },
    });
    new Counter({
      name: 'pgprov_scheduled_backup_failures_total',
      help: 'Failures of the work that runs by itself: app_dump, retention, cluster_backup, offsite_copy',
      labelNames: ['work'],
      registers: [register],
      collect() {
        this.reset();
        for (const [work, count] of Object.entries(app.statistics.backupSchedules().failures)) this.inc({ work }, count);
      },
    });
    new Gauge({
      name: 'pgprov_app_backup_failing',
      help: 'Apps whose scheduled backups fail: failures in a row (retried after BACKUP_RETRY_DELAY_MS, doubling)',
      labelNames: ['app'],
      registers: [register],
      collect() {
        this.reset();
        for (const [name, failing] of app.statistics.backupSchedules().failingApps) this.set({ app: name }, failing.failures);
      },
    });
    new Gauge({
      name: 'pgprov_cluster_backup_last_success_age_seconds',
      help: 'Age of the newest cluster backup (pgBackRest), by its type, from pgBackRest\'s own records once read (absent until then, and while there is none)',
      labelNames: ['type'],
      registers: [register],
      collect() {
        this.reset();
        const last = app.statistics.backupSchedules().lastClusterBackup;
        if (last) this.set({ type: last.type }, (Date.now() - last.at.getTime()) / 1000);
      },
    });
    new Gauge({
      name: 'pgprov_offsite_configured',
      help: 'Whether backups are copied off the machine (OFFSITE_REMOTE): 0 means every backup is on the same disk as the data',
      registers: [register],
      collect() {
        this.set(app.statistics.backupSchedules().offsiteConfigured ? 1 : 0);
      },
    });
    ageGauge('pgprov_offsite_copy_last_success_age_seconds', 'Age of the last successful copy of the backups off the machine, since this service started (+Inf without a remote, or until one succeeds)', () => ({ known: true, at: app.statistics.backupSchedules().lastOffsiteCopy }));

    // --- the storage quota (src/domain/storage-quota.ts), from its last check: no query per scrape -------------------
    // Per app only for apps at their warning threshold or over (or enforced): at 2,000 apps, two series each for
    // every app would triple this page for numbers GET /apps already lists, while alerts need only those near a limit.
    new Gauge({
      name: 'pgprov_app_storage_used_bytes',
      help: 'Storage of each app at its warning threshold or over, or enforced (its database and companion databases), in bytes',
      labelNames: ['app'],
      registers: [register],
      collect() {
        this.reset();
        for (const entry of app.statistics.storage().watched) this.set({ app: entry.app }, entry.used);
      },
    });
    new Gauge({
      name: 'pgprov_app_storage_limit_bytes',
      help: 'Storage limit of each app at its warning threshold or over, or enforced, in bytes',
      labelNames: ['app'],
      registers: [register],
      collect() {
        this.reset();
        for (const entry of app.statistics.storage().watched) this.set({ app: entry.app }, entry.limit);
      },
    });
    new Gauge({
      name: 'pgprov_apps_over_storage_limit',
      help: 'Ready apps using more than their storage limit (read-only, or suspended over the hard limit, once enforced)',
      registers: [register],
      collect() {
        this.set(app.statistics.storage().overLimit);
      },
    });
    new Gauge({
      name: 'pgprov_apps_storage_used_bytes',
      help: "Every ready app's storage together (databases and companion databases), in bytes",
      registers: [register],
      collect() {
        this.set(app.statistics.storage().totalUsed);
      },
    });
    new Counter({
      name: 'pgprov_storage_enforcements_total',
      help: 'Storage quota enforcements by what they brought an app to: read_only, suspended, writable',
      labelNames: ['action'],
      registers: [register],
      collect() {
        this.reset();
        for (const [action, count] of Object.entries(app.statistics.storage().enforcements)) this.inc({ action }, count);
      },
    });
    ageGauge('pgprov_storage_last_check_age_seconds', "Age of the storage quota's last finished check (every STORAGE_CHECK_INTERVAL_MS)", () => ({ known: true, at: app.statistics.storage().lastCheckAt ?? null }));

    app.operations.observe((operation, outcome, seconds) => {
      operations.inc({ operation, outcome });
      operationSeconds.observe({ operation }, seconds);
    });

    app.addHook('onResponse', (request, reply, done) => {
      const route = request.routeOptions.url ?? 'unknown';
      requests.inc({ route, method: request.method, status: String(reply.statusCode) });
      requestSeconds.observe({ route, method: request.method }, reply.elapsedTime / 1000);
      done();
    });

    app.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
      // The pooler away: no pools to show; pgprov_pooler_up says so.
      [poolsOfThisScrape, newestBackupsOfThisScrape, archivingOfThisScrape] = await Promise.all([
        app.statistics.poolerPools().catch(() => []),
        app.statistics.newestAppBackups().catch(() => undefined),
        app.statistics.walArchiving().catch(() => undefined),
      ]);
      reply.type(register.contentType);
      return register.metrics();
    });
  },
  { name: 'metrics', dependencies: ['provisioner'] },
);
