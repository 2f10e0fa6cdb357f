// Rotation, and operations on one app queued behind each other, in process, against a real Postgres. Each rotation
// waits out the server's authentication_timeout (5 s in postgres.conf), so the tests of this file, which share no
// app, run at once. A login paused mid-handshake across a rotation: test/stack/hostile-tenant.test.ts.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { buildTestApp, type TestApp } from '../helpers/app.js';
import { asApp, connectAs } from '../helpers/app-sessions.js';
import { catalogOf } from '../helpers/catalog.js';
import { rejectionOf } from '../helpers/conditions.js';

let t: TestApp;
before(async () => {
  t = await buildTestApp();
});
after(async () => {
  await t?.close();
});
const catalog = catalogOf(() => t);

describe('POST /apps/:name/rotate, and operations on apps at once', { concurrency: true }, () => {
  it('returns a new password; the old one is refused at once and its open sessions are ended', async () => {
    const app = await t.provision('rotating');
    const oldSession = await connectAs(app.connection_string);
    const rotated = await t.admin('POST', '/apps/rotating/rotate');
    assert.equal(rotated.status, 200);
    assert.equal(rotated.body.sessions_ended, 1);
    const fresh = String(rotated.body.connection_string);
    assert.notEqual(fresh, app.connection_string);
    assert.match(fresh, /^postgres:\/\/app_rotating_user:[A-Za-z0-9]{32}@/);
    const password = new URL(fresh).password;
    assert.deepEqual(
      { ...rotated.body, connection_string: undefined },
      {
        connection_string: undefined,
        database_url: fresh.replace(/^postgres:/, 'postgresql:'),
        app_name: 'rotating',
        database: 'app_rotating',
        username: 'app_rotating_user',
        password,
        host: '127.0.0.1',
        port: t.postgres.port,
        pooling: 'none',
        sslmode: 'require',
        sessions_ended: 1,
      },
      'the new password, in the URL forms and in parts',
    );

    const refused = await rejectionOf(connectAs(app.connection_string));
    assert.match(refused.message, /password authentication failed/);
    const ended = await rejectionOf(oldSession.query('SELECT 1'));
    assert.match(ended.message, /terminat|Connection terminated|not queryable/i);
    await asApp(fresh, async (c) => assert.equal((await c.query('SELECT current_user AS u')).rows[0].u, 'app_rotating_user'));
    await asApp(String(rotated.body.database_url), async (c) => assert.equal((await c.query('SELECT current_user AS u')).rows[0].u, 'app_rotating_user'));
    const logs = t.allLogs();
    assert.ok(!logs.includes(password), 'the new password is in no log');
    assert.ok(!logs.includes('postgresql://'), 'nor its database_url');
  });

  it('answers 404 for an unknown app and 400 for a bad name', async () => {
    assert.equal((await t.admin('POST', '/apps/nobody_here/rotate')).status, 404);
    assert.equal((await t.admin('POST', '/apps/NO/rotate')).status, 400);
  });

  it('answers 409 when another operation holds the app longer than the lock timeout', async () => {
    // A service of its own with a short lock timeout (the holder only needs to outlast it), on the same Postgres;
    // without a ready pool, so that it leaves the first one's prepared sets alone.
    const short = await buildTestApp({ env: { DATABASE_LOCK_TIMEOUT_MS: '1000', READY_POOL_SIZE: '0' } });
    try {
      await short.provision('held');
      const lockKey = "hashtextextended('pg-provisioner:app:' || 'held', 0)";
      const holder = await short.superuser(async (db) => {
        await db.query(`SELECT pg_advisory_lock(${lockKey})`);
        try {
          return await short.admin('POST', '/apps/held/rotate');
        } finally {
          await db.query(`SELECT pg_advisory_unlock(${lockKey})`);
        }
      }, 'provisioner'); // advisory locks belong to a database: the service takes them in its own
      assert.equal(holder.status, 409);
      assert.equal(holder.body.message, "another operation on app 'held' is in progress: retry when it has finished");
      assert.equal((await short.admin('POST', '/apps/held/rotate')).status, 200, 'free again once the holder is done');
    } finally {
      await short.close();
    }
  });

  it('serializes operations on one app: never a 5xx, and the outcome is one of the orders', async () => {
    await t.provision('contended');
    const [rotate, backup, remove] = await Promise.all([
      t.admin('POST', '/apps/contended/rotate'),
      t.admin('POST', '/apps/contended/backups'),
      t.admin('DELETE', '/apps/contended?backup=false'),
    ]);
    // 409 only if one waited longer than the lock timeout (10 s) behind the others; a rotation holds the app
    // ~5.3 s (it waits out authentication_timeout), so on a quiet machine all three go through in some order.
    for (const response of [rotate, backup, remove]) assert.ok([200, 201, 404, 409].includes(response.status), String(response.status));
    const removed = remove.status === 409 ? await t.admin('DELETE', '/apps/contended?backup=false') : remove;
    assert.equal(removed.status, 200);
    assert.deepEqual(await catalog.app('contended'), { roles: [], databases: [], registry: [] });
  });

  it('runs operations on different apps in parallel', async () => {
    const names = Array.from({ length: 6 }, (_, i) => `parallel_${i}`);
    const created = await Promise.all(names.map((name) => t.post('/provision', { app_name: name, admin_key: t.adminKey })));
    assert.deepEqual(created.map((r) => r.status), Array(6).fill(201));
    const rotated = await Promise.all(names.map((name) => t.admin('POST', `/apps/${name}/rotate`)));
    assert.deepEqual(rotated.map((r) => r.status), Array(6).fill(200));
  });
});
