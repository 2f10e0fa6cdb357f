// Companion databases under attack (SECURITY.md, promise 1 and 3, extended to companions): another app's login is
// refused at a companion by both locks, each tested with the other opened, through the pooler, directly and over the
// server's own socket; the app cannot open its companion to anyone; no tenant can make a database or role named like
// a companion yet to come; a companion is deleted whatever its tenant holds; a rotation leaves no pooled client of
// the old password in a companion; an app's extra credentials reach its main database only; and an app named like
// another's companion reaches nothing of it.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { asApp, connectAs, DOORS, doorString, withDatabase, withLogin, type AppDoors, type Door } from '../helpers/app-sessions.js';
import { catalogOf } from '../helpers/catalog.js';
import { rejectionOf } from '../helpers/conditions.js';
import { type ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let t: TestStack;
type App = ProvisionedApp & AppDoors & { password: string; username: string };
let owner: App;
let other: App;

before(async () => {
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', READY_POOL_SIZE: '0', RECONCILE_INTERVAL_MS: '1000' } });
  owner = (await t.provision('owner_a')) as App;
  other = (await t.provision('other_b')) as App;
  assert.equal((await t.admin('POST', '/apps/owner_a/databases', { name: 'test' })).status, 201);
  await asApp(companion(owner, 'test'), (c) => c.query("CREATE TABLE secrets AS SELECT 'a-companion-private' AS v"));
});
after(async () => {
  await t?.stop();
});
const catalog = catalogOf(() => t);

/** `app`'s own connection string for `door`, pointed at `appName`'s companion `name`. */
function companion(app: App, name: string, door: Door = 'pooled', appName = app.app_name): string {
  return withDatabase(doorString(app, door), `app_${appName}-${name}`);
}

/** Postgres's own refusal by pg_hba.conf (directly, or over its socket). */
const PG_HBA_REFUSAL = /pg_hba\.conf rejects|no pg_hba\.conf entry/;
/** PgBouncer's: pgbouncer-hba.conf names, for each login, the databases it may reach; any other is rejected before the password exchange. */
const DOOR_REFUSAL = /^login rejected$/;
const refusalAt = (door: Door) => (door === 'direct' ? PG_HBA_REFUSAL : DOOR_REFUSAL);

async function assertRefused(connectionString: string, expected: RegExp, what: string): Promise<void> {
  const err = await rejectionOf(asApp(connectionString, (c) => c.query('SELECT 1')));
  assert.match(err.message, expected, what);
}

/** A login over the server's own Unix socket, as the service's agents log in: never admitted for an app role. */
async function socketLogin(app: App, database: string): Promise<Error> {
  const client = new pg.Client({ host: t.stack.paths.socketDir, port: t.stack.settings.pgPort, user: app.username, password: app.password, database });
  client.on('error', () => {});
  try {
    return await rejectionOf(client.connect());
  } finally {
    await client.end().catch(() => {});
  }
}

const sqlError = (promise: Promise<unknown>) => rejectionOf(promise).then((err) => err.code);

describe("another app's login cannot reach a companion", () => {
  for (const { door, title } of DOORS) {
    it(`is refused at it, while the owner gets in (${title})`, async () => {
      const own = await asApp(companion(owner, 'test', door), async (c) => (await c.query('SELECT current_user AS u, current_database() AS d, (SELECT v FROM secrets) AS v')).rows[0]);
      assert.deepEqual(own, { u: 'app_owner_a_user', d: 'app_owner_a-test', v: 'a-companion-private' });
      await assertRefused(companion(other, 'test', door, 'owner_a'), refusalAt(door), 'B at A\'s companion');
    });

    it(`is refused by pg_hba.conf even when the privilege lock is opened (first lock alone; ${title})`, async () => {
      await t.superuser((db) => db.query('GRANT CONNECT ON DATABASE "app_owner_a-test" TO PUBLIC'));
      try {
        await assertRefused(companion(other, 'test', door, 'owner_a'), refusalAt(door), 'B at A\'s companion, open to PUBLIC');
      } finally {
        await t.superuser((db) => db.query('REVOKE CONNECT ON DATABASE "app_owner_a-test" FROM PUBLIC'));
      }
    });

    it(`is refused by privileges even when the pg_hba.conf lock is passed (second lock alone; ${title})`, async () => {
      // B made a member of the companion's access role passes `samerole`; CONNECT still stops it. The door's lines
      // come from names (a login's own app's companions), never from memberships: B stays refused there, even
      // after the door has been rewritten since (another app provisioned).
      await t.superuser((db) => db.query('GRANT "app_owner_a-test" TO app_other_b_user'));
      try {
        await t.provision(`rewrite_${door}`);
        const refusal = door === 'direct' ? /permission denied for database "app_owner_a-test"/ : DOOR_REFUSAL;
        await assertRefused(companion(other, 'test', door, 'owner_a'), refusal, 'B, a member of the access role');
      } finally {
        await t.superuser((db) => db.query('REVOKE "app_owner_a-test" FROM app_other_b_user'));
      }
    });
  }

  it("is refused over the server's own socket, as the owner is (only the service's agents log in there)", async () => {
    assert.match((await socketLogin(other, 'app_owner_a-test')).message, PG_HBA_REFUSAL);
    assert.match((await socketLogin(owner, 'app_owner_a-test')).message, PG_HBA_REFUSAL);
  });
});

describe("an app's extra credentials", () => {
  it('reach its main database only, never its companions (both doors)', async () => {
    for (const access of ['full', 'read_only'] as const) {
      const made = await t.admin('POST', '/apps/owner_a/credentials', { name: `cred_${access}`, access });
      assert.equal(made.status, 201, made.text);
      const credential = made.body as AppDoors & Record<string, unknown>;
      for (const { door } of DOORS) {
        const main = await asApp(doorString(credential, door), async (c) => (await c.query('SELECT current_database() AS d')).rows[0].d);
        assert.equal(main, 'app_owner_a', `${access} at its app's database (${door})`);
        // Directly: pg_hba.conf (a read_only one is no member of the companion's access role), or the privilege
        // lock (a full one is, through the app's login role, but inherits none of its CONNECT).
        const refusal = door === 'direct' ? /pg_hba\.conf rejects|no pg_hba\.conf entry|permission denied for database "app_owner_a-test"/ : DOOR_REFUSAL;
        await assertRefused(withDatabase(doorString(credential, door), 'app_owner_a-test'), refusal, `${access} at the companion (${door})`);
      }
    }
  });
});

describe('a tenant cannot open a companion, or take a future one\'s name', () => {
  for (const { door, title } of DOORS) {
    it(`cannot grant CONNECT on its companion to another app, nor own it (${title})`, async () => {
      await asApp(companion(owner, 'test', door), async (c) => {
        await c.query('GRANT CONNECT ON DATABASE "app_owner_a-test" TO PUBLIC'); // "no privileges were granted": A is not the owner
        await c.query('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE "app_owner_a-test" TO app_other_b_user');
        assert.equal(await sqlError(c.query('ALTER DATABASE "app_owner_a-test" OWNER TO app_owner_a_user')), '42501');
        assert.equal(await sqlError(c.query('GRANT "app_owner_a-test" TO app_other_b_user')), '42501');
        assert.equal(await sqlError(c.query('REVOKE "app_owner_a-test" FROM app_owner_a_user')), '42501');
        assert.equal(await sqlError(c.query("ALTER DATABASE \"app_owner_a-test\" SET log_statement = 'all'")), '42501');
      });
      assert.equal(await catalog.databaseAcl('app_owner_a-test'), '{postgres=CTc/postgres,app_owner_a_user=CTc/postgres}');
      await assertRefused(companion(other, 'test', door, 'owner_a'), refusalAt(door), 'B after A\'s grants');
    });

    it(`cannot make a database or role named like a companion yet to come (no CREATEDB, no CREATEROLE; ${title})`, async () => {
      for (const app of [owner, other]) {
        await asApp(doorString(app, door), async (c) => {
          for (const name of [`app_owner_a-future_${door}`, `app_${app.app_name}-mine_${door}`]) {
            assert.equal(await sqlError(c.query(`CREATE DATABASE "${name}"`)), '42501', `${app.app_name}: CREATE DATABASE ${name}`);
            assert.equal(await sqlError(c.query(`CREATE ROLE "${name}"`)), '42501', `${app.app_name}: CREATE ROLE ${name}`);
          }
        });
      }
      assert.deepEqual(await catalog.databasesLike('app\\_%-future%'), []);
      assert.deepEqual(await catalog.rolesLike('app\\_%-future%'), []);
      const made = await t.admin('POST', '/apps/owner_a/databases', { name: `future_${door}` });
      assert.equal(made.status, 201, made.text);
      assert.equal((await t.admin('DELETE', `/apps/owner_a/databases/future_${door}`)).status, 200);
    });
  }
});

describe('deleting a companion whatever its tenant holds', () => {
  it('completes while the tenant holds sessions and locks in it (both doors) and has granted to its access role while holding that table', async () => {
    assert.equal((await t.admin('POST', '/apps/owner_a/databases', { name: 'doomed' })).status, 201);
    const sessions: pg.Client[] = [];
    try {
      for (const { door } of DOORS) {
        const inside = await connectAs(companion(owner, 'doomed', door));
        sessions.push(inside);
        await inside.query(`CREATE TABLE held_${door} (v int); BEGIN; LOCK TABLE held_${door} IN ACCESS EXCLUSIVE MODE`);
      }
      // In its own database: a grant to the companion's access role (which DROP ROLE must undo there), on a table
      // the tenant keeps locked, in a transaction it never ends.
      const main = await connectAs(doorString(owner, 'direct'));
      sessions.push(main);
      await main.query('CREATE TABLE grantor (v int); GRANT SELECT ON grantor TO "app_owner_a-doomed"');
      await main.query('CREATE POLICY p ON grantor TO "app_owner_a-doomed" USING (true)');
      await main.query('BEGIN; LOCK TABLE grantor IN ACCESS EXCLUSIVE MODE');
      const deleted = await t.admin('DELETE', '/apps/owner_a/databases/doomed');
      assert.equal(deleted.status, 200, deleted.text);
      assert.deepEqual(await catalog.existingDatabases(['app_owner_a-doomed']), []);
      assert.deepEqual(await catalog.existingRoles(['app_owner_a-doomed']), []);
    } finally {
      for (const session of sessions) await session.end().catch(() => {});
    }
    // The app's own database is whole: its table is there, without the grant.
    const left = await asApp(owner.connection_string, async (c) => (await c.query("SELECT relacl::text AS acl FROM pg_class WHERE relname = 'grantor'")).rows[0].acl);
    assert.doesNotMatch(String(left), /doomed/);
  });
});

describe('a rotation and companions', () => {
  it('leaves no pooled client of the old password in a companion, and the new password reaches it', async () => {
    const app = (await t.provision('rotating')) as App;
    assert.equal((await t.admin('POST', '/apps/rotating/databases', { name: 'pooled' })).status, 201);
    const old = await connectAs(companion(app, 'pooled'));
    try {
      await old.query('SELECT 1');
      const rotated = await t.admin('POST', '/apps/rotating/rotate');
      assert.equal(rotated.status, 200, rotated.text);
      // The new password reaches the companion, and leaves a server connection in its pool, opened with it…
      const fresh = withDatabase(withLogin(doorString(app, 'pooled'), app.username, String(rotated.body.password)), 'app_rotating-pooled');
      assert.equal(await asApp(fresh, async (c) => (await c.query('SELECT current_database() AS d')).rows[0].d), 'app_rotating-pooled');
      // …which must not serve the client the old password logged in: the door ended it (KILL).
      const after = await old.query('SELECT current_user').then(
        () => 'served',
        () => 'refused',
      );
      assert.equal(after, 'refused');
      await assertRefused(companion(app, 'pooled'), /password authentication failed|SASL|login rejected/, 'the old password');
    } finally {
      await old.end().catch(() => {});
    }
  });
});

describe('an app named like another\'s companion', () => {
  it('reaches nothing of it: shop (companions test and user) beside shop_test; shop_user cannot exist', async () => {
    const shop = (await t.provision('shop')) as App;
    const shopTest = (await t.provision('shop_test')) as App;
    const refused = await t.post('/provision', { app_name: 'shop_user', admin_key: t.adminKey });
    assert.equal(refused.status, 409, 'shop_user collides with shop (SECURITY.md, promise 3), companions or not');
    for (const name of ['test', 'user']) assert.equal((await t.admin('POST', '/apps/shop/databases', { name })).status, 201);
    assert.equal((await t.admin('POST', '/apps/shop_test/databases', { name: 'test' })).status, 201);
    for (const { door } of DOORS) {
      // Each reaches its own…
      for (const [app, database] of [[shop, 'app_shop-test'], [shop, 'app_shop-user'], [shopTest, 'app_shop_test'], [shopTest, 'app_shop_test-test']] as const) {
        const d = await asApp(withDatabase(doorString(app, door), database), async (c) => (await c.query('SELECT current_database() AS d')).rows[0].d);
        assert.equal(d, database, `${app.app_name} at ${database} (${door})`);
      }
      // …and none of the other's.
      for (const [app, database] of [[shopTest, 'app_shop-test'], [shopTest, 'app_shop-user'], [shop, 'app_shop_test'], [shop, 'app_shop_test-test']] as const) {
        await assertRefused(withDatabase(doorString(app, door), database), refusalAt(door), `${app.app_name} at ${database} (${door})`);
      }
    }
    // Deleting shop takes its companions only.
    assert.equal((await t.admin('DELETE', '/apps/shop?backup=false')).status, 200);
    assert.deepEqual(await catalog.databasesLike('app\\_shop%'), ['app_shop_test', 'app_shop_test-test']);
    assert.deepEqual(((await t.admin('GET', '/apps/shop_test/databases')).body.databases as Array<{ name: string }>).map((d) => d.name), ['test']);
  });
});
