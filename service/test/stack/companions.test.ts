// Companion databases (POST/GET /apps/:name/databases, DELETE /apps/:name/databases/:database_name) against the
// real stack: made empty or as a copy of the app's database ("branch"), reached by the app's own login with the
// password it already has, through the pooler and directly, as an app would; listed, counted in the app's size,
// deleted, left alone by a restore, removed with the app. Attacks on them: hostile-companions.test.ts; crashes in
// the middle of each step: crash-companions.test.ts.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { asApp, connectAs, DOORS, doorString, withLogin, type AppDoors, type Door } from '../helpers/app-sessions.js';
import { catalogOf } from '../helpers/catalog.js';
import { eventually, rejectionOf } from '../helpers/conditions.js';
import { type ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let t: TestStack;
const MAX_COMPANIONS = 3;

before(async () => {
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', READY_POOL_SIZE: '0', APP_MAX_COMPANION_DATABASES: String(MAX_COMPANIONS) } });
});
after(async () => {
  await t?.stop();
});
const catalog = catalogOf(() => t);

type App = ProvisionedApp & AppDoors & { password: string; username: string };
type Made = AppDoors & Record<string, unknown>;

const provision = async (name: string) => (await t.provision(name)) as App;

/** A companion's connection string for `door`, with the app's own password put in, as the app would. */
const companionString = (app: App, made: Made, door: Door = 'pooled') => withLogin(doorString(made, door), app.username, app.password);

async function makeCompanion(appName: string, body: Record<string, unknown>): Promise<Made> {
  const response = await t.admin('POST', `/apps/${appName}/databases`, body);
  assert.equal(response.status, 201, response.text);
  return response.body as Made;
}

const whoAmI = (connectionString: string) =>
  asApp(connectionString, async (c) => (await c.query('SELECT current_user AS u, current_database() AS d')).rows[0] as { u: string; d: string });

describe('a companion database', () => {
  let app: App;
  let made: Made;

  before(async () => {
    app = await provision('comp');
    made = await makeCompanion('comp', { name: 'test' });
  });

  it('is answered with 201 and how to connect, through the pooler and directly, without a password', () => {
    assert.deepEqual(Object.keys(made).sort(), [
      'app_name', 'connection_string', 'copy_of', 'created_at', 'database', 'database_url', 'direct_connection_string', 'host', 'name', 'pooling', 'port',
      'size_bytes', 'sslmode', 'username',
    ]);
    assert.equal(made.app_name, 'comp');
    assert.equal(made.name, 'test');
    assert.equal(made.database, 'app_comp-test');
    assert.equal(made.username, 'app_comp_user');
    assert.equal(made.pooling, 'transaction');
    assert.equal(made.copy_of, null);
    assert.ok(Math.abs(Date.parse(String(made.created_at)) - Date.now()) < 120_000, String(made.created_at));
    // The app's own strings, with its database swapped and its password left out.
    const own = new URL(app.connection_string);
    for (const [key, scheme] of [['connection_string', 'postgres:'], ['database_url', 'postgresql:'], ['direct_connection_string', 'postgres:']] as const) {
      const url = new URL(String(made[key]));
      assert.equal(url.protocol, scheme, key);
      assert.equal(url.username, 'app_comp_user', key);
      assert.equal(url.password, '', `${key} carries no password`);
      assert.equal(url.pathname, '/app_comp-test', key);
      assert.equal(url.searchParams.get('sslmode'), own.searchParams.get('sslmode'), key);
    }
    assert.equal(new URL(String(made.connection_string)).port, own.port, 'the pooler, as the app\'s own string');
    assert.ok(!made.text, 'nothing else');
    assert.ok(!JSON.stringify(made).includes(app.password), 'the answer holds no password');
  });

  for (const { door, title } of DOORS) {
    it(`is reached by the app's own login with its own password (${title})`, async () => {
      assert.deepEqual(await whoAmI(companionString(app, made, door)), { u: 'app_comp_user', d: 'app_comp-test' });
      await asApp(companionString(app, made, door), async (c) => {
        await c.query(`CREATE TABLE IF NOT EXISTS made_${door} (v text); INSERT INTO made_${door} VALUES ('${door}')`);
        await c.query('CREATE SCHEMA IF NOT EXISTS own_schema; CREATE TEMP TABLE scratch (v int)');
      });
    });
  }

  it('is owned by the superuser, with CONNECT, CREATE and TEMPORARY for the app only, and its public schema owned by the app', async () => {
    const facts = await t.superuser(async (db) => {
      const database = (await db.query(`SELECT pg_get_userbyid(datdba) AS owner, datacl::text AS acl FROM pg_database WHERE datname = 'app_comp-test'`)).rows[0];
      const role = (await db.query(`SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolinherit FROM pg_roles WHERE rolname = 'app_comp-test'`)).rows[0];
      const members = (await db.query(`SELECT r.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member WHERE g.rolname = 'app_comp-test'`)).rows;
      return { database, role, members };
    });
    assert.deepEqual(facts, {
      database: { owner: 'postgres', acl: '{postgres=CTc/postgres,app_comp_user=CTc/postgres}' },
      role: { rolcanlogin: false, rolsuper: false, rolcreatedb: false, rolcreaterole: false, rolinherit: false },
      members: [{ rolname: 'app_comp_user' }],
    });
    const schemaOwner = await t.superuser(async (db) => (await db.query(`SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = 'public'`)).rows[0].owner, 'app_comp-test');
    assert.equal(schemaOwner, 'app_comp_user');
  });

  it('is listed, with its size and creation time, and named in GET /apps/:name, whose size counts it in', async () => {
    const listed = await t.admin('GET', '/apps/comp/databases');
    assert.equal(listed.status, 200);
    const databases = listed.body.databases as Array<Record<string, unknown>>;
    assert.deepEqual(databases.map((d) => [d.name, d.database]), [['test', 'app_comp-test']]);
    assert.deepEqual(Object.keys(databases[0]!).sort(), ['app_name', 'created_at', 'database', 'name', 'size_bytes']);
    assert.ok(Number(databases[0]!.size_bytes) > 1_000_000);
    assert.equal(databases[0]!.created_at, made.created_at);
    const detail = await t.admin('GET', '/apps/comp');
    assert.deepEqual(detail.body.databases, [{ name: 'test', database: 'app_comp-test' }]);
    // The app's size is its database's and its companion's together (what a storage quota sums).
    const sizes = await t.superuser(async (db) =>
      (await db.query<{ main: number; companion: number }>(`SELECT pg_database_size('app_comp')::float8 AS main, pg_database_size('app_comp-test')::float8 AS companion`)).rows[0]!,
    );
    const size = Number(detail.body.size_bytes);
    assert.ok(Math.abs(size - (sizes.main + sizes.companion)) < 1_000_000, `${size} is about ${sizes.main} + ${sizes.companion}`);
    const listedApps = await eventually(
      () => t.admin('GET', '/apps'),
      (r) => Number((r.body.apps as Array<Record<string, unknown>>).find((a) => a.app_name === 'comp')?.size_bytes) > sizes.main + 1_000_000,
    );
    assert.ok(Number((listedApps.body.apps as Array<Record<string, unknown>>).find((a) => a.app_name === 'comp')?.size_bytes) > sizes.main + 1_000_000, 'GET /apps counts it in');
  });

  it('refuses a second one of the same name (409), one for an unknown app (404), and bad names (400), changing nothing', async () => {
    const before = await catalog.everythingButReadySets();
    const duplicate = await t.admin('POST', '/apps/comp/databases', { name: 'test' });
    assert.equal(duplicate.status, 409);
    assert.equal(duplicate.body.message, "app 'comp' already has a database named 'test'");
    assert.equal((await t.admin('POST', '/apps/nobody_here/databases', { name: 'test' })).status, 404);
    assert.equal((await t.admin('GET', '/apps/nobody_here/databases')).status, 404);
    const bad: Array<[unknown, RegExp]> = [
      [{ name: 'Test' }, /lowercase/],
      [{ name: 'a-b' }, /lowercase/],
      [{ name: 'a.b' }, /lowercase/],
      [{ name: '' }, /at least 1/],
      [{ name: 'x'.repeat(21) }, /at most 20/],
      [{ name: 'main' }, /cannot be 'main'/],
      [{ name: 'ok', copy_of: 'Main' }, /lowercase/],
      [{ name: 'ok', extra: 1 }, /unrecognized|extra/i],
      [{}, /name/],
      [[1], /JSON object/],
      [{ name: 7 }, /must be a string/],
    ];
    for (const [body, message] of bad) {
      const response = await t.admin('POST', '/apps/comp/databases', body);
      assert.equal(response.status, 400, JSON.stringify(body));
      assert.match(String(response.body.message), message, JSON.stringify(body));
    }
    assert.equal((await t.admin('POST', '/apps/comp/databases', { name: 'ok', copy_of: 'nothing' })).body.message, "app 'comp' has no database named 'nothing'");
    assert.equal((await t.admin('DELETE', '/apps/comp/databases/nothing')).status, 404);
    assert.equal((await t.admin('DELETE', '/apps/comp/databases/NO')).status, 400);
    assert.deepEqual(await catalog.everythingButReadySets(), before);
  });

  it(`refuses more than APP_MAX_COMPANION_DATABASES (${MAX_COMPANIONS}) with 409 and says which setting`, async () => {
    await provision('limited');
    for (let i = 1; i <= MAX_COMPANIONS; i++) await makeCompanion('limited', { name: `c${i}` });
    const refused = await t.admin('POST', '/apps/limited/databases', { name: 'one_more' });
    assert.equal(refused.status, 409);
    assert.match(String(refused.body.message), /has 3 companion databases, the most APP_MAX_COMPANION_DATABASES allows: delete one first/);
    assert.equal((await t.admin('DELETE', '/apps/limited/databases/c1')).status, 200);
    await makeCompanion('limited', { name: 'one_more' });
  });
});

describe('a branch (copy_of)', () => {
  let app: App;

  before(async () => {
    app = await provision('branched');
    await asApp(app.connection_string, (c) =>
      c.query(`CREATE TABLE orders (id int PRIMARY KEY, item text); INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 1000) g;
               CREATE SCHEMA reports; CREATE VIEW reports.totals AS SELECT count(*) AS n FROM orders`),
    );
  });

  it('copies the app\'s database, its data, schemas and owners, with privileges set as for an empty one', async () => {
    const made = await makeCompanion('branched', { name: 'shadow', copy_of: 'main' });
    assert.equal(made.copy_of, 'main');
    const copied = await asApp(companionString(app, made), async (c) => ({
      count: (await c.query('SELECT n FROM reports.totals')).rows[0].n,
      owner: (await c.query("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'")).rows[0].tableowner,
    }));
    assert.deepEqual(copied, { count: '1000', owner: 'app_branched_user' });
    // The copy and the source go their own ways.
    await asApp(companionString(app, made), (c) => c.query('DELETE FROM orders WHERE id > 10'));
    assert.equal(await asApp(app.connection_string, async (c) => (await c.query('SELECT count(*)::int AS n FROM orders')).rows[0].n), 1000);
    assert.equal(await catalog.databaseAcl('app_branched-shadow'), '{postgres=CTc/postgres,app_branched_user=CTc/postgres}');
    assert.equal(await catalog.databaseAllowsConnections('app_branched'), true, 'the source takes connections again');
  });

  it('would not carry the source\'s privileges by itself: Postgres gives a copy the default ones (hence the hand-over)', async () => {
    // Said by the superuser, outside the service: CREATE DATABASE … TEMPLATE takes no ACL from its source.
    await t.superuser(async (db) => {
      await db.query('CREATE DATABASE acl_source');
      await db.query('REVOKE ALL ON DATABASE acl_source FROM PUBLIC; GRANT CONNECT, CREATE, TEMPORARY ON DATABASE acl_source TO app_branched_user');
      await db.query('CREATE DATABASE acl_copy TEMPLATE acl_source');
      try {
        const { rows } = await db.query(`SELECT datname, datacl::text AS acl FROM pg_database WHERE datname IN ('acl_source', 'acl_copy') ORDER BY 1`);
        assert.deepEqual(rows, [
          { datname: 'acl_copy', acl: null }, // null: the defaults, PUBLIC may CONNECT and make TEMPORARY tables
          { datname: 'acl_source', acl: '{postgres=CTc/postgres,app_branched_user=CTc/postgres}' },
        ]);
      } finally {
        await db.query('DROP DATABASE acl_copy');
        await db.query('DROP DATABASE acl_source');
      }
    });
  });

  it('copies another companion, and refuses a source that is not the app\'s', async () => {
    const made = await makeCompanion('branched', { name: 'shadow_copy', copy_of: 'shadow' });
    assert.equal(await asApp(companionString(app, made, 'direct'), async (c) => (await c.query('SELECT count(*)::int AS n FROM orders')).rows[0].n), 10);
    const other = await provision('stranger');
    await makeCompanion('stranger', { name: 'mine' });
    const refused = await t.admin('POST', '/apps/branched/databases', { name: 'theirs', copy_of: 'mine' });
    assert.equal(refused.status, 404, 'another app\'s companion is no source');
    assert.ok(other);
  });

  it('ends the sessions in its source (directly and at the pooler) for the copy, and the pooled app carries on afterwards', async (context) => {
    const direct = await connectAs(doorString(app, 'direct'));
    const pooled = await connectAs(app.connection_string);
    try {
      await direct.query('SELECT 1');
      await pooled.query('SELECT 1');
      const from = t.serviceLines.length;
      const copy = await makeCompanion('branched', { name: 'window_copy', copy_of: 'main' });
      assert.equal(copy.copy_of, 'main');
      // The direct session was ended; the pooled client keeps its connection to PgBouncer, and its next
      // transactions run on new server connections once the source takes connections again.
      assert.match((await rejectionOf(direct.query('SELECT 1'))).message, /terminat|not queryable/);
      const after = await eventually(
        () => pooled.query('SELECT count(*)::int AS n FROM orders').then((r) => r.rows[0].n as number, () => undefined),
        (n) => n === 1000,
        10_000,
      );
      assert.equal(after, 1000);
      const line = await t.waitForServiceLine(/"source_closed_ms":\d+/, from);
      const closedMs = Number(/"source_closed_ms":(\d+)/.exec(line)![1]);
      context.diagnostic(`branch window: the source refused connections for ${closedMs} ms (a 1000-row database)`);
      assert.ok(closedMs >= 0);
    } finally {
      await direct.end().catch(() => {});
      await pooled.end().catch(() => {});
    }
  });
});

describe('deleting a companion', () => {
  it('ends its sessions (pooled and direct), drops it and its access role, and frees its name', async () => {
    const app = await provision('deleting');
    const made = await makeCompanion('deleting', { name: 'gone' });
    const direct = await connectAs(companionString(app, made, 'direct'));
    const pooled = await connectAs(companionString(app, made, 'pooled'));
    await direct.query('CREATE TABLE held (v int); BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE');
    await pooled.query('SELECT 1');
    try {
      const deleted = await t.admin('DELETE', '/apps/deleting/databases/gone');
      assert.equal(deleted.status, 200, deleted.text);
      assert.deepEqual(deleted.body, { app_name: 'deleting', deleted: 'gone', database: 'app_deleting-gone' });
      assert.deepEqual(await catalog.existingDatabases(['app_deleting-gone']), []);
      assert.deepEqual(await catalog.existingRoles(['app_deleting-gone']), []);
      await rejectionOf(direct.query('SELECT 1'));
      await rejectionOf(pooled.query('SELECT 1'));
      for (const { door } of DOORS) await rejectionOf(whoAmI(companionString(app, made, door)));
      assert.equal((await t.admin('DELETE', '/apps/deleting/databases/gone')).status, 404);
      assert.deepEqual((await t.admin('GET', '/apps/deleting/databases')).body, { databases: [] });
    } finally {
      await direct.end().catch(() => {});
      await pooled.end().catch(() => {});
    }
    const again = await makeCompanion('deleting', { name: 'gone' });
    assert.deepEqual(await whoAmI(companionString(app, again)), { u: 'app_deleting_user', d: 'app_deleting-gone' });
    // The app itself is untouched.
    assert.deepEqual(await whoAmI(app.connection_string), { u: 'app_deleting_user', d: 'app_deleting' });
  });
});

describe('companions and the app\'s own lifecycle', () => {
  it('are left alone by a restore of the app\'s database', async () => {
    const app = await provision('restoring');
    await asApp(app.connection_string, (c) => c.query("CREATE TABLE t AS SELECT 'backed up' AS v"));
    const backup = await t.admin('POST', '/apps/restoring/backups');
    const made = await makeCompanion('restoring', { name: 'kept' });
    await asApp(companionString(app, made), (c) => c.query("CREATE TABLE c AS SELECT 'companion data' AS v"));
    await asApp(app.connection_string, (c) => c.query("UPDATE t SET v = 'changed'"));
    const restored = await t.admin('POST', '/apps/restoring/restore', { file: backup.body.file });
    assert.equal(restored.status, 200, restored.text);
    assert.equal(await asApp(app.connection_string, async (c) => (await c.query('SELECT v FROM t')).rows[0].v), 'backed up');
    assert.equal(await asApp(companionString(app, made), async (c) => (await c.query('SELECT v FROM c')).rows[0].v), 'companion data');
    assert.deepEqual((await t.admin('GET', '/apps/restoring')).body.databases, [{ name: 'kept', database: 'app_restoring-kept' }]);
  });

  it('go with the app when it is deleted, sessions and all', async () => {
    const app = await provision('leaving');
    const one = await makeCompanion('leaving', { name: 'one' });
    await makeCompanion('leaving', { name: 'two', copy_of: 'one' });
    const session = await connectAs(companionString(app, one, 'direct'));
    try {
      const deleted = await t.admin('DELETE', '/apps/leaving?backup=false');
      assert.equal(deleted.status, 200, deleted.text);
    } finally {
      await session.end().catch(() => {});
    }
    assert.deepEqual(await catalog.databasesLike('app\\_leaving%'), []);
    assert.deepEqual(await catalog.rolesLike('app\\_leaving%'), []);
    // A new app of that name starts with none.
    await provision('leaving');
    assert.deepEqual((await t.admin('GET', '/apps/leaving/databases')).body, { databases: [] });
  });

  it('are named in the door\'s files for their app\'s login only, which PgBouncer parses without a warning', () => {
    const authDir = t.stack.pgbouncer!.paths.authDir;
    const hba = readFileSync(join(authDir, 'pgbouncer-hba.conf'), 'utf8');
    const databases = readFileSync(join(authDir, 'databases.ini'), 'utf8');
    assert.match(hba, /^hostssl app_comp,app_comp-test app_comp_user 0\.0\.0\.0\/0 scram-sha-256$/m);
    assert.deepEqual(hba.split('\n').filter((line) => line.includes('app_comp-test')).length, 2, 'two lines (IPv4, IPv6), both app_comp_user\'s');
    assert.match(databases, /^app_comp-test = host=\S+ port=\d+ dbname=app_comp-test$/m);
    const log = readFileSync(join(t.stack.paths.logs, 'pgbouncer.log'), 'utf8');
    assert.deepEqual(log.split('\n').filter((line) => /could not parse|syntax error|invalid command/i.test(line)), []);
  });
});
