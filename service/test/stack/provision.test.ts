// POST /provision and GET /health against the real local stack, through nginx, with real Postgres sessions
// opened from the connection strings exactly as returned.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { asApp, withDatabase } from '../helpers/app-sessions.js';
import { eventually, rejectionOf } from '../helpers/conditions.js';
import { request } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';
import { APP_SQL } from '../../src/shared/object-names.js';

let t: TestStack;
before(async () => {
  t = await startTestStack();
});
after(async () => {
  await t?.stop();
});

const appRoles = (t: TestStack) =>
  t.superuser(async (db) => (await db.query<{ rolname: string }>(`SELECT rolname FROM pg_roles WHERE rolname LIKE '${APP_SQL.like}' ORDER BY 1`)).rows.map((r) => r.rolname));
const readySetIds = (t: TestStack) =>
  t.superuser(async (db) => (await db.query<{ id: string }>("SELECT id FROM ready_pool WHERE state = 'ready' ORDER BY id")).rows.map((r) => r.id), 'provisioner');
const registered = (t: TestStack, appName: string) =>
  t.superuser(async (db) => (await db.query('SELECT state FROM apps WHERE app_name = $1', [appName])).rows, 'provisioner');
const appDatabases = (t: TestStack) =>
  t.superuser(async (db) => (await db.query<{ datname: string }>(`SELECT datname FROM pg_database WHERE datname LIKE '${APP_SQL.like}' ORDER BY 1`)).rows.map((r) => r.datname));

describe('nginx and health', () => {
  it('answers GET / itself, with JSON', async () => {
    const response = await t.get('/');
    assert.equal(response.status, 200);
    assert.deepEqual(response.body, { status: 'ok', service: 'nginx' });
    assert.match(response.headers.get('content-type') ?? '', /application\/json/);
  });

  it('reports health as ok while Postgres answers', async () => {
    const response = await t.get('/health');
    assert.equal(response.status, 200);
    assert.deepEqual(response.body, { status: 'ok' });
  });

  it('hides versions and sends nosniff on every answer', async () => {
    for (const response of [await t.get('/'), await t.get('/health'), await t.get('/nope'), await t.post('/provision', {})]) {
      assert.equal(response.headers.get('server'), 'nginx');
      assert.equal(response.headers.get('x-powered-by'), null);
      assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
      assert.match(response.headers.get('content-type') ?? '', /application\/json/);
    }
  });

  it('gives every answer, nginx\'s own and the service\'s, one x-request-id: the id in the service\'s log line', async () => {
    const answers = {
      'nginx 200': await t.get('/'),
      'nginx 404': await t.get('/nope'),
      'nginx 405': await request(`${t.stack.httpUrl}/health`, { method: 'DELETE' }),
      'nginx 413': await t.post('/provision', { app_name: 'big', admin_key: 'x'.repeat(20_000) }),
      'service 200': await t.get('/health'),
      'service 400': await t.post('/provision', {}),
      'service 401': await t.get('/apps'),
      'service 201': await t.post('/provision', { app_name: 'request_ids', admin_key: t.stack.adminKey }),
    };
    const ids = new Set<string>();
    for (const [label, response] of Object.entries(answers)) {
      const id = response.headers.get('x-request-id');
      assert.match(String(id), /^[0-9a-f]{32}$/, `${label}: one id, nginx's $request_id (${id})`);
      ids.add(id!);
    }
    assert.equal(ids.size, Object.keys(answers).length, 'a new id per request');
    const created = answers['service 201'].headers.get('x-request-id')!;
    const line = await t.waitForServiceLine(new RegExp(`"reqId":"${created}"[^\\n]*"msg":"request"`));
    assert.match(line, /"statusCode":201/);

    const direct = await request(`${t.stack.serviceUrl}/health`);
    assert.match(String(direct.headers.get('x-request-id')), /^[A-Za-z0-9_-]{12}$/, 'the service makes one when nobody gave it one');
    const given = await request(`${t.stack.serviceUrl}/nope`, { headers: { 'x-request-id': 'my-trace-0001' } });
    assert.equal(given.headers.get('x-request-id'), 'my-trace-0001', 'and keeps a well-formed one it was given');
  });

  it('answers unknown paths with a JSON 404', async () => {
    for (const path of ['/nope', '/provision/extra', '/admin', '/metrics', '/docs/json']) {
      const response = await t.get(path);
      assert.equal(response.status, 404, path);
      assert.equal(response.body.statusCode, 404);
    }
  });

  it('answers a body over 16 KB with a JSON 413 from nginx', async () => {
    const response = await t.post('/provision', { app_name: 'big', admin_key: 'x'.repeat(20_000) });
    assert.equal(response.status, 413);
    assert.equal(response.body.statusCode, 413);
  });
});

describe('POST /provision', () => {
  it('creates an app whose connection string works as returned, and which the app can fully use', async () => {
    const response = await t.post('/provision', { app_name: 'shop', admin_key: t.stack.adminKey });
    assert.equal(response.status, 201);
    const { connection_string, database_url, database, username, password, host, port } = response.body as Record<string, string>;
    assert.match(connection_string!, /^postgres:\/\/app_shop_user:[A-Za-z0-9]{32}@127\.0\.0\.1:\d+\/app_shop\?sslmode=disable$/);
    assert.equal(database, 'app_shop');
    assert.equal(username, 'app_shop_user');
    assert.equal(host, '127.0.0.1');
    assert.equal(Number(port), t.stack.settings.pgPort);
    // The same login for SQLAlchemy (which refuses postgres://) and in parts, for drivers that take them so.
    assert.deepEqual(Object.keys(response.body).sort(), ['app_name', 'connection_string', 'database', 'database_url', 'host', 'password', 'port', 'username']);
    assert.equal(database_url, connection_string!.replace(/^postgres:\/\//, 'postgresql://'));
    assert.equal(password, new URL(connection_string!).password);
    for (const login of [database_url!, { host, port: Number(port), database, user: username, password }]) {
      const client = new pg.Client(typeof login === 'string' ? { connectionString: login } : login);
      await client.connect();
      try {
        assert.deepEqual((await client.query('SELECT current_user AS u, current_database() AS d')).rows[0], { u: 'app_shop_user', d: 'app_shop' });
      } finally {
        await client.end();
      }
    }

    await asApp(connection_string!, async (app) => {
      assert.equal((await app.query('SELECT current_user, current_database()')).rows[0].current_user, 'app_shop_user');
      await app.query('CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL)');
      await app.query("INSERT INTO orders (item) VALUES ('pencil'), ('paper')");
      assert.deepEqual((await app.query('SELECT item FROM orders ORDER BY id')).rows, [{ item: 'pencil' }, { item: 'paper' }]);
      await app.query('CREATE INDEX orders_item ON orders (item)');
      await app.query('CREATE VIEW order_items AS SELECT item FROM orders');
      await app.query('CREATE SCHEMA billing');
      await app.query('CREATE TABLE billing.invoices (id int)');
      await app.query("CREATE FUNCTION twice(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2'");
      assert.equal((await app.query('SELECT twice(21) AS v')).rows[0].v, 42);
      await app.query('CREATE FUNCTION bump(x int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN x + 1; END $$');
      assert.equal((await app.query('SELECT bump(41) AS v')).rows[0].v, 42);
      await app.query('CREATE TEMP TABLE scratch (x int)');
      const owner = await app.query("SELECT nspowner::regrole::text AS owner FROM pg_namespace WHERE nspname = 'public'");
      assert.equal(owner.rows[0].owner, 'app_shop_user');
    });
  });

  it('creates a role without any dangerous attribute, in the apps group, with its limits', async () => {
    const role = await t.superuser(async (db) =>
      (
        await db.query(
          `SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolreplication, r.rolbypassrls, r.rolinherit, r.rolcanlogin,
                  r.rolconnlimit, r.rolconfig, pg_has_role(r.oid, 'provisioned_apps', 'MEMBER') AS in_group
             FROM pg_roles r WHERE r.rolname = 'app_shop_user'`,
        )
      ).rows[0],
    );
    assert.deepEqual(
      { ...role, rolconfig: undefined },
      { rolsuper: false, rolcreatedb: false, rolcreaterole: false, rolreplication: false, rolbypassrls: false, rolinherit: false, rolcanlogin: true, rolconnlimit: 10, rolconfig: undefined, in_group: true },
    );
    assert.ok(role.rolconfig.includes('temp_file_limit=1GB'));
    // The default timeouts (SECURITY.md, promise 4), on the role itself: no statement timeout, 10 minutes idle in a transaction.
    assert.ok(role.rolconfig.includes('statement_timeout=0'), role.rolconfig.join(' '));
    assert.ok(role.rolconfig.includes('idle_in_transaction_session_timeout=10min'), role.rolconfig.join(' '));
    const acl = await t.superuser(async (db) => (await db.query("SELECT datacl::text FROM pg_database WHERE datname = 'app_shop'")).rows[0].datacl);
    assert.doesNotMatch(acl, /(^|[{,])=/, 'PUBLIC has no privilege on the app database');
    assert.match(acl, /app_shop_user=CTc\//);
  });

  it('stores only a SCRAM verifier, never the password', async () => {
    const app = await t.provision('verifier_check');
    const password = new URL(app.connection_string).password;
    const stored = await t.superuser(async (db) => (await db.query("SELECT rolpassword FROM pg_authid WHERE rolname = 'app_verifier_check_user'")).rows[0].rolpassword);
    assert.match(stored, /^SCRAM-SHA-256\$4096:/);
    assert.ok(!stored.includes(password));
  });

  it('answers 409 for an existing app and changes nothing', async () => {
    const first = await t.provision('dupe');
    const again = await t.post('/provision', { app_name: 'dupe', admin_key: t.stack.adminKey });
    assert.equal(again.status, 409);
    assert.equal(again.body.message, "app 'dupe' already exists");
    await asApp(first.connection_string, async (app) => assert.equal((await app.query('SELECT 1 AS one')).rows[0].one, 1));
  });

  it('gives exactly one 201 to concurrent requests for one name, and 409 to the rest', async () => {
    const responses = await Promise.all(Array.from({ length: 12 }, () => t.post('/provision', { app_name: 'race', admin_key: t.stack.adminKey })));
    const statuses = responses.map((r) => r.status).sort();
    assert.deepEqual(statuses, [201, ...Array(11).fill(409)]);
    const winner = responses.find((r) => r.status === 201)!;
    await asApp(winner.body.connection_string as string, async (app) => assert.equal((await app.query('SELECT current_user AS u')).rows[0].u, 'app_race_user'));
  });

  it('accepts the admin key as a Bearer token too', async () => {
    const response = await t.post('/provision', { app_name: 'bearer' }, { authorization: `Bearer ${t.stack.adminKey}` });
    assert.equal(response.status, 201);
  });

  it('answers 401 for a wrong key and creates nothing', async () => {
    const before = await appRoles(t);
    for (const key of ['sk_wrong', `${t.stack.adminKey}x`, t.stack.adminKey.slice(0, -1), '']) {
      const response = await t.post('/provision', { app_name: 'intruder', admin_key: key });
      assert.equal(response.status, 401, key);
      assert.equal(response.body.message, 'invalid admin key');
    }
    assert.equal((await t.post('/provision', { app_name: 'intruder' }, { authorization: 'Bearer sk_nope' })).status, 401);
    assert.deepEqual(await appRoles(t), before);
  });

  it('answers 400 with a message for bad input, and creates nothing', async () => {
    const rolesBefore = await appRoles(t);
    const databasesBefore = await appDatabases(t);
    const key = t.stack.adminKey;
    const cases: Array<[string, unknown, RegExp]> = [
      ['too short', { app_name: 'ab', admin_key: key }, /at least 3/],
      ['too long', { app_name: 'a'.repeat(33), admin_key: key }, /at most 32/],
      ['uppercase', { app_name: 'MyApp', admin_key: key }, /lowercase/],
      ['hyphen', { app_name: 'my-app', admin_key: key }, /lowercase/],
      ['quote', { app_name: 'x"y', admin_key: key }, /lowercase/],
      ['sql', { app_name: "a'; DROP ROLE x; --", admin_key: key }, /lowercase|at most/],
      ['number', { app_name: 123, admin_key: key }, /must be a string/],
      ['missing app_name', { admin_key: key }, /^app_name is required$/],
      ['null app_name', { app_name: null, admin_key: key }, /^app_name must be a string$/],
      ['missing admin_key', { app_name: 'nokey' }, /admin_key is required/],
      ['key not a string', { app_name: 'nokey', admin_key: 42 }, /admin_key must be a string/],
      ['extra field', { app_name: 'extra', admin_key: key, owner: 'me' }, /owner/],
      ['array body', [], /JSON object/],
      ['string body', '"shop"', /JSON object/],
      ['null body', 'null', /JSON object/],
      ['invalid JSON', '{"app_name":', /JSON/],
      ['empty body', '', /empty/i],
    ];
    for (const [label, body, message] of cases) {
      const response = await t.post('/provision', body);
      assert.equal(response.status, 400, label);
      assert.equal(response.body.statusCode, 400, label);
      assert.match(String(response.body.message), message, label);
    }
    for (const contentType of ['application/x-www-form-urlencoded', 'text/plain', 'text/plain; charset=utf-8', 'application/xml']) {
      const refused = await t.post('/provision', JSON.stringify({ app_name: 'not_json', admin_key: key }), { 'content-type': contentType });
      assert.equal(refused.status, 415, contentType);
      assert.deepEqual(refused.body, { statusCode: 415, error: 'Unsupported Media Type', message: 'send the body as JSON, with "Content-Type: application/json"' }, contentType);
    }
    assert.deepEqual(await appRoles(t), rolesBefore);
    assert.deepEqual(await appDatabases(t), databasesBefore);
  });

  it("refuses a name whose database exists on the ready pool's path: the hand-over is rolled back, the prepared set kept", async () => {
    // This stack's ready pool (READY_POOL_SIZE 5, the default) hands over a prepared set whenever it has one, so
    // the on-demand undo is tested on a stack without a pool (below); here, the hand-over's own rollback.
    const ready = await eventually(() => readySetIds(t), (ids) => ids.length > 0, 60_000);
    assert.ok(ready.length > 0, 'the ready pool has a set ready within a minute');
    await t.superuser((db) => db.query('CREATE DATABASE app_pooled_blocked'));
    const from = t.serviceLines.length;
    const response = await t.post('/provision', { app_name: 'pooled_blocked', admin_key: t.stack.adminKey });
    assert.equal(response.status, 409);
    assert.equal(response.body.message, "app 'pooled_blocked' already exists");
    const roles = await appRoles(t);
    assert.ok(!roles.includes('app_pooled_blocked_user') && !roles.includes('app_pooled_blocked'), 'no role renamed to the app');
    assert.deepEqual(await registered(t, 'pooled_blocked'), [], 'nothing registered');
    // The path: the hand-over's transaction was rolled back, so every set that was ready still is, its roles
    // still prepared ones; and the on-demand undo did not run.
    assert.deepEqual((await readySetIds(t)).filter((id) => ready.includes(id)), ready, 'no prepared set was used up');
    const prepared = await t.superuser(async (db) => (await db.query("SELECT rolname FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1", [ready.map((id) => `pgprov_ready_${id}_user`)])).rows.length);
    assert.equal(prepared, ready.length);
    assert.ok(!t.serviceLines.slice(from).some((line) => line.includes('provisioning failed; the steps already done were undone')), 'the on-demand path did not run');
    await t.superuser((db) => db.query('DROP DATABASE app_pooled_blocked'));
  });
});

describe('POST /provision on demand (no ready pool)', () => {
  let od: TestStack;
  before(async () => {
    od = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', LOG_LEVEL: 'info', READY_POOL_SIZE: '0' } });
  });
  after(async () => {
    await od?.stop();
  });

  it('undoes the role when the database cannot be made (no half app)', async () => {
    assert.deepEqual(await readySetIds(od), [], 'no ready pool: every provision is made on demand');
    await od.superuser((db) => db.query('CREATE DATABASE app_blocked'));
    const from = od.serviceLines.length;
    const response = await od.post('/provision', { app_name: 'blocked', admin_key: od.stack.adminKey });
    assert.equal(response.status, 409);
    assert.equal(response.body.message, "app 'blocked' already exists");
    // The on-demand path made the roles, failed at CREATE DATABASE, and undid what it had made: it says so.
    await od.waitForServiceLine(/"app":"blocked"[^\n]*"msg":"provisioning failed; the steps already done were undone"/, from);
    const roles = await appRoles(od);
    assert.ok(!roles.includes('app_blocked_user'), 'the login role made before the failure was dropped');
    assert.ok(!roles.includes('app_blocked'), 'the access role made before the failure was dropped');
    assert.deepEqual(await registered(od, 'blocked'), [], 'the registry row made first was removed');
    assert.deepEqual(await appDatabases(od), ['app_blocked'], 'the database that was there, not ours, is left alone');
    // And the name works once its database is gone.
    await od.superuser((db) => db.query('DROP DATABASE app_blocked'));
    assert.equal((await od.post('/provision', { app_name: 'blocked', admin_key: od.stack.adminKey })).status, 201);
  });
});

describe('isolation (the basics; SECURITY.md has the full model)', () => {
  it('keeps app A out of app B database, the system databases, and away from creating databases or roles', async () => {
    const a = await t.provision('tenant_a');
    const b = await t.provision('tenant_b');
    await asApp(b.connection_string, (app) => app.query("CREATE TABLE secrets AS SELECT 'b-only' AS v"));

    for (const database of ['app_tenant_b', 'postgres', 'template1', 'template0', 'provisioner']) {
      const err = await rejectionOf(asApp(withDatabase(a.connection_string, database), (app) => app.query('SELECT 1')));
      assert.match(err.message, /permission denied|pg_hba\.conf rejects|not currently accepting|does not exist/, database);
    }
    await asApp(a.connection_string, async (app) => {
      assert.equal((await rejectionOf(app.query('CREATE DATABASE stolen'))).code, '42501');
      assert.equal((await rejectionOf(app.query('CREATE ROLE minion'))).code, '42501');
      assert.equal((await rejectionOf(app.query('SET ROLE app_tenant_b_user'))).code, '42501');
      assert.equal((await rejectionOf(app.query('SET ROLE postgres'))).code, '42501');
    });
  });

  it('refuses the second of two names whose roles would collide (x and x_user), and keeps the rest apart', async () => {
    await t.provision('fam');
    const clash = await t.post('/provision', { app_name: 'fam_user', admin_key: t.stack.adminKey });
    assert.equal(clash.status, 409);
    assert.equal(clash.body.message, "app_name 'fam_user' cannot be used while app 'fam' exists: Postgres would give both a role named app_fam_user");
    await t.provision('fam_user_user');
    assert.equal((await appRoles(t)).filter((r) => r.startsWith('app_fam')).join(' '), 'app_fam app_fam_user app_fam_user_user app_fam_user_user_user');
  });
});

describe('health when Postgres is away', () => {
  it('answers 503 with JSON while Postgres is down, and ok again once it is back', async () => {
    await t.stack.stopPostgres();
    try {
      // One ping's answer is shared for HEALTH_REUSE_MS (250 ms), so the change shows within a moment.
      const down = await eventually(() => t.get('/health'), (r) => r.status === 503);
      assert.equal(down.status, 503);
      assert.equal(down.body.status, 'unavailable');
      const provision = await t.post('/provision', { app_name: 'while_down', admin_key: t.stack.adminKey });
      assert.equal(provision.status, 503);
      assert.equal(provision.body.message, 'the database is unavailable, retry later');
    } finally {
      await t.stack.startPostgres();
    }
    assert.equal((await eventually(() => t.get('/health'), (r) => r.status === 200)).status, 200);
    assert.equal((await t.post('/provision', { app_name: 'after_outage', admin_key: t.stack.adminKey })).status, 201);
  });
});

describe('nginx when the service is down', () => {
  it('answers 503 with its request id in the body and the header', async () => {
    await t.stack.stopService();
    try {
      const response = await t.post('/provision', { app_name: 'while_away', admin_key: 'sk_whatever' });
      assert.equal(response.status, 503);
      const requestId = response.headers.get('x-request-id');
      assert.match(String(requestId), /^[0-9a-f]{32}$/);
      assert.deepEqual(response.body, {
        statusCode: 503,
        error: 'Service Unavailable',
        message: 'the provisioning service is not reachable, retry shortly',
        request_id: requestId,
      });
      const logs = await eventually(async () => t.allLogs(), (text) => text.includes(`"request_id":"${requestId}"`));
      assert.ok(logs.includes(`"request_id":"${requestId}"`), "and nginx's access log has it");
    } finally {
      await t.stack.startService();
    }
  });
});

describe('logs', () => {
  it('print the admin key exactly once, and never a password or connection string', async () => {
    const keyLines = t.serviceLines.filter((line) => line.includes(t.stack.adminKey));
    assert.equal(keyLines.length, 1);
    assert.match(keyLines[0]!, /ADMIN KEY: sk_/);
    const app = await t.provision('log_check');
    const password = new URL(app.connection_string).password;
    const rotated = await t.admin('POST', '/apps/log_check/rotate');
    assert.equal(rotated.status, 200);
    const logs = t.allLogs();
    for (const secret of [password, String(rotated.body.password)]) assert.ok(!logs.includes(secret), 'no app password in any log');
    assert.ok(!logs.includes('postgres://'), 'no connection string in any log');
    assert.ok(!logs.includes('postgresql://'), 'no database_url in any log');
    assert.ok(!logs.includes(t.stack.postgresPassword), 'no superuser password in any log');
    assert.equal(logs.split(t.stack.adminKey).length - 1, 1, 'the admin key appears once in all logs together');
    assert.ok(t.serviceLines.some((line) => line.includes('"url":"/provision"') && line.includes('"statusCode":201')), 'one line per request');
  });
});
