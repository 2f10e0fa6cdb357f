// The stack's life: the service refuses bad settings, shuts down gracefully, and a restarted stack keeps every
// app while giving a new admin key.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SERVICE_DIR } from '../../scripts/lib/local-stack.js';
import pg from 'pg';
import { asApp } from '../helpers/app-sessions.js';
import { catalogOf } from '../helpers/catalog.js';
import { eventually, rejectionOf } from '../helpers/conditions.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

describe('service start-up', () => {
  it('stops with a message naming a missing or bad setting', () => {
    const run = (env: Record<string, string>) =>
      spawnSync(process.execPath, [join(SERVICE_DIR, 'dist', 'server.js')], { env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8', timeout: 10_000 });
    const missing = run({});
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /POSTGRES_PASSWORD is missing/);
    const bad = run({ POSTGRES_PASSWORD: 'x', PORT: 'http', PUBLIC_DB_PORT: '99999' });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /PORT is invalid/);
    assert.match(bad.stderr, /PUBLIC_DB_PORT is invalid/);
    assert.doesNotMatch(bad.stdout + bad.stderr, /ADMIN KEY/);
  });
});

describe('local stack start-up', () => {
  it('names a missing Postgres binary and how to install it', async () => {
    const err = await rejectionOf(startTestStack({ pgBinDir: '/nonexistent/bin' }));
    assert.match(err.message, /PostgreSQL 15 server binaries not found in \/nonexistent\/bin: install them \(Debian\/Ubuntu: apt-get install -y postgresql-15\)/);
  });
});

describe('stack restart', () => {
  let t: TestStack;
  before(async () => {
    t = await startTestStack();
  });
  after(async () => {
    await t?.stop();
  });
  const catalog = catalogOf(() => t);

  it('keeps every app and its data, gives a new admin key, and refuses the old one', async () => {
    const app = await t.provision('survivor');
    await asApp(app.connection_string, (c) => c.query("CREATE TABLE notes AS SELECT 'kept' AS v"));
    const oldKey = t.stack.adminKey;

    await t.stack.stop();
    await t.stack.start();

    assert.notEqual(t.stack.adminKey, oldKey);
    assert.match(t.stack.adminKey, /^sk_[A-Za-z0-9]{40}$/);
    const rows = await asApp(app.connection_string, async (c) => (await c.query('SELECT v FROM notes')).rows);
    assert.deepEqual(rows, [{ v: 'kept' }]);
    assert.equal((await t.post('/provision', { app_name: 'after_restart', admin_key: oldKey })).status, 401);
    assert.equal((await t.post('/provision', { app_name: 'after_restart', admin_key: t.stack.adminKey })).status, 201);
    assert.equal((await t.post('/provision', { app_name: 'survivor', admin_key: t.stack.adminKey })).status, 409);
  });

  it('gives sets the ready pool prepared before a restart the limits of the new settings', async () => {
    const before = await eventually(catalog.readySetLogins, (sets) => sets.length > 0, 60_000);
    assert.ok(before.length > 0 && before.every((set) => set.rolconnlimit === 10), 'prepared with the default limit');
    await t.stack.stopService();
    await t.stack.startService({ APP_CONNECTION_LIMIT: '4', APP_STATEMENT_TIMEOUT: '30s' });
    try {
      const oldOids = new Set(before.map((set) => set.oid));
      const rekeyed = (sets: Awaited<ReturnType<typeof catalog.readySetLogins>>) =>
        sets.filter((set) => oldOids.has(set.oid)).every((set) => set.rolconnlimit === 4 && set.rolconfig.includes('statement_timeout=30s'));
      assert.ok(rekeyed(await eventually(catalog.readySetLogins, rekeyed, 60_000)), 'every set prepared before the restart has the new limits');
      const app = await t.provision('limits_after_restart');
      const made = { oid: await catalog.databaseOid('app_limits_after_restart'), rolconnlimit: (await catalog.roleAttributes('app_limits_after_restart_user'))?.rolconnlimit };
      assert.ok(oldOids.has(made.oid!), 'handed over from a set prepared before the restart');
      assert.equal(made.rolconnlimit, 4);
      assert.equal(await asApp(app.connection_string, async (c) => (await c.query('SHOW statement_timeout')).rows[0].statement_timeout), '30s');
    } finally {
      // The next test starts from the stack's own settings, whatever happened here.
      await t.stack.stopService();
      await t.stack.startService();
    }
  });

  it('shuts the service down cleanly on SIGTERM, finishing the request in flight', async () => {
    // The on-demand path (ready pool off), held in flight by the test: the test takes the app's lock first, so
    // the request is inside the service, waiting for it, when SIGTERM arrives; then the lock is let go.
    await t.stack.stopService();
    await t.stack.startService({ READY_POOL_SIZE: '0' });
    const holder = new pg.Client(t.stack.superuserConnection('provisioner'));
    await holder.connect();
    try {
      await holder.query(`SELECT pg_advisory_lock(hashtextextended('pg-provisioner:' || $1, 0))`, ['app:in_flight']);
      // The service waits for an app's lock by trying it again and again: its session's last statement says so.
      const tryingTheLock = () =>
        t.superuser(async (db) => (await db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'pg-provisioner' AND query LIKE 'SELECT pg_try_advisory_lock%'")).rows[0].n as number);
      assert.equal(await tryingTheLock(), 0, 'nothing waits for a lock before the request');
      let answered = false;
      const inFlight = t.post('/provision', { app_name: 'in_flight', admin_key: t.stack.adminKey }).finally(() => (answered = true));
      const waiting = await eventually(tryingTheLock, (n) => n > 0, 30_000);
      assert.equal(waiting, 1, 'the request is in flight, waiting for the app lock');
      assert.equal(answered, false, 'and not answered yet');
      const from = t.serviceLines.length;
      const stopped = t.stack.stopService('SIGTERM');
      await t.waitForServiceLine(/shutting down/, from);
      await holder.query(`SELECT pg_advisory_unlock(hashtextextended('pg-provisioner:' || $1, 0))`, ['app:in_flight']);
      const response = await inFlight;
      await stopped;
      assert.equal(response.status, 201, response.text);
      await t.stack.startService();
      await asApp(String(response.body.connection_string), (c) => c.query('SELECT 1'));
      await t.stack.stopService('SIGTERM');
    } finally {
      await holder.end();
    }

    // With the service down, nginx answers for it, in JSON.
    try {
      for (const response of [await t.get('/health'), await t.post('/provision', { app_name: 'nobody_home' })]) {
        assert.equal(response.status, 503);
        assert.equal(response.body.statusCode, 503);
        assert.match(String(response.body.message), /not reachable/);
      }
    } finally {
      await t.stack.stopService(); // a no-op when it is down, as it is unless a step above failed
      await t.stack.startService();
    }
    assert.equal((await t.get('/health')).status, 200);
  });
});
