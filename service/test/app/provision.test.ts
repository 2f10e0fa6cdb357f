// POST /provision in process, against a real Postgres (its ready pool on, as by default), with real sessions opened
// from the connection strings exactly as returned; and the basics of isolation. Without a ready pool:
// provision-on-demand.test.ts. nginx, health, and the logs of the running stack: test/stack/provision.test.ts.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { buildTestApp, type TestApp } from '../helpers/app.js';
import { asApp, withAuthority, withDatabase } from '../helpers/app-sessions.js';
import { catalogOf } from '../helpers/catalog.js';
import { eventually, rejectionOf } from '../helpers/conditions.js';

let t: TestApp;
before(async () => {
  t = await buildTestApp();
});
after(async () => {
  await t?.close();
});
const catalog = catalogOf(() => t);

describe('POST /provision', () => {
  it('creates an app whose connection string works as returned, and which the app can fully use', async () => {
    const response = await t.post('/provision', { app_name: 'shop', admin_key: t.adminKey });
    assert.equal(response.status, 201);
    const { connection_string, database_url, database, username, password, host, port } = response.body as Record<string, string>;
    // No pooler in this tier (test/stack/pooler.test.ts has it): the door is Postgres, over TLS.
    assert.match(connection_string!, /^postgres:\/\/app_shop_user:[A-Za-z0-9]{32}@127\.0\.0\.1:\d+\/app_shop\?sslmode=require$/);
    assert.equal(response.body.pooling, 'none');
    assert.equal(response.body.sslmode, 'require');
    assert.equal(database, 'app_shop');
    assert.equal(username, 'app_shop_user');
    assert.equal(host, '127.0.0.1');
    assert.equal(Number(port), t.postgres.port);
    // The same login for SQLAlchemy (which refuses postgres://) and in parts, for drivers that take them so.
    assert.deepEqual(Object.keys(response.body).sort(), ['app_name', 'connection_string', 'database', 'database_url', 'host', 'password', 'pooling', 'port', 'sslmode', 'username']);
    assert.equal(database_url, connection_string!.replace(/^postgres:\/\//, 'postgresql://'));
    assert.equal(password, new URL(connection_string!).password);
    const ssl = { ca: readFileSync(t.postgres.postgres.tlsFiles().caCertificate, 'utf8') };
    for (const login of [withAuthority(database_url!), { host, port: Number(port), database, user: username, password, ssl }]) {
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
    await t.provision('limited');
    const role = (await catalog.roleAttributes('app_limited_user'))!;
    assert.deepEqual(
      { ...role, rolconfig: undefined },
      { rolsuper: false, rolcreatedb: false, rolcreaterole: false, rolreplication: false, rolbypassrls: false, rolinherit: false, rolcanlogin: true, rolconnlimit: 10, rolconfig: undefined, in_group: true },
    );
    const settings = role.rolconfig ?? [];
    assert.ok(settings.includes('temp_file_limit=1GB'));
    // The default timeouts (SECURITY.md, promise 4), on the role itself: no statement timeout, 10 minutes idle in a transaction.
    assert.ok(settings.includes('statement_timeout=0'), settings.join(' '));
    assert.ok(settings.includes('idle_in_transaction_session_timeout=10min'), settings.join(' '));
    const acl = String(await catalog.databaseAcl('app_limited'));
    assert.doesNotMatch(acl, /(^|[{,])=/, 'PUBLIC has no privilege on the app database');
    assert.match(acl, /app_limited_user=CTc\//);
  });

  it('stores only a SCRAM verifier, never the password', async () => {
    const app = await t.provision('verifier_check');
    const password = new URL(app.connection_string).password;
    const stored = String(await catalog.storedPassword('app_verifier_check_user'));
    assert.match(stored, /^SCRAM-SHA-256\$4096:/);
    assert.ok(!stored.includes(password));
  });

  it('answers 409 for an existing app and changes nothing', async () => {
    const first = await t.provision('dupe');
    const again = await t.post('/provision', { app_name: 'dupe', admin_key: t.adminKey });
    assert.equal(again.status, 409);
    assert.equal(again.body.message, "app 'dupe' already exists");
    await asApp(first.connection_string, async (app) => assert.equal((await app.query('SELECT 1 AS one')).rows[0].one, 1));
  });

  it('gives exactly one 201 to concurrent requests for one name, and 409 to the rest', async () => {
    const responses = await Promise.all(Array.from({ length: 12 }, () => t.post('/provision', { app_name: 'race', admin_key: t.adminKey })));
    const statuses = responses.map((r) => r.status).sort();
    assert.deepEqual(statuses, [201, ...Array(11).fill(409)]);
    const winner = responses.find((r) => r.status === 201)!;
    await asApp(winner.body.connection_string as string, async (app) => assert.equal((await app.query('SELECT current_user AS u')).rows[0].u, 'app_race_user'));
  });

  it('accepts the admin key as a Bearer token too', async () => {
    const response = await t.post('/provision', { app_name: 'bearer' }, { authorization: `Bearer ${t.adminKey}` });
    assert.equal(response.status, 201);
  });

  it('answers 401 for a wrong key and creates nothing', async () => {
    const before = await catalog.appRoleNames();
    for (const key of ['sk_wrong', `${t.adminKey}x`, t.adminKey.slice(0, -1), '']) {
      const response = await t.post('/provision', { app_name: 'intruder', admin_key: key });
      assert.equal(response.status, 401, key);
      assert.equal(response.body.message, 'invalid admin key');
    }
    assert.equal((await t.post('/provision', { app_name: 'intruder' }, { authorization: 'Bearer sk_nope' })).status, 401);
    assert.deepEqual(await catalog.appRoleNames(), before);
  });

  it('answers 400 with a message for bad input, and creates nothing', async () => {
    const rolesBefore = await catalog.appRoleNames();
    const databasesBefore = await catalog.appDatabaseNames();
    const key = t.adminKey;
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
    assert.deepEqual(await catalog.appRoleNames(), rolesBefore);
    assert.deepEqual(await catalog.appDatabaseNames(), databasesBefore);
  });

  it("refuses a name whose database exists on the ready pool's path: the hand-over is rolled back, the prepared set kept", async () => {
    // This stack's ready pool (READY_POOL_SIZE 5, the default) hands over a prepared set whenever it has one, so
    // the on-demand undo is tested on a stack without a pool (below); here, the hand-over's own rollback.
    const ready = await eventually(() => catalog.readySetIds(), (ids) => ids.length > 0, 60_000);
    assert.ok(ready.length > 0, 'the ready pool has a set ready within a minute');
    await t.superuser((db) => db.query('CREATE DATABASE app_pooled_blocked'));
    const from = t.serviceLines.length;
    const response = await t.post('/provision', { app_name: 'pooled_blocked', admin_key: t.adminKey });
    assert.equal(response.status, 409);
    assert.equal(response.body.message, "app 'pooled_blocked' already exists");
    const roles = await catalog.appRoleNames();
    assert.ok(!roles.includes('app_pooled_blocked_user') && !roles.includes('app_pooled_blocked'), 'no role renamed to the app');
    assert.deepEqual(await catalog.registryStates('pooled_blocked'), [], 'nothing registered');
    // The path: the hand-over's transaction was rolled back, so every set that was ready still is, its roles
    // still prepared ones; and the on-demand undo did not run.
    assert.deepEqual((await catalog.readySetIds()).filter((id) => ready.includes(id)), ready, 'no prepared set was used up');
    const prepared = (await catalog.existingRoles(ready.map((id) => `pgprov_ready_${id}_user`))).length;
    assert.equal(prepared, ready.length);
    assert.ok(!t.serviceLines.slice(from).some((line) => line.includes('provisioning failed; the steps already done were undone')), 'the on-demand path did not run');
    await t.superuser((db) => db.query('DROP DATABASE app_pooled_blocked'));
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
    const clash = await t.post('/provision', { app_name: 'fam_user', admin_key: t.adminKey });
    assert.equal(clash.status, 409);
    assert.equal(clash.body.message, "app_name 'fam_user' cannot be used while app 'fam' exists: Postgres would give both a role named app_fam_user");
    await t.provision('fam_user_user');
    assert.equal((await catalog.appRoleNames()).filter((r) => r.startsWith('app_fam')).join(' '), 'app_fam app_fam_user app_fam_user_user app_fam_user_user_user');
  });
});
