// The app lifecycle in process, against a real Postgres: list, inspect, back up, restore, delete; every status code
// and failure path; the audit log; OpenAPI and metrics. Rotation: apps-rotation.test.ts. Through nginx, with Postgres
// stopped under the service: test/stack/apps-api.test.ts.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
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

describe('authentication of /apps', () => {
  it('asks for a Bearer key (401 with WWW-Authenticate), and refuses a wrong one', async () => {
    const missing = await t.get('/apps');
    assert.equal(missing.status, 401);
    assert.equal(missing.headers.get('www-authenticate'), 'Bearer');
    assert.match(String(missing.body.message), /Authorization: Bearer/);
    assert.equal((await t.get('/apps', { authorization: 'Bearer sk_wrong' })).status, 401);
    assert.equal((await t.get('/apps', { authorization: `Basic ${t.adminKey}` })).status, 401);
    assert.equal((await t.get('/apps', { authorization: `Bearer ${t.adminKey}` })).status, 200);
  });

  it('takes the key only as exactly "Bearer <key>"', async () => {
    for (const header of [`Bearer  ${t.adminKey}`, `Bearer ${t.adminKey} x`, t.adminKey, `Basic ${t.adminKey}`]) {
      const response = await t.get('/apps', { authorization: header });
      assert.equal(response.status, 401, header);
      assert.match(String(response.body.message), /send exactly "Authorization: Bearer <key>"/, header);
    }
  });
});

describe('GET /apps and GET /apps/:name', () => {
  it('lists every app with its database, username, creation time, size and open connections', async () => {
    await t.provision('list_a');
    const b = await t.provision('list_b');
    const session = await connectAs(b.connection_string);
    try {
      const { status, body } = await t.admin('GET', '/apps');
      assert.equal(status, 200);
      const apps = body.apps as Array<Record<string, unknown>>;
      const listB = apps.find((a) => a.app_name === 'list_b')!;
      assert.ok(apps.some((a) => a.app_name === 'list_a'));
      assert.deepEqual(Object.keys(listB).sort(), ['app_name', 'connections', 'created_at', 'database', 'size_bytes', 'username']);
      assert.equal(listB.database, 'app_list_b');
      assert.equal(listB.username, 'app_list_b_user');
      assert.ok(Number(listB.size_bytes) > 1_000_000);
      assert.equal(listB.connections, 1);
      assert.ok(Math.abs(Date.parse(String(listB.created_at)) - Date.now()) < 60_000);

      const one = await t.admin('GET', '/apps/list_b');
      assert.equal(one.status, 200);
      // One app: what the list says, and its backups' state (none yet; its scheduled backups are not failing).
      // …and its storage against its limit (APP_STORAGE_LIMIT's 1GB; no companion database, so its database's size).
      const storage = { used_bytes: listB.size_bytes, limit_bytes: 2 ** 30, hard_limit_bytes: Math.floor(2 ** 30 * 1.2), state: 'ok' };
      assert.deepEqual(one.body, { ...listB, databases: [], newest_backup: null, backup_failing: null, credentials: [], storage });
    } finally {
      await session.end();
    }
  });

  it('answers 404 for an unknown app and 400 for a name outside the rule', async () => {
    const missing = await t.admin('GET', '/apps/nobody_here');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.message, "app 'nobody_here' does not exist");
    for (const bad of ['Bad', 'ab', 'x-y', 'a'.repeat(33), '%27%3B']) {
      const response = await t.admin('GET', `/apps/${bad}`);
      assert.equal(response.status, 400, bad);
      assert.equal(response.body.statusCode, 400);
    }
  });
});

describe('backups and restore', () => {
  it('backs up, lists, and restores into the app database, objects owned by the app role', async () => {
    const app = await t.provision('keeper');
    await asApp(app.connection_string, async (c) => {
      await c.query('CREATE EXTENSION citext');
      await c.query('CREATE TABLE notes (id serial PRIMARY KEY, body citext NOT NULL)');
      await c.query("INSERT INTO notes (body) VALUES ('first'), ('second')");
    });
    const backup = await t.admin('POST', '/apps/keeper/backups');
    assert.equal(backup.status, 201);
    const file = String(backup.body.file);
    const incarnation = await catalog.incarnationOf('keeper');
    assert.equal(file.startsWith(`app_keeper-${incarnation}-`), true, 'named after the app and its incarnation');
    assert.match(file, /^app_keeper-[0-9a-f]{16}-\d{8}T\d{9}Z\.dump$/);
    assert.equal(backup.body.incarnation, incarnation);
    assert.ok(Number(backup.body.size_bytes) > 0);
    assert.ok(existsSync(join(t.backupDir, file)));
    assert.equal(readFileSync(join(t.backupDir, file)).subarray(0, 5).toString(), 'PGDMP', 'a pg_dump custom-format file');

    const listed = await t.admin('GET', '/apps/keeper/backups');
    assert.equal(listed.status, 200);
    assert.deepEqual(listed.body.backups, [backup.body]);

    // Changes after the backup, which the restore must take back.
    await asApp(app.connection_string, async (c) => {
      await c.query("INSERT INTO notes (body) VALUES ('after the backup')");
      await c.query('CREATE TABLE scratch (x int)');
    });
    const session = await connectAs(app.connection_string);
    const restored = await t.admin('POST', '/apps/keeper/restore', { file });
    assert.equal(restored.status, 200);
    assert.deepEqual(restored.body, { app_name: 'keeper', restored: file });
    await rejectionOf(session.query('SELECT 1')); // sessions in the replaced database were ended

    await asApp(app.connection_string, async (c) => {
      assert.deepEqual((await c.query('SELECT body::text FROM notes ORDER BY id')).rows, [{ body: 'first' }, { body: 'second' }]);
      assert.equal((await c.query("SELECT to_regclass('scratch') AS t")).rows[0].t, null);
      const owners = await c.query("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'");
      assert.deepEqual(owners.rows, [{ tableowner: 'app_keeper_user' }]);
      await c.query("INSERT INTO notes (body) VALUES ('writable again')");
    });
    assert.deepEqual(await catalog.workLeftovers(), { databases: [], agents: [] });
  });

  it("refuses unknown files, other apps' files, path tricks and bad bodies", async () => {
    await t.provision('restorer');
    await t.provision('other_keeper');
    const theirs = await t.admin('POST', '/apps/other_keeper/backups');
    assert.equal(theirs.status, 201);
    assert.equal((await t.admin('POST', '/apps/restorer/restore', { file: theirs.body.file })).status, 404, "another app's backup");
    assert.equal((await t.admin('POST', '/apps/restorer/restore', { file: 'app_restorer-20000101T000000000Z.dump' })).status, 404);
    for (const body of [{ file: '../../etc/passwd' }, { file: 'app_restorer-1.dump/../x' }, {}, { file: 42 }, { file: theirs.body.file, extra: 1 }]) {
      const response = await t.admin('POST', '/apps/restorer/restore', body);
      assert.equal(response.status, 400, JSON.stringify(body));
    }
    assert.equal((await t.admin('POST', '/apps/nobody_here/backups')).status, 404);
    assert.equal((await t.admin('GET', '/apps/nobody_here/backups')).status, 404);
    assert.equal((await t.admin('POST', '/apps/nobody_here/restore', { file: theirs.body.file })).status, 404);
  });
});

describe('DELETE /apps/:name', () => {
  it('backs up, ends every session, removes the database and every role whatever the app made, and frees the name', async () => {
    const app = await t.provision('doomed');
    const session = await connectAs(app.connection_string);
    await session.query('CREATE SCHEMA extra; CREATE TABLE extra.t (x int); CREATE EXTENSION pgcrypto; CREATE TEMP TABLE tmp (x int)');
    await session.query('CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$');

    const deleted = await t.admin('DELETE', '/apps/doomed');
    assert.equal(deleted.status, 200);
    assert.equal(deleted.body.deleted, 'doomed');
    assert.match(String(deleted.body.backup), /^app_doomed-.*\.dump$/);
    assert.ok(existsSync(join(t.backupDir, String(deleted.body.backup))));
    await rejectionOf(session.query('SELECT 1'));
    assert.deepEqual(await catalog.app('doomed'), { roles: [], databases: [], registry: [] });
    assert.equal((await t.admin('GET', '/apps/doomed')).status, 404);

    const again = await t.provision('doomed');
    await asApp(again.connection_string, async (c) => assert.equal((await c.query("SELECT to_regclass('extra.t') AS t")).rows[0].t, null));
  });

  it('skips the backup with ?backup=false, and refuses other values', async () => {
    await t.provision('no_backup');
    // z.stringbool took 0, no, off (and 1, yes, on, y, n, enabled, disabled) as booleans: a typo deleted with no backup.
    for (const value of ['maybe', '0', 'no', 'off', 'n', 'disabled', '1', 'yes', 'on', 'FALSE', 'True', '', 'false%20', '%20true', 'true&backup=false']) {
      const response = await t.admin('DELETE', `/apps/no_backup?backup=${value}`);
      assert.equal(response.status, 400, JSON.stringify(value));
      assert.equal(response.body.message, 'backup must be true or false', JSON.stringify(value));
    }
    assert.deepEqual(await catalog.app('no_backup'), { roles: ['app_no_backup', 'app_no_backup_user'], databases: ['app_no_backup'], registry: ['ready'] }, 'still there');
    const deleted = await t.admin('DELETE', '/apps/no_backup?backup=false');
    assert.equal(deleted.status, 200);
    assert.deepEqual(deleted.body, { deleted: 'no_backup', backup: null });
  });

  it('answers 404 for an unknown app and 400 for a bad name', async () => {
    assert.equal((await t.admin('DELETE', '/apps/nobody_here')).status, 404);
    assert.equal((await t.admin('DELETE', '/apps/bad-name')).status, 400);
  });
});

describe('failures', () => {
  it("answers 422 without pg_restore's words when it refuses a file, and leaves the app as it was", async () => {
    const app = await t.provision('bad_dump');
    await asApp(app.connection_string, (c) => c.query("CREATE TABLE t AS SELECT 'intact' AS v"));
    const incarnation = await catalog.incarnationOf('bad_dump');
    const file = `app_bad_dump-${incarnation}-20260101T000000000Z.dump`;
    writeFileSync(join(t.backupDir, file), 'PGDMP this is not a dump');
    const response = await t.admin('POST', '/apps/bad_dump/restore', { file });
    assert.equal(response.status, 422);
    assert.deepEqual(response.body, {
      statusCode: 422,
      error: 'Unprocessable Entity',
      message: `backup '${file}' could not be restored into app 'bad_dump': pg_restore stopped at an error in it; the app's database is unchanged`,
    });
    assert.equal(await asApp(app.connection_string, async (c) => (await c.query('SELECT v FROM t')).rows[0].v), 'intact');
    assert.deepEqual(await catalog.workLeftovers(), { databases: [], agents: [] });
  });
});

describe('bookkeeping', () => {
  it('keeps an append-only audit log with time, action, app, outcome, request id and client', async () => {
    await t.provision('audited');
    assert.equal((await t.admin('POST', '/apps/audited/backups')).status, 201);
    assert.equal((await t.admin('DELETE', '/apps/audited?backup=false')).status, 200);
    await t.admin('POST', '/apps/nobody_here/rotate');
    const rows = await t.superuser(async (db) => (await db.query('SELECT at, action, app_name, outcome, request_id, client FROM audit_log ORDER BY id')).rows, 'provisioner');
    const backup = rows.find((r) => r.action === 'backup' && r.app_name === 'audited' && r.outcome === 'ok');
    assert.ok(backup);
    assert.ok(backup.request_id.length >= 8);
    assert.equal(backup.client, '127.0.0.1');
    assert.ok(backup.at instanceof Date);
    assert.ok(rows.some((r) => r.action === 'rotate' && r.app_name === 'nobody_here' && r.outcome === 'app_not_found'));
    assert.ok(rows.some((r) => r.action === 'delete' && r.app_name === 'audited' && r.outcome === 'ok'));
    for (const sql of ['UPDATE audit_log SET outcome = $1', 'DELETE FROM audit_log WHERE outcome <> $1', 'TRUNCATE audit_log']) {
      const err = await rejectionOf(t.superuser((db) => db.query(sql, sql.includes('$1') ? ['x'] : []), 'provisioner'));
      assert.match(err.message, /append-only/, sql);
    }
  });

  it('serves Prometheus metrics and the OpenAPI document, whose operations README documents', async () => {
    await t.provision('measured');
    const metrics = await t.get('/metrics');
    assert.equal(metrics.status, 200);
    for (const name of ['pgprov_operations_total{operation="provision",outcome="ok"}', 'pgprov_operation_duration_seconds_bucket', 'pgprov_http_requests_total', 'pgprov_http_request_duration_seconds_bucket', 'pgprov_db_pool_connections{state="total"}', 'pgprov_apps ', 'pgprov_process_resident_memory_bytes']) {
      assert.ok(metrics.text.includes(name), name);
    }
    const docs = (await t.get('/docs/json')).body as { openapi: string; paths: Record<string, Record<string, unknown>> };
    assert.match(docs.openapi, /^3\./);
    const operations = Object.entries(docs.paths).flatMap(([path, methods]) => Object.keys(methods).map((m) => `${m.toUpperCase()} ${path.replace(/\{(\w+)\}/g, ':$1')}`));
    assert.deepEqual(operations.sort(), [
      'DELETE /apps/:name',
      'DELETE /apps/:name/credentials/:credential',
      'DELETE /apps/:name/databases/:database_name',
      'DELETE /apps/:name/extensions/:extension',
      'GET /apps',
      'GET /apps/:name',
      'GET /apps/:name/backups',
      'GET /apps/:name/credentials',
      'GET /apps/:name/databases',
      'GET /apps/:name/extensions',
      'GET /apps/:name/settings',
      'GET /backups',
      'GET /health',
      'GET /tls/ca.crt',
      'PATCH /apps/:name/settings',
      'POST /apps/:name/backups',
      'POST /apps/:name/credentials',
      'POST /apps/:name/credentials/:credential/rotate',
      'POST /apps/:name/databases',
      'POST /apps/:name/extensions',
      'POST /apps/:name/restore',
      'POST /apps/:name/rotate',
      'POST /provision',
    ]);
    const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
    for (const operation of operations) assert.ok(readme.includes(`### ${operation}`), `README documents ${operation}`);
    // A companion database's answer says why it carries no password (the service does not keep the app's).
    const companionAnswer = JSON.stringify((docs.paths['/apps/{name}/databases']!.post as { responses: Record<string, unknown> }).responses['201']);
    assert.match(companionAnswer, /No password: the app logs in to its companion databases with its own login role and the password it already has/);
    assert.doesNotMatch(companionAnswer, /"password"/);
  });

  it('answers GET /tls/ca.crt with 404 and a message for the operator when it was given no CA (TLS_CA_FILE)', async () => {
    // This in-process service has no TLS_CA_FILE; the certificate served through nginx: test/stack/apps-api.test.ts.
    assert.equal(t.config.TLS_CA_FILE, undefined);
    const response = await t.get('/tls/ca.crt');
    assert.equal(response.status, 404);
    assert.match(String(response.body.message), /no CA certificate to give/);
  });
});
