// The apps' door (PgBouncer, pgbouncer.ini and pgbouncer-hba.conf at the top of the repo), against the real local
// stack: every app login goes through it with the connection string the service returned, and what the README and
// SECURITY.md promise of it is checked here: no per-app configuration, a budget of server connections per app,
// no Postgres slot for a client that has not logged in, the service's changes in force before it answers, the
// door's state in /health and /metrics, and the direct door for what needs a session of its own.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { poolerAdminPassword } from '../../src/db/pooler/pgbouncer.js';
import { asApp, connectAs } from '../helpers/app-sessions.js';
import { eventually, rejectionOf } from '../helpers/conditions.js';
import {
  clientBackends,
  clientsOf,
  hostileCrowd,
  loginsInProgress,
  metrics,
  poolerConfig,
  poolerLog,
  poolOf,
  sampleValue,
  serverSessionsOf,
  type HostileCrowd,
} from '../helpers/pooler.js';
import type { ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';
import { SAME_DISK_WARNING } from '../../src/domain/provisioner.js';

/** No off-site remote in this stack: /health says the backups share the data's disk. */
const NO_OFFSITE = { offsite: 'none', warning: SAME_DISK_WARNING };

/** The whole answer of POST /provision and rotate (test/helpers/service-client.ts types only what every test needs). */
type Credentials = ProvisionedApp & { password: string; database_url: string; pooling: string; direct_connection_string: string; sslmode: string };

let t: TestStack;
/** Every app password this file was given: none may reach PgBouncer's log. */
const passwords: string[] = [];

before(async () => {
  t = await startTestStack();
});
after(async () => {
  await t?.stop();
});

async function provision(appName: string): Promise<Credentials> {
  const app = (await t.provision(appName)) as Credentials;
  passwords.push(app.password);
  return app;
}

const currentUser = (connectionString: string) => asApp(connectionString, async (c) => (await c.query('SELECT current_user AS u')).rows[0].u as string);

/**
 * A pooled client connected now, which remembers whether the door has since closed its connection: "disconnected"
 * means that (PgBouncer's KILL), not merely that its next query fails, which a server gone behind the door would
 * also make it do.
 */
async function pooledClient(connectionString: string): Promise<{ client: pg.Client; disconnected: () => Promise<boolean> }> {
  const client = await connectAs(connectionString);
  let ended = false;
  client.once('end', () => (ended = true));
  assert.equal((await client.query('SELECT 1 AS one')).rows[0].one, 1);
  return { client, disconnected: () => eventually(async () => ended, (done) => done, 30_000) };
}

/** A superuser session to `database` held open by the test (t.superuser closes its connection after each piece of work). */
async function superuserSession(database = 'postgres'): Promise<pg.Client> {
  const client = new pg.Client(t.stack.superuserConnection(database));
  client.on('error', () => {});
  await client.connect();
  return client;
}

describe("the apps' door (PgBouncer)", () => {
  it("runs the repo's configuration as written: hba parsed, the mode the answers state, the port they name", async () => {
    // PgBouncer skips a pgbouncer-hba.conf line it cannot parse with a warning, and starts anyway: its log after
    // start is the only place a broken line would show.
    const log = poolerLog(t);
    assert.match(log, /process up: PgBouncer/, 'the log read is the running PgBouncer\'s');
    const suspicious = log.split('\n').filter((line) => /could not parse|WARNING|ERROR|FATAL/i.test(line));
    assert.deepEqual(suspicious, []);

    const app = await provision('configured');
    const config = await poolerConfig(t);
    assert.equal(config.get('pool_mode'), app.pooling);
    assert.equal(app.pooling, 'transaction');
    assert.equal(config.get('auth_type'), 'hba');
    const url = new URL(app.connection_string);
    assert.equal(Number(url.port), t.stack.settings.poolerPort);
    assert.equal(app.port, t.stack.settings.poolerPort);
    assert.equal(new URL(app.database_url).port, url.port);
    assert.equal(Number(new URL(app.direct_connection_string).port), t.stack.settings.pgPort);
    // And the app gets in at that port, as itself, to its own database.
    assert.equal(await asApp(app.connection_string, async (c) => (await c.query('SELECT current_database() AS d')).rows[0].d), app.database);
  });

  it('needs no per-app configuration: each of 8 apps made at once connects the moment its answer arrives', async () => {
    const names = Array.from({ length: 8 }, (_, i) => `burst_${i}`);
    // Each chain connects as soon as its own answer arrives, while the other provisions are still under way:
    // no wait, no retry. The service has put the login into PgBouncer's auth_file and RELOADed before answering.
    const users = await Promise.all(
      names.map(async (name) => {
        const app = await provision(name);
        return currentUser(app.connection_string);
      }),
    );
    assert.deepEqual(users, names.map((name) => `app_${name}_user`));
  });

  it("serves 50 clients of one app with at most max_db_connections server sessions, while other apps and the service's work go on", async () => {
    const config = await poolerConfig(t);
    const budget = Number(config.get('max_db_connections'));
    assert.equal(budget, 2, "pgbouncer.ini's max_db_connections");
    assert.equal(Number(config.get('default_pool_size')), budget);
    const busy = await provision('busy');
    const neighbour = await provision('neighbour');

    // All 50 are connected at once (PgBouncer holds their logins; Postgres has none of them yet).
    const clients = await Promise.all(Array.from({ length: 50 }, () => connectAs(busy.connection_string)));
    // The superuser holds an advisory lock each client's transaction waits for: the first `budget` transactions
    // hold the app's server connections, blocked, and the rest queue at the door, for as long as the test needs.
    const holder = await superuserSession(busy.database);
    const sampler = await superuserSession();
    let sampling = true;
    let mostSeen = 0;
    const samples = (async () => {
      while (sampling) {
        const { rows } = await sampler.query('SELECT count(*) AS n FROM pg_stat_activity WHERE usename = $1', [busy.username]);
        mostSeen = Math.max(mostSeen, Number(rows[0].n));
        // A sampling interval, not a wait for anything: it keeps the sampler from taking a core of its own.
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    try {
      assert.equal(await clientsOf(t, busy.database), 50, 'PgBouncer holds 50 client connections of the app');
      await holder.query('SELECT pg_advisory_lock(4242)');
      const work = clients.map(async (client) => {
        await client.query('BEGIN');
        await client.query('SELECT pg_advisory_xact_lock_shared(4242)');
        const { rows } = await client.query('SELECT current_user AS u, count(*) AS n FROM generate_series(1, 1000)');
        await client.query('COMMIT');
        return rows[0];
      });
      work.forEach((done) => done.catch(() => {})); // each is awaited below; a failure is reported there, not as unhandled

      const pool = await eventually(() => poolOf(t, busy.database), (row) => Number(row?.sv_active) === budget && Number(row?.cl_waiting) === 50 - budget, 30_000);
      assert.equal(Number(pool?.sv_active), budget, JSON.stringify(pool));
      assert.equal(Number(pool?.cl_waiting), 50 - budget, JSON.stringify(pool));
      assert.equal(await serverSessionsOf(t, busy.username), budget, 'Postgres has exactly the budget of sessions for the app');

      // Meanwhile: another app, and the service's own work on the saturated app itself.
      assert.equal(await currentUser(neighbour.connection_string), neighbour.username);
      assert.equal((await t.admin('GET', '/apps')).status, 200);
      const backup = await t.admin('POST', `/apps/${busy.app_name}/backups`);
      assert.equal(backup.status, 201, backup.text);

      await holder.query('SELECT pg_advisory_unlock(4242)');
      const results = await Promise.all(work);
      assert.equal(results.length, 50);
      for (const row of results) assert.deepEqual({ u: row.u, n: Number(row.n) }, { u: busy.username, n: 1000 });
    } finally {
      sampling = false;
      await samples.catch(() => {});
      await Promise.all([holder, sampler, ...clients].map((client) => client.end().catch(() => {})));
    }
    assert.ok(mostSeen >= 1, 'the sampler saw the app at work');
    assert.ok(mostSeen <= budget, `Postgres saw ${mostSeen} sessions of the app at once, more than ${budget}`);
  });

  it('holds 300 silent sockets and 60 logins stalled mid-handshake without a Postgres slot, while everyone else gets in', async (ctx) => {
    const victim = await provision('stalled_victim');
    const bystander = await provision('bystander');
    const backupTarget = await provision('backed_up_under_flood');
    await asApp(backupTarget.connection_string, (c) => c.query("CREATE TABLE notes AS SELECT 'kept' AS v"));
    const baseline = await clientBackends(t);
    assert.equal(await loginsInProgress(t), 0);

    let crowd: HostileCrowd | undefined;
    const total = 360;
    try {
      // Bounded: the crowd lets go by itself after two minutes, whatever happens to this test. 60 logins stall at
      // four points of the handshake: after SSLRequest, after TLS, asked for SCRAM, and after SCRAM's challenge.
      crowd = hostileCrowd({
        port: t.stack.settings.poolerPort,
        counts: { idle: 300, sslRequest: 15, tlsSilent: 15, saslAsked: 15, scramStarted: 15 },
        login: { user: victim.username, database: victim.database },
        deadlineMs: 120_000,
      });
      // PgBouncer ends a login older than client_login_timeout (5 s); the crowd opens another in its place, so at
      // any moment nearly all of it is there. Wait for a moment when every one is at its pause, and PgBouncer holds
      // them all (a connection the kernel has completed may wait a moment in the listen backlog before it is accepted).
      assert.ok(await crowd.allPaused(60_000), `the crowd never stood in full: ${JSON.stringify(crowd.paused())}`);
      const held = await eventually(() => loginsInProgress(t), (count) => count === total, 30_000);
      assert.equal(held, total, `PgBouncer holds ${held} logins in progress, not the crowd's ${total}`);

      // Postgres did not grow by them: no session for the role the stalled logins name, and none but the service's
      // added (its pool may open more of its own meanwhile): PgBouncer opens a server connection only for a client
      // that has logged in.
      const during = await clientBackends(t);
      ctx.diagnostic(`client backends before ${JSON.stringify(baseline)}, with the crowd held ${JSON.stringify(during)}`);
      assert.equal(await serverSessionsOf(t, victim.username), 0);
      assert.ok(during.notService <= baseline.notService, `sessions other than the service's grew from ${baseline.notService} to ${during.notService}`);
      assert.ok(during.all <= baseline.all + 5, `client backends grew from ${baseline.all} to ${during.all} (the service's pool has 5 at most)`);

      // Everyone else still gets in, while the crowd is held.
      assert.equal(await currentUser(bystander.connection_string), bystander.username);
      assert.equal(await t.superuser(async (db) => (await db.query('SELECT 1 AS one')).rows[0].one), 1);
      const backup = await t.admin('POST', `/apps/${backupTarget.app_name}/backups`);
      assert.equal(backup.status, 201, backup.text);
      const health = await t.get('/health');
      assert.equal(health.status, 200);
      assert.deepEqual(health.body, { status: 'ok', pooler: 'ok', backups: NO_OFFSITE });
      // Still there: in full again after the checks (a client PgBouncer ends is replaced within moments).
      ctx.diagnostic(`held after the checks: ${JSON.stringify(crowd.paused())}; PgBouncer had closed ${crowd.closedByServer()} by itself (each replaced)`);
      assert.ok(await crowd.allPaused(60_000), `the crowd was not held through the checks: ${JSON.stringify(crowd.paused())}`);
    } finally {
      await crowd?.release();
    }
    // Released: PgBouncer lets go of every one, and the role the stalled logins named gets in.
    const left = await eventually(() => loginsInProgress(t), (count) => count === 0, 30_000);
    assert.equal(left, 0, 'logins still in progress after the crowd left');
    assert.equal(await currentUser(victim.connection_string), victim.username);
  });

  describe("an app's changes, in force at the door before the answer", () => {
    it('rotate: the old password is refused at once, the new one works, a pooled client from before is disconnected', async () => {
      const app = await provision('rotating');
      const { client: pooled, disconnected } = await pooledClient(app.connection_string);
      try {
        const rotated = await t.admin('POST', `/apps/${app.app_name}/rotate`);
        assert.equal(rotated.status, 200, rotated.text);
        const fresh = rotated.body as unknown as Credentials;
        passwords.push(fresh.password);
        assert.notEqual(fresh.password, app.password);
        assert.equal(new URL(fresh.connection_string).port, String(t.stack.settings.poolerPort));

        const refused = await rejectionOf(connectAs(app.connection_string));
        assert.match(refused.message, /SASL authentication failed|password authentication failed/);
        assert.equal(await currentUser(fresh.connection_string), app.username);
        assert.ok(await disconnected(), 'the pooled client from before the rotation was disconnected');
        await rejectionOf(pooled.query('SELECT 1'));
      } finally {
        await pooled.end().catch(() => {});
      }
    });

    it('delete: a pooled client is disconnected and new logins are refused', async () => {
      const app = await provision('doomed');
      const { client: pooled, disconnected } = await pooledClient(app.connection_string);
      try {
        const deleted = await t.admin('DELETE', `/apps/${app.app_name}?backup=false`);
        assert.equal(deleted.status, 200, deleted.text);
        assert.ok(await disconnected(), 'the pooled client was disconnected');
        await rejectionOf(pooled.query('SELECT 1'));
        // The deleted app has no line in the door's hba file any more: refused before its password is asked.
        const refused = await rejectionOf(connectAs(app.connection_string));
        assert.match(refused.message, /^login rejected$/);
      } finally {
        await pooled.end().catch(() => {});
      }
    });

    it("restore: a transaction open across it fails, and the same pooled client's next one sees the restored data", async () => {
      // Restore ends the app's server connections (the swap ends every session in its database; RECONNECT at the
      // door) but keeps its pooled clients: KILL would end them too, but it is unsafe while the app's logins go on
      // (src/domain/apps-door.ts). So a client's transaction across the restore fails, and its next transaction
      // runs on the restored database, as after a reconnect.
      const app = await provision('restored');
      await asApp(app.connection_string, (c) => c.query("CREATE TABLE notes (v text); INSERT INTO notes VALUES ('in the backup')"));
      const backup = await t.admin('POST', `/apps/${app.app_name}/backups`);
      assert.equal(backup.status, 201, backup.text);
      await asApp(app.connection_string, (c) => c.query("INSERT INTO notes VALUES ('after the backup')"));

      const { client: pooled } = await pooledClient(app.connection_string);
      const { client: inTransaction } = await pooledClient(app.connection_string);
      try {
        assert.equal(Number((await pooled.query('SELECT count(*) AS n FROM notes')).rows[0].n), 2);
        await inTransaction.query('BEGIN');
        assert.equal(Number((await inTransaction.query('SELECT count(*) AS n FROM notes')).rows[0].n), 2);
        const restored = await t.admin('POST', `/apps/${app.app_name}/restore`, { file: backup.body.file });
        assert.equal(restored.status, 200, restored.text);
        await rejectionOf(inTransaction.query('SELECT count(*) FROM notes'));
        assert.deepEqual((await pooled.query('SELECT v FROM notes ORDER BY v')).rows, [{ v: 'in the backup' }]);
      } finally {
        await pooled.end().catch(() => {});
        await inTransaction.end().catch(() => {});
      }
      const rows = await asApp(app.connection_string, async (c) => (await c.query('SELECT v FROM notes ORDER BY v')).rows);
      assert.deepEqual(rows, [{ v: 'in the backup' }]);
    });
  });

  it('is reported down and back: /health stays 200, provisioning goes on, and the app made meanwhile connects once it is back', async () => {
    await t.stack.stopPgBouncer();
    let madeMeanwhile: Credentials;
    try {
      // The service checks its door every 2 s: the change shows within a few checks.
      const health = await eventually(() => t.get('/health'), (r) => r.body.pooler === 'unavailable', 30_000);
      assert.equal(health.status, 200);
      assert.deepEqual(health.body, { status: 'ok', pooler: 'unavailable', backups: NO_OFFSITE });
      assert.equal(sampleValue(await metrics(t), 'pgprov_pooler_up'), 0);

      const made = await t.post('/provision', { app_name: 'made_while_down', admin_key: t.adminKey });
      assert.equal(made.status, 201, made.text);
      madeMeanwhile = made.body as unknown as Credentials;
      passwords.push(madeMeanwhile.password);
    } finally {
      await t.stack.startPgBouncer(); // resolves once the service sees its door again
    }
    const health = await eventually(() => t.get('/health'), (r) => r.body.pooler === 'ok', 30_000);
    assert.deepEqual(health.body, { status: 'ok', pooler: 'ok', backups: NO_OFFSITE });
    assert.equal(sampleValue(await metrics(t), 'pgprov_pooler_up'), 1);
    assert.equal(await currentUser(madeMeanwhile.connection_string), madeMeanwhile.username);
  });

  it("shows each app's pool in /metrics: a transaction held open is one active server and an active client", async () => {
    const app = await provision('measured');
    const labels = (state: string) => ({ database: app.database, state });
    const client = await connectAs(app.connection_string);
    try {
      // In transaction mode the server connection is the client's from BEGIN to COMMIT.
      await client.query('BEGIN');
      await client.query('SELECT 1');
      const samples = await eventually(
        () => metrics(t),
        (found) => sampleValue(found, 'pgprov_pooler_connections', labels('server_active')) === 1 && (sampleValue(found, 'pgprov_pooler_connections', labels('client_active')) ?? 0) >= 1,
        30_000,
      );
      assert.equal(sampleValue(samples, 'pgprov_pooler_connections', labels('server_active')), 1);
      assert.ok((sampleValue(samples, 'pgprov_pooler_connections', labels('client_active')) ?? 0) >= 1);
      assert.equal(sampleValue(samples, 'pgprov_pooler_connections', labels('client_waiting')), 0);
      assert.notEqual(sampleValue(samples, 'pgprov_pooler_client_max_wait_seconds', { database: app.database }), undefined);
      await client.query('COMMIT');
    } finally {
      await client.end().catch(() => {});
    }
  });

  it('keeps session state only at the direct door: a SET and an advisory lock outlive their transactions there', async () => {
    // Through the pooler each transaction may run on another server connection (README, "Pooled or direct"):
    // session state (SET, LISTEN, advisory session locks) needs a session of its own, which the direct door gives.
    const app = await provision('sessionful');
    await asApp(app.direct_connection_string, async (c) => {
      const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      await c.query("SET pgprov_test.marker = 'kept'");
      await c.query('SELECT pg_advisory_lock(77)');
      await c.query('BEGIN');
      await c.query('CREATE TABLE t (v int)');
      await c.query('COMMIT');
      const { rows } = await c.query(
        "SELECT pg_backend_pid() AS pid, current_setting('pgprov_test.marker') AS marker, (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks",
      );
      assert.deepEqual({ ...rows[0], locks: Number(rows[0].locks) }, { pid, marker: 'kept', locks: 1 });
      const ssl = (await c.query('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).rows[0].ssl;
      assert.equal(ssl, true, 'the direct door is TLS too');
    });
  });

  it("never writes an app's password (or the admin console's) to PgBouncer's log", () => {
    const log = poolerLog(t);
    // The log holds what happened above (the refused logins of the rotate and delete tests name their roles):
    // what is searched is the log of this file's work, not an empty one.
    assert.match(log, /app_rotating_user/);
    assert.ok(passwords.length >= 15, `${passwords.length} passwords collected`);
    for (const password of [...passwords, poolerAdminPassword(t.stack.postgresPassword), t.stack.postgresPassword]) {
      assert.ok(!log.includes(password), "a password is in PgBouncer's log");
    }
  });
});
