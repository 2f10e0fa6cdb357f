// Extra credentials (POST/GET /apps/:name/credentials, …/:credential/rotate, DELETE …/:credential) against the real
// stack: each login connects with the strings the service returned, at both doors (the pooler and Postgres itself),
// as an app would. What a read_only credential can and cannot do, what a full one is, that each is held to the
// app's database by both locks, rotated and deleted on its own, kept by the app's own rotation and by a restore
// whatever the dump's code tries, and removed with the app.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { asApp, connectAs, DOORS, doorString, withDatabase, type AppDoors, type Door } from '../helpers/app-sessions.js';
import { catalogOf } from '../helpers/catalog.js';
import { rejectionOf } from '../helpers/conditions.js';
import { type ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

type App = ProvisionedApp & AppDoors;
type Login = AppDoors & { name: string; access: string; username: string; password: string; database: string; database_url: string };

let t: TestStack;
let owner: App;
let other: App;
let reader: Login;
let deployer: Login;
const MAX_CREDENTIALS = 3;

before(async () => {
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', READY_POOL_SIZE: '0', APP_MAX_CREDENTIALS: String(MAX_CREDENTIALS) } });
  owner = (await t.provision('owner')) as App;
  other = (await t.provision('other')) as App;
  await asApp(owner.connection_string, (c) => c.query("CREATE TABLE existing AS SELECT 'before' AS v; CREATE SEQUENCE counter"));
  await asApp(other.connection_string, (c) => c.query("CREATE TABLE private AS SELECT 'other-app' AS v"));
});
after(async () => {
  await t?.stop();
});

const catalog = catalogOf(() => t);
const sqlState = (promise: Promise<unknown>) => rejectionOf(promise).then((err) => err.code);
/** Runs `text` as `login` through `door`; returns the rows of the last statement. */
const as = async (login: AppDoors, door: Door, text: string) => asApp(doorString(login, door), async (c) => (await c.query(text)).rows);

async function makeCredential(appName: string, name: string, access: string): Promise<Login> {
  const made = await t.admin('POST', `/apps/${appName}/credentials`, { name, access });
  assert.equal(made.status, 201, made.text);
  return made.body as unknown as Login;
}

describe('a read_only credential', () => {
  before(async () => {
    reader = await makeCredential('owner', 'reader', 'read_only');
  });

  it('answers with the same connection shapes as provisioning, naming its own login at both doors', () => {
    assert.equal(reader.name, 'reader');
    assert.equal(reader.access, 'read_only');
    assert.equal(reader.username, 'app_owner.reader');
    assert.equal(reader.database, 'app_owner');
    for (const key of ['connection_string', 'database_url', 'direct_connection_string', 'password', 'host', 'port', 'sslmode', 'pooling']) assert.ok(key in reader, key);
    assert.equal(new URL(reader.connection_string).username, 'app_owner.reader');
    assert.equal(new URL(reader.database_url).protocol, 'postgresql:');
  });

  for (const { door, title } of DOORS) {
    it(`reads what the app has now and what it makes later, in public and in a new schema (${title})`, async () => {
      assert.deepEqual(await as(reader, door, 'SELECT current_user AS u, current_database() AS d'), [{ u: 'app_owner.reader', d: 'app_owner' }]);
      assert.deepEqual(await as(reader, door, 'SELECT v FROM existing'), [{ v: 'before' }]);
      const schema = `later_${door}`;
      await as(owner, door, `CREATE TABLE later_${door} AS SELECT 'after' AS v; CREATE SCHEMA ${schema}; CREATE TABLE ${schema}.inner_t AS SELECT 'deep' AS v; CREATE VIEW ${schema}.inner_v AS SELECT v FROM ${schema}.inner_t`);
      assert.deepEqual(await as(reader, door, `SELECT v FROM later_${door}`), [{ v: 'after' }]);
      assert.deepEqual(await as(reader, door, `SELECT v FROM ${schema}.inner_t`), [{ v: 'deep' }]);
      assert.deepEqual(await as(reader, door, `SELECT v FROM ${schema}.inner_v`), [{ v: 'deep' }]);
      assert.equal((await as(reader, door, 'SELECT last_value FROM counter')).length, 1, 'reads a sequence');
      assert.equal(await sqlState(as(reader, door, "SELECT nextval('counter')")), '42501', 'but cannot advance it');
    });

    it(`writes nothing and makes nothing, even with the read-only guard lifted (${title})`, async () => {
      const writes = ["INSERT INTO existing VALUES ('x')", "UPDATE existing SET v = 'x'", 'DELETE FROM existing', 'TRUNCATE existing', 'CREATE TABLE made (x int)', 'CREATE SCHEMA made', 'ALTER TABLE existing ADD COLUMN w int', 'DROP TABLE existing'];
      await asApp(doorString(reader, door), async (c) => {
        // The guard: every transaction is read-only unless it says otherwise.
        assert.equal(await sqlState(c.query(writes[0]!)), '25006');
        // Lifted, in the same transaction (through the pooler, a SET outside one would not carry to the next):
        // privileges refuse.
        for (const sql of writes) {
          assert.equal(await sqlState(c.query(`BEGIN READ WRITE; ${sql}`)), '42501', `BEGIN READ WRITE; ${sql}`);
          await c.query('ROLLBACK');
          assert.equal(await sqlState(c.query(`BEGIN; SET TRANSACTION READ WRITE; ${sql}`)), '42501', `SET TRANSACTION READ WRITE; ${sql}`);
          await c.query('ROLLBACK');
        }
        if (door === 'direct') {
          // The session's own default lifted (a session's state: through the pooler it would not carry to the next
          // transaction, which may run on another server connection).
          await c.query('SET default_transaction_read_only = off');
          for (const sql of writes) assert.equal(await sqlState(c.query(sql)), '42501', `SET default_transaction_read_only = off; ${sql}`);
        }
        assert.equal(await sqlState(c.query('BEGIN READ WRITE; CREATE TEMPORARY TABLE scratch (x int)')), '42501', 'no temporary tables');
        await c.query('ROLLBACK');
        assert.equal(await sqlState(c.query('SET ROLE app_owner_user')), '42501', "cannot become the app's login role");
      });
      assert.deepEqual(await as(owner, door, 'SELECT v FROM existing'), [{ v: 'before' }], 'the data is untouched');
    });
  }
});

describe('a full credential', () => {
  before(async () => {
    deployer = await makeCredential('owner', 'deployer', 'full');
  });

  for (const { door, title } of DOORS) {
    it(`acts as the app: its sessions run as the app's login role, and what it makes is the app's (${title})`, async () => {
      assert.deepEqual(await as(deployer, door, 'SELECT current_user AS cu, session_user AS su'), [{ cu: 'app_owner_user', su: 'app_owner.deployer' }]);
      await as(deployer, door, `CREATE TABLE made_by_deployer_${door} AS SELECT v FROM existing; INSERT INTO made_by_deployer_${door} VALUES ('written')`);
      const [row] = await t.superuser(async (db) => (await db.query(`SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_deployer_${door}'`)).rows, 'app_owner');
      assert.deepEqual(row, { tableowner: 'app_owner_user' });
      assert.deepEqual(await as(reader, door, `SELECT count(*)::int AS n FROM made_by_deployer_${door}`), [{ n: 2 }], 'the read-only credential reads it too');
    });
  }

  it("after RESET ROLE is still the app; after SET ROLE NONE it is only itself, which may read and make nothing (direct)", async () => {
    await asApp(doorString(deployer, 'direct'), async (c) => {
      await c.query('RESET ROLE');
      assert.equal((await c.query('SELECT current_user AS u')).rows[0].u, 'app_owner_user');
      await c.query('SET ROLE NONE');
      assert.equal((await c.query('SELECT current_user AS u')).rows[0].u, 'app_owner.deployer');
      for (const sql of ['SELECT v FROM public.existing', 'CREATE TABLE public.mine (x int)', 'CREATE TEMPORARY TABLE mine (x int)', 'CREATE SCHEMA mine']) {
        assert.equal(await sqlState(c.query(sql)), '42501', sql);
      }
      await c.query('SET ROLE app_owner_user');
      assert.deepEqual((await c.query('SELECT v FROM existing')).rows, [{ v: 'before' }]);
    });
  });

  for (const { door, title } of DOORS) {
    it(`becomes no role outside the app, and grants no credential to anyone (${title})`, async () => {
      await asApp(doorString(deployer, door), async (c) => {
        for (const sql of ['SET ROLE app_other_user', 'SET ROLE app_other', 'SET ROLE postgres', 'SET ROLE pg_read_server_files', 'SET SESSION AUTHORIZATION app_other_user', 'SET ROLE "app_owner.reader"']) {
          assert.equal(await sqlState(c.query(sql)), '42501', sql);
        }
        // Postgres 15.20 gives no role ADMIN of itself: neither a credential nor the app can hand its login to another.
        for (const sql of ['GRANT "app_owner.deployer" TO app_other_user', 'GRANT "app_owner.reader" TO app_other_user', 'GRANT app_owner_user TO app_other_user', 'GRANT app_owner_user TO "app_owner.reader"', 'SET ROLE NONE; GRANT "app_owner.deployer" TO app_other_user']) {
          assert.equal(await sqlState(c.query(sql)), '42501', sql);
        }
      });
      await asApp(doorString(reader, door), async (c) => {
        for (const sql of ['GRANT "app_owner.reader" TO app_other_user', 'GRANT "app_owner.reader" TO "app_owner.deployer"', 'GRANT app_owner TO app_other_user']) {
          assert.equal(await sqlState(c.query(`BEGIN READ WRITE; ${sql}`)), '42501', sql);
          await c.query('ROLLBACK');
        }
      });
      await asApp(doorString(owner, door), async (c) => {
        for (const sql of ['GRANT "app_owner.reader" TO app_other_user', 'GRANT app_owner_user TO "app_owner.reader"', "ALTER ROLE \"app_owner.reader\" PASSWORD 'taken'", 'ALTER ROLE "app_owner.reader" SET default_transaction_read_only = off']) {
          assert.equal(await sqlState(c.query(sql)), '42501', sql);
        }
      });
    });
  }
});

describe("a credential of app A cannot reach app B's database", () => {
  for (const { door, title } of DOORS) {
    it(`is refused at every database but its app's main one (${title})`, async () => {
      for (const login of [reader, deployer]) {
        for (const database of ['app_other', 'postgres', 'template1', 'provisioner']) {
          const err = await rejectionOf(asApp(withDatabase(doorString(login, door), database), (c) => c.query('SELECT 1')));
          assert.match(err.message, /pg_hba\.conf rejects|no pg_hba\.conf entry|^login rejected$/, `${login.name} at ${database}: ${err.message}`);
        }
      }
    });
  }

  it('is refused by pg_hba.conf even when the privilege lock is opened (first lock alone; direct)', async () => {
    await t.superuser((db) => db.query('GRANT CONNECT ON DATABASE app_other TO "app_owner.reader", "app_owner.deployer"'));
    try {
      for (const login of [reader, deployer]) {
        const err = await rejectionOf(asApp(withDatabase(doorString(login, 'direct'), 'app_other'), (c) => c.query('SELECT 1')));
        assert.match(err.message, /pg_hba\.conf rejects|no pg_hba\.conf entry/, login.name);
      }
    } finally {
      await t.superuser((db) => db.query('REVOKE CONNECT ON DATABASE app_other FROM "app_owner.reader", "app_owner.deployer"'));
    }
  });

  it('is refused by privileges even when the pg_hba.conf lock is passed (second lock alone; direct)', async () => {
    // A member of B's access role passes samerole for app_other; CONNECT still stops it.
    await t.superuser((db) => db.query('GRANT app_other TO "app_owner.reader", "app_owner.deployer"'));
    try {
      for (const login of [reader, deployer]) {
        const err = await rejectionOf(asApp(withDatabase(doorString(login, 'direct'), 'app_other'), (c) => c.query('SELECT 1')));
        assert.match(err.message, /permission denied for database "app_other"/, login.name);
      }
    } finally {
      await t.superuser((db) => db.query('REVOKE app_other FROM "app_owner.reader", "app_owner.deployer"'));
    }
  });

  it("is admitted by the pooler's hba file to its app's database only", () => {
    const rendered = readFileSync(join(t.stack.pgbouncer!.paths.authDir, 'pgbouncer-hba.conf'), 'utf8');
    const lines = rendered.split('\n').filter((line) => line.includes('app_owner.'));
    assert.deepEqual(lines.map((line) => line.split(/\s+/).slice(0, 3).join(' ')).sort(), [
      'hostssl app_owner app_owner.deployer',
      'hostssl app_owner app_owner.deployer',
      'hostssl app_owner app_owner.reader',
      'hostssl app_owner app_owner.reader',
    ]);
  });
});

describe('listing, and what a request must be', () => {
  it('lists the credentials with their kind and login, never a password, and GET /apps/:name names them', async () => {
    const listed = await t.admin('GET', '/apps/owner/credentials');
    assert.equal(listed.status, 200);
    const credentials = listed.body.credentials as Array<Record<string, unknown>>;
    assert.deepEqual(credentials.map(({ name, access, username }) => ({ name, access, username })), [
      { name: 'deployer', access: 'full', username: 'app_owner.deployer' },
      { name: 'reader', access: 'read_only', username: 'app_owner.reader' },
    ]);
    for (const credential of credentials) {
      assert.deepEqual(Object.keys(credential).sort(), ['access', 'created_at', 'name', 'username']);
      assert.ok(!Number.isNaN(Date.parse(String(credential.created_at))));
    }
    assert.doesNotMatch(listed.text, new RegExp(reader.password));
    const app = await t.admin('GET', '/apps/owner');
    assert.deepEqual(app.body.credentials, [
      { name: 'deployer', access: 'full', username: 'app_owner.deployer' },
      { name: 'reader', access: 'read_only', username: 'app_owner.reader' },
    ]);
    assert.deepEqual((await t.admin('GET', '/apps/other')).body.credentials, []);
  });

  it('refuses bad input with a 4xx that changes nothing, and holds each app to APP_MAX_CREDENTIALS', async () => {
    const rolesBefore = await catalog.rolesLike('app\\_owner.%');
    const bad: Array<[unknown, number]> = [
      [{ name: 'Upper', access: 'full' }, 400],
      [{ name: 'a'.repeat(21), access: 'full' }, 400],
      [{ name: 'dot.ted', access: 'full' }, 400],
      [{ name: 'hy-phen', access: 'full' }, 400],
      [{ name: '', access: 'full' }, 400],
      [{ name: 'fine', access: 'write' }, 400],
      [{ name: 'fine' }, 400],
      [{ access: 'full' }, 400],
      [{ name: 'fine', access: 'full', extra: 1 }, 400],
      [[], 400],
      [{ name: 'reader', access: 'full' }, 409],
    ];
    for (const [body, status] of bad) {
      const answer = await t.admin('POST', '/apps/owner/credentials', body);
      assert.equal(answer.status, status, `${JSON.stringify(body)}: ${answer.text}`);
      assert.equal(typeof answer.body.message, 'string');
    }
    assert.equal((await t.admin('POST', '/apps/nobody/credentials', { name: 'x', access: 'full' })).status, 404);
    assert.equal((await t.admin('POST', '/apps/owner/credentials/nobody/rotate')).status, 404);
    assert.equal((await t.admin('DELETE', '/apps/owner/credentials/nobody')).status, 404);
    assert.equal((await t.admin('DELETE', '/apps/owner/credentials/Bad')).status, 400);
    assert.equal((await t.get('/apps/owner/credentials')).status, 401);
    assert.deepEqual(await catalog.rolesLike('app\\_owner.%'), rolesBefore);
    // The third is the last one owner may have.
    await makeCredential('owner', 'third', 'read_only');
    const fourth = await t.admin('POST', '/apps/owner/credentials', { name: 'fourth', access: 'read_only' });
    assert.equal(fourth.status, 409);
    assert.match(String(fourth.body.message), /APP_MAX_CREDENTIALS/);
    assert.equal((await t.admin('DELETE', '/apps/owner/credentials/third')).status, 200);
  });
});

describe('rotation', () => {
  it("gives one credential a new password: the old one is refused at both doors and its sessions end; the app and the other credential are untouched", async () => {
    const held = await connectAs(doorString(reader, 'direct'));
    const deployerBefore = await catalog.storedPassword('app_owner.deployer');
    const ownerBefore = await catalog.storedPassword('app_owner_user');
    try {
      const rotated = await t.admin('POST', '/apps/owner/credentials/reader/rotate');
      assert.equal(rotated.status, 200, rotated.text);
      assert.equal(rotated.body.username, 'app_owner.reader');
      assert.equal(rotated.body.access, 'read_only');
      assert.ok((rotated.body.sessions_ended as number) >= 1);
      assert.ok((await rejectionOf(held.query('SELECT 1'))) instanceof Error, 'the old session was ended');
      for (const { door } of DOORS) {
        await rejectionOf(connectAs(doorString(reader, door)));
        assert.deepEqual(await as(rotated.body as unknown as AppDoors, door, 'SELECT v FROM existing'), [{ v: 'before' }]);
        await as(deployer, door, 'SELECT 1');
        await as(owner, door, 'SELECT 1');
      }
      assert.equal(await catalog.storedPassword('app_owner.deployer'), deployerBefore);
      assert.equal(await catalog.storedPassword('app_owner_user'), ownerBefore);
      reader = { ...reader, ...(rotated.body as unknown as Login) };
    } finally {
      await held.end().catch(() => {});
    }
  });

  it("of the app itself changes no credential: their passwords and logins are as they were", async () => {
    const before = { reader: await catalog.storedPassword('app_owner.reader'), deployer: await catalog.storedPassword('app_owner.deployer') };
    const rotated = await t.admin('POST', '/apps/owner/rotate');
    assert.equal(rotated.status, 200);
    owner = { ...owner, ...(rotated.body as unknown as App) };
    assert.deepEqual({ reader: await catalog.storedPassword('app_owner.reader'), deployer: await catalog.storedPassword('app_owner.deployer') }, before);
    for (const { door } of DOORS) {
      assert.deepEqual(await as(reader, door, 'SELECT current_user AS u'), [{ u: 'app_owner.reader' }]);
      assert.deepEqual(await as(deployer, door, 'SELECT session_user AS u'), [{ u: 'app_owner.deployer' }]);
    }
  });
});

describe('a restore', () => {
  it("changes no credential's password, settings or memberships, whatever the dump's code tries, and the read-only one reads the restored tables and later ones", async () => {
    const state = (role: string) =>
      t.superuser(async (db) =>
        (
          await db.query(
            `SELECT a.rolpassword, a.rolcanlogin, a.rolinherit, a.rolconnlimit, a.rolvaliduntil::text, r.rolconfig,
                    ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = a.oid ORDER BY 1) AS member_of,
                    ARRAY(SELECT u.rolname FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member WHERE m.roleid = a.oid ORDER BY 1) AS members
               FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE a.rolname = $1`,
            [role],
          )
        ).rows[0],
      );
    const before = { reader: await state('app_owner.reader'), deployer: await state('app_owner.deployer'), owner: await state('app_owner_user') };
    // The trap runs in the restore, as the app's restore agent (a CHECK constraint calls it), and tries everything
    // the app's own rights might allow against its credentials, writing down each attempt's outcome.
    await as(
      owner,
      'pooled',
      `CREATE TABLE trap_log (attempt text, outcome text);
       CREATE FUNCTION trap_try(attempt text) RETURNS void LANGUAGE plpgsql AS $f$
       BEGIN
         EXECUTE attempt;
         INSERT INTO public.trap_log VALUES (attempt, 'done');
       EXCEPTION WHEN OTHERS THEN INSERT INTO public.trap_log VALUES (attempt, SQLSTATE);
       END $f$;
       CREATE FUNCTION trap() RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $f$
       BEGIN
         IF current_setting('application_name') = 'pg-provisioner-backup' THEN
           PERFORM public.trap_try(a) FROM unnest(ARRAY[
             'ALTER ROLE "app_owner.reader" PASSWORD ''Trap-Chosen-1''',
             'ALTER ROLE "app_owner.deployer" PASSWORD ''Trap-Chosen-2''',
             'ALTER ROLE "app_owner.reader" SET default_transaction_read_only = off',
             'GRANT app_owner_user TO "app_owner.reader"',
             'REVOKE app_owner_user FROM "app_owner.deployer"',
             'SET ROLE app_owner_user',
             'ALTER ROLE "app_owner.reader" PASSWORD ''Trap-Chosen-3''',
             'GRANT app_owner_user TO "app_owner.reader"',
             'REVOKE app_owner_user FROM "app_owner.deployer"',
             'ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM "app_owner.reader"',
             'REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM "app_owner.reader"',
             'RESET ROLE']) a;
         END IF;
         RETURN true;
       END $f$;
       CREATE TABLE booby (v int CHECK (public.trap()));
       INSERT INTO booby VALUES (1);`,
    );
    const backup = await t.admin('POST', '/apps/owner/backups');
    assert.equal(backup.status, 201, backup.text);
    const restored = await t.admin('POST', '/apps/owner/restore', { file: backup.body.file });
    assert.equal(restored.status, 200, restored.text);
    const log = await as(owner, 'pooled', 'SELECT attempt, outcome FROM trap_log');
    assert.equal(log.length, 12, 'every attempt was made during the restore');
    for (const row of log) if (/^ALTER ROLE|^GRANT app_owner_user|^REVOKE app_owner_user/.test(row.attempt)) assert.equal(row.outcome, '42501', row.attempt);
    assert.deepEqual({ reader: await state('app_owner.reader'), deployer: await state('app_owner.deployer'), owner: await state('app_owner_user') }, before);
    await as(owner, 'pooled', "CREATE TABLE after_restore AS SELECT 'new' AS v");
    for (const { door } of DOORS) {
      assert.deepEqual(await as(reader, door, 'SELECT v FROM existing'), [{ v: 'before' }]);
      assert.deepEqual(await as(reader, door, 'SELECT v FROM after_restore'), [{ v: 'new' }]);
      assert.equal(await sqlState(as(reader, door, 'BEGIN READ WRITE; DELETE FROM existing')), '42501');
      assert.deepEqual(await as(deployer, door, 'SELECT current_user AS u'), [{ u: 'app_owner_user' }]);
    }
  });
});

describe('deleting', () => {
  it('one credential refuses it at once at both doors, ends its sessions, and gives what it owned to the app', async () => {
    // It can own something only where the app lets it make things as itself.
    await as(owner, 'pooled', 'GRANT USAGE, CREATE ON SCHEMA public TO "app_owner.deployer"');
    await as(deployer, 'direct', "SET ROLE NONE; CREATE TABLE owned_by_deployer AS SELECT 'mine' AS v");
    const [made] = await t.superuser(async (db) => (await db.query("SELECT tableowner FROM pg_tables WHERE tablename = 'owned_by_deployer'")).rows, 'app_owner');
    assert.deepEqual(made, { tableowner: 'app_owner.deployer' });
    const held = await connectAs(doorString(deployer, 'direct'));
    let pooled: pg.Client | undefined;
    try {
      pooled = await connectAs(doorString(deployer, 'pooled'));
      await pooled.query('SELECT 1');
      const deleted = await t.admin('DELETE', '/apps/owner/credentials/deployer');
      assert.equal(deleted.status, 200, deleted.text);
      assert.deepEqual(deleted.body, { app_name: 'owner', deleted: 'deployer', sessions_ended: deleted.body.sessions_ended });
      assert.ok((await rejectionOf(held.query('SELECT 1'))) instanceof Error, 'its direct session was ended');
      assert.ok((await rejectionOf(pooled.query('SELECT 1'))) instanceof Error, 'its pooled client was ended');
      for (const { door } of DOORS) await rejectionOf(connectAs(doorString(deployer, door)));
      assert.deepEqual(await catalog.existingRoles(['app_owner.deployer']), []);
      const [row] = await t.superuser(async (db) => (await db.query("SELECT tableowner FROM pg_tables WHERE tablename = 'owned_by_deployer'")).rows, 'app_owner');
      assert.deepEqual(row, { tableowner: 'app_owner_user' });
      for (const { door } of DOORS) assert.deepEqual(await as(owner, door, 'SELECT v FROM owned_by_deployer'), [{ v: 'mine' }]);
      assert.deepEqual(((await t.admin('GET', '/apps/owner/credentials')).body.credentials as Array<{ name: string }>).map((c) => c.name), ['reader']);
    } finally {
      await held.end().catch(() => {});
      await pooled?.end().catch(() => {});
    }
  });

  it("the app removes every credential with it, and a new app of the name has none", async () => {
    await t.provision('doomed');
    const doomedReader = await makeCredential('doomed', 'reader', 'read_only');
    const doomedFull = await makeCredential('doomed', 'full', 'full');
    const held = await connectAs(doorString(doomedReader, 'direct'));
    try {
      const deleted = await t.admin('DELETE', '/apps/doomed?backup=false');
      assert.equal(deleted.status, 200, deleted.text);
      assert.ok((await rejectionOf(held.query('SELECT 1'))) instanceof Error);
    } finally {
      await held.end().catch(() => {});
    }
    assert.deepEqual(await catalog.rolesLike('app\\_doomed%'), []);
    for (const { door } of DOORS) for (const login of [doomedReader, doomedFull]) await rejectionOf(connectAs(doorString(login, door)));
    await t.provision('doomed');
    assert.deepEqual((await t.admin('GET', '/apps/doomed/credentials')).body.credentials, []);
    for (const { door } of DOORS) await rejectionOf(connectAs(doorString(doomedReader, door)));
  });
});
