// A hostile tenant with nothing but its own connection string, and an operator doing routine work (restore,
// rotate, delete, back up): every path from one app's database to the superuser, to other apps and to the
// service that such a tenant was found to have is attacked here, against the real stack (SECURITY.md,
// promises 8 to 13).
//
// A tenant has two doors: the pooler (PgBouncer, its connection_string) and Postgres itself (its
// direct_connection_string). Attacks made through a tenant's sessions (logins, held locks, sessions an operation
// must end) run through both (DOORS; the door is in the test's name). Where the tenant's session only sets the
// stage for an operation that works on the server with the service's own connections (a restore's traps, a
// backup, text in the service's log), the test uses the pooler, the door apps use, and says so.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
import { catalogOf } from '../helpers/catalog.js';
import { type FinishResult, type PausedLogin } from '../helpers/raw-pg.js';
import { asApp, connectAs, DOORS, doorString, pausedLoginAs, sessionIdentity, withDatabase, withLogin, type AppDoors, type Door } from '../helpers/app-sessions.js';
import { eventually, rejectionOf } from '../helpers/conditions.js';
import { type ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let t: TestStack;
/** Long enough that what the test does while backups stall (a few requests) is done well before it ends. */
const LOCK_WAIT_S = 8;

before(async () => {
  t = await startTestStack({
    serviceEnv: {
      LOG_PRETTY: 'false',
      READY_POOL_SIZE: '3',
      READY_POOL_REFILL_PER_SECOND: '20',
      RECONCILE_INTERVAL_MS: '1000',
      DATABASE_POOL_SIZE: '2',
      BACKUP_MAX_CONCURRENT: '2',
      BACKUP_LOCK_WAIT_TIMEOUT_MS: String(LOCK_WAIT_S * 1000),
    },
  });
});
after(async () => {
  await t?.stop();
});

/** Runs `text` as the app, through `door` (the pooler unless said). */
const sql = (app: ProvisionedApp, text: string, door: Door = 'pooled') => asApp(doorString(app, door), (c) => c.query(text));
const superuserRows = async (text: string, params: unknown[] = [], database = 'postgres') =>
  t.superuser(async (db) => (await db.query(text, params)).rows, database);
const catalog = catalogOf(() => t);

/** A raw login as the app through `door`, with `password` (default: the app's own), paused after the server read the role's password. */
function pausedLogin(app: ProvisionedApp, door: Door, password?: string): Promise<PausedLogin> {
  return pausedLoginAs(doorString(app, door), password);
}

/** The connection strings of an answer (provision, rotate), as AppDoors. */
const answered = (body: Record<string, unknown>) => body as unknown as AppDoors & ProvisionedApp;

/**
 * A login that must get nowhere got nowhere: directly, Postgres refused it; through the pooler, PgBouncer may have
 * admitted it (it checks the password it had when the login began), but its session can run nothing, as anyone.
 * `identity` is sessionIdentity(login, finished), started as soon as the login finished.
 */
async function assertNoSession(door: Door, finished: FinishResult, identity: Promise<string | undefined>, what: string): Promise<void> {
  if (door === 'direct') assert.equal(finished.ok, false, what);
  assert.equal(await identity, undefined, `${what}: its session ran a query`);
}

function withPassword(connectionString: string, password: string): string {
  const url = new URL(connectionString);
  url.password = password;
  return url.toString();
}

// --- 1. No operation runs tenant code with more rights than the tenant --------------------------------------

// Through the pooler only: the traps fire in the restore, on the service's own connection, whatever door the
// tenant set them through.
describe('a restore runs the dump\'s code with the app\'s rights, never the superuser\'s', () => {
  const marker = join(tmpdir(), `pgprov-pwned-${process.pid}`);

  it('keeps booby-trapped constraints, domains, generated columns, index expressions and materialized views to the app\'s rights', async () => {
    const app = await t.provision('trapper');
    // trap_act() tries everything a superuser could do, and writes down who it ran as. trap() is the immutable
    // face Postgres requires in generated columns and index expressions. Both run during pg_restore.
    await sql(
      app,
      `CREATE TABLE aaa_trap_log (kind text, session_user_name name, current_user_name name, superuser boolean);
       CREATE FUNCTION trap_act(kind text) RETURNS boolean LANGUAGE plpgsql AS $f$
       BEGIN
         BEGIN EXECUTE 'RESET ROLE'; EXCEPTION WHEN OTHERS THEN NULL; END;
         INSERT INTO public.aaa_trap_log SELECT kind, session_user, current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user;
         BEGIN EXECUTE 'ALTER ROLE app_trapper_user SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
         BEGIN EXECUTE 'CREATE ROLE pwned_' || kind || ' SUPERUSER LOGIN'; EXCEPTION WHEN OTHERS THEN NULL; END;
         BEGIN EXECUTE 'GRANT pg_execute_server_program, pg_read_server_files TO app_trapper_user'; EXCEPTION WHEN OTHERS THEN NULL; END;
         BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch ${marker}'''; EXCEPTION WHEN OTHERS THEN NULL; END;
         BEGIN EXECUTE 'ALTER ROLE postgres PASSWORD ''stolen'''; EXCEPTION WHEN OTHERS THEN NULL; END;
         -- What the app's own rights do allow: its own password and settings (SET ROLE to the app's role),
         -- during the restore only (the tenant's own inserts run this function too).
         IF current_setting('application_name') = 'pg-provisioner-backup' THEN BEGIN
           EXECUTE 'SET ROLE app_trapper_user';
           EXECUTE 'ALTER ROLE app_trapper_user PASSWORD ''Trap-Chosen-Password-7''';
           EXECUTE 'ALTER ROLE app_trapper_user SET statement_timeout = ''1ms''';
           EXECUTE 'RESET ROLE';
         EXCEPTION WHEN OTHERS THEN NULL; END; END IF;
         RETURN true;
       END $f$;
       CREATE FUNCTION trap(kind text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN RETURN public.trap_act(kind); END $f$;
       CREATE TABLE booby_check (v int CHECK (public.trap('check')));
       CREATE DOMAIN booby_domain AS int CHECK (public.trap('domain'));
       CREATE TABLE booby_domain_table (v booby_domain);
       CREATE TABLE booby_generated (v int, g boolean GENERATED ALWAYS AS (public.trap('generated')) STORED);
       CREATE TABLE booby_index (v int);
       CREATE INDEX booby_index_expr ON booby_index ((public.trap('index') AND v > 0));
       CREATE MATERIALIZED VIEW booby_matview AS SELECT public.trap_act('matview') AS fired;
       INSERT INTO booby_check VALUES (1); INSERT INTO booby_domain_table VALUES (1);
       INSERT INTO booby_generated (v) VALUES (1); INSERT INTO booby_index VALUES (1);
       TRUNCATE aaa_trap_log;`,
    );
    const backup = await t.admin('POST', '/apps/trapper/backups');
    assert.equal(backup.status, 201);
    const restored = await t.admin('POST', '/apps/trapper/restore', { file: backup.body.file });
    assert.equal(restored.status, 200, restored.text);

    // Every trap fired during the restore (so the test is not vacuous), as the restore's agent, never a superuser.
    const fired = await asApp(app.connection_string, async (c) => (await c.query('SELECT DISTINCT kind, session_user_name, current_user_name, superuser FROM aaa_trap_log ORDER BY kind')).rows);
    assert.deepEqual(fired.map((row) => row.kind), ['check', 'domain', 'generated', 'index', 'matview']);
    for (const row of fired) {
      assert.equal(row.superuser, false, JSON.stringify(row));
      assert.equal(row.session_user_name, 'pgprov_restore_trapper', JSON.stringify(row));
    }
    const role = (await superuserRows("SELECT rolsuper, pg_has_role(oid, 'pg_execute_server_program', 'MEMBER') AS programs FROM pg_roles WHERE rolname = 'app_trapper_user'"))[0];
    assert.deepEqual(role, { rolsuper: false, programs: false });
    assert.deepEqual([...(await catalog.rolesLike('pwned%')), ...(await catalog.workLeftovers()).agents], []);
    assert.equal(existsSync(marker), false, 'no program ran on the server');
    await t.superuser((db) => db.query('SELECT 1')); // the superuser's password is unchanged
    // What the app's own rights could change was put back: its password (a rotation is not undone by a
    // restore), at both doors (the pooler's list of logins too), and its settings.
    for (const { door } of DOORS) await rejectionOf(connectAs(withPassword(doorString(app, door), 'Trap-Chosen-Password-7')));
    assert.equal(await asApp(app.connection_string, async (c) => (await c.query('SHOW statement_timeout')).rows[0].statement_timeout), '0');
    const audit = await superuserRows("SELECT detail FROM audit_log WHERE action = 'restore' AND app_name = 'trapper' AND outcome = 'ok'", [], 'provisioner');
    assert.deepEqual(audit.map((row) => row.detail.login_role_put_back), [['password', 'settings']]);
  });

  after(() => rmSync(marker, { force: true }));
});

// --- 2. Rotation really locks out the old password --------------------------------------------------------

describe('a rotation leaves the old password no way in', () => {
  for (const { door, title } of DOORS) {
    it(`refuses a login whose handshake began before the rotation and finishes during it (${title})`, async () => {
      const app = await t.provision(`rotor_one_${door}`);
      const bystander = await t.provision(`rotor_one_other_${door}`);
      const pending = await pausedLogin(app, door); // the server (or PgBouncer) has read the old password's verifier
      const rotating = t.admin('POST', `/apps/rotor_one_${door}/rotate`);
      let bystanderSession: pg.Client | undefined;
      try {
        // Finish the handshake once the rotation is under way (the old code never got here before answering).
        const underWay = await eventually(() => catalog.loginAllowed(`app_rotor_one_${door}_user`), (allowed) => !allowed, 10_000);
        assert.equal(underWay, false);
        // Meanwhile another app connects through the same door for the first time (through the pooler: a new pool).
        bystanderSession = await connectAs(doorString(bystander, door));
        await bystanderSession.query('SELECT 1');
        const early = await pending.finish();
        const identity = sessionIdentity(pending, early, 30_000);
        const rotated = await rotating;
        assert.equal(rotated.status, 200);
        // A fresh login with the NEW password: through the pooler, a server connection of the app's pool exists now.
        await asApp(doorString(answered(rotated.body), door), (c) => c.query('SELECT 1'));
        await assertNoSession(door, early, identity, 'the login with the old password');
        await rejectionOf(connectAs(doorString(app, door)));
        assert.equal((await bystanderSession.query('SELECT current_user AS u')).rows[0].u, `app_rotor_one_other_${door}_user`, 'the other app is unharmed');
      } finally {
        pending.close();
        await bystanderSession?.end().catch(() => {});
        await rotating.catch(() => {});
      }
    });

    it(`refuses a login whose handshake began before the rotation and finishes after it has answered (${title})`, async () => {
      const app = await t.provision(`rotor_two_${door}`);
      const pending = await pausedLogin(app, door);
      try {
        const rotated = await t.admin('POST', `/apps/rotor_two_${door}/rotate`);
        assert.equal(rotated.status, 200);
        const late = await pending.finish();
        const identity = sessionIdentity(pending, late, 30_000);
        await asApp(doorString(answered(rotated.body), door), (c) => c.query('SELECT 1'));
        await assertNoSession(door, late, identity, 'the login with the old password');
      } finally {
        pending.close();
      }
    });

    it(`leaves no session of the old password, and no password of its own choosing (${title})`, async () => {
      const app = await t.provision(`rotor_three_${door}`);
      const chosen = 'Attacker-Chosen-Password-1';
      // Old sessions that set a password of their own as fast as they can (racing the rotation's own ALTER ROLE),
      // and logins begun with that password, held open across the rotation.
      const attackers = await Promise.all([1, 2, 3].map(() => connectAs(doorString(app, door))));
      let stop = false;
      const settingPasswords = Promise.all(
        attackers.map(async (attacker) => {
          while (!stop) await attacker.query(`ALTER ROLE app_rotor_three_${door}_user PASSWORD '${chosen}'`).catch(() => (stop = true));
        }),
      );
      const pending: PausedLogin[] = [];
      // Through the pooler, once the rotation has refused the app at the door, a login is rejected before its
      // exchange begins (its pgbouncer-hba.conf lines are gone): attempted, never begun. How many of each depends
      // on how fast the rotation gets there; either way each must get nothing.
      const refusedAtTheDoor: Error[] = [];
      const rotating = t.admin('POST', `/apps/rotor_three_${door}/rotate`);
      let rotated: Awaited<typeof rotating> | undefined;
      void rotating.then((r) => (rotated = r));
      try {
        while (!rotated) {
          const login = await pausedLogin(app, door, chosen).catch((err: Error) => void refusedAtTheDoor.push(err));
          if (login) pending.push(login);
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
        stop = true;
        await settingPasswords;
        assert.equal(rotated.status, 200);
        assert.ok(pending.length + refusedAtTheDoor.length > 0, 'logins with the chosen password were attempted during the rotation');
        if (door === 'direct') assert.ok(pending.length > 0, 'logins with the chosen password were begun during the rotation');
        for (const attacker of attackers) assert.ok((await rejectionOf(attacker.query('SELECT 1'))) instanceof Error, 'the old sessions were ended');
        const finished = [];
        for (const login of pending) {
          const result = await login.finish();
          finished.push({ result, identity: sessionIdentity(login, result, 30_000) });
        }
        await asApp(doorString(answered(rotated.body), door), (c) => c.query('SELECT 1'));
        for (const { result, identity } of finished) await assertNoSession(door, result, identity, 'a login with a password the attacker chose');
        await rejectionOf(connectAs(withPassword(doorString(app, door), chosen)));
        await rejectionOf(connectAs(doorString(app, door)));
      } finally {
        stop = true;
        for (const login of pending) login.close();
        for (const attacker of attackers) await attacker.end().catch(() => {});
      }
    });
  }
});

// --- 2b. The pooler never hands a login in flight to another app -------------------------------------------------

// Through the pooler only: PgBouncer's own matter. It ties a login to its pool (database and role) when the
// login begins, and the service ends an app's pooled connections (rotate, delete, restore) while logins may be
// in flight, its tenant's own or another tenant's naming its database. Such a login, finished afterwards, must
// land in no pool but its own, least of all one another app's pool took meanwhile.
describe('the pooler hands a login in flight to no other app', () => {
  it('gives another tenant\'s login, paused at an app\'s database across its restore, no session anywhere (through the pooler)', async () => {
    const target = await t.provision('restored_target');
    const intruder = await t.provision('intruder');
    const bystander = await t.provision('pool_bystander');
    const backup = await t.admin('POST', '/apps/restored_target/backups');
    assert.equal(backup.status, 201);
    // The intruder's own login (its own, right password), naming the target's database.
    const attempt = await pausedLoginAs(withDatabase(intruder.connection_string, target.database)).catch((err: Error) => err);
    if (attempt instanceof Error) {
      assert.match(attempt.message, /login rejected|pg_hba\.conf rejects/, 'refused before its password was asked for');
      return;
    }
    try {
      const restored = await t.admin('POST', '/apps/restored_target/restore', { file: backup.body.file });
      assert.equal(restored.status, 200, restored.text);
      // Another app's first session through the pooler: a new pool, made after the target's were ended.
      await asApp(bystander.connection_string, (c) => c.query('SELECT 1'));
      const finished = await attempt.finish();
      assert.equal(await sessionIdentity(attempt, finished), undefined, "the intruder's login ran a query");
    } finally {
      attempt.close();
    }
    // The bystander is unharmed, new server connections included (two transactions at once need two).
    const sessions = await Promise.all([1, 2].map(() => connectAs(bystander.connection_string)));
    try {
      for (const session of sessions) await session.query('BEGIN');
      for (const session of sessions) assert.equal((await session.query('SELECT current_user AS u')).rows[0].u, 'app_pool_bystander_user');
      for (const session of sessions) await session.query('COMMIT');
    } finally {
      for (const session of sessions) await session.end().catch(() => {});
    }
  });

  it("lets an app's own login, paused across the app's restore, reach its own database or nothing (through the pooler)", async () => {
    const app = await t.provision('restored_self');
    const bystander = await t.provision('pool_bystander_two');
    const backup = await t.admin('POST', '/apps/restored_self/backups');
    assert.equal(backup.status, 201);
    const pending = await pausedLogin(app, 'pooled');
    try {
      const restored = await t.admin('POST', '/apps/restored_self/restore', { file: backup.body.file });
      assert.equal(restored.status, 200, restored.text);
      await asApp(bystander.connection_string, (c) => c.query('SELECT 1'));
      const finished = await pending.finish();
      const identity = await sessionIdentity(pending, finished);
      assert.ok(identity === undefined || identity === 'app_restored_self_user@app_restored_self', `the app's login ran as ${identity}`);
    } finally {
      pending.close();
    }
    await asApp(bystander.connection_string, (c) => c.query('SELECT 1'));
  });
});

// --- 2c. A deleted app's logins stay refused ---------------------------------------------------------------------

describe("a deleted app's old password and an empty one get no session", () => {
  for (const { door, title } of DOORS) {
    it(`refuses both once the app is deleted (${title})`, async () => {
      // Through the pooler this is the auth_file's tombstones: PgBouncer 1.18 keeps a user removed from its
      // auth_file, with an empty password, which a client sending an empty password would pass.
      const app = await t.provision(`gone_${door}`);
      await sql(app, 'SELECT 1', door); // the door has seen the app's login
      const deleted = await t.admin('DELETE', `/apps/gone_${door}?backup=false`);
      assert.equal(deleted.status, 200, deleted.text);
      for (const password of [decodeURIComponent(new URL(app.connection_string).password), '']) {
        const login = await pausedLogin(app, door, password).catch((err: Error) => err);
        if (login instanceof Error) continue; // refused before the password was asked for
        try {
          assert.equal((await login.finish()).ok, false, password ? 'the old password' : 'an empty password');
        } finally {
          login.close();
        }
      }
      await rejectionOf(connectAs(doorString(app, door)));
    });
  }
});

// --- 3. One tenant's GRANTs cannot block or taint other apps ------------------------------------------------

describe("one tenant's grants cannot block or taint other apps", () => {
  let granter: ProvisionedApp;
  before(async () => {
    granter = await t.provision('granter');
    await sql(granter, 'CREATE TABLE bait (x int); ALTER TABLE bait ENABLE ROW LEVEL SECURITY');
  });

  for (const { door, title } of DOORS) {
    it(`deletes an app whatever another tenant granted to its roles, and frees the name (${title})`, async () => {
      const name = `grantee_${door}`;
      const [role, group] = [`app_${name}_user`, `app_${name}`];
      await t.provision(name);
      await sql(
        granter,
        `GRANT SELECT, INSERT ON bait TO ${role}, ${group};
         ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO ${role};
         CREATE POLICY bait_policy_${door} ON bait TO ${role} USING (true);
         CREATE SCHEMA lure_${door}; GRANT USAGE ON SCHEMA lure_${door} TO ${role};
         CREATE FUNCTION lure_${door}.f() RETURNS int LANGUAGE sql AS 'SELECT 1'; GRANT EXECUTE ON FUNCTION lure_${door}.f() TO ${group};`,
        door,
      );
      assert.ok((await catalog.foreignGrants(role, group)).length > 0, 'the grants are in place');
      // And a lock on the policy's table, held as long as the tenant likes: removing a role from a policy needs
      // an ACCESS EXCLUSIVE lock on it.
      const holder = await holdLock(granter, 'bait', door);
      const deleted = await t.admin('DELETE', `/apps/${name}?backup=false`);
      assert.equal(deleted.status, 200, deleted.text);
      assert.ok((await rejectionOf(holder.query('SELECT 1'))) instanceof Error, "the session that blocked another app's deletion was ended");
      assert.deepEqual(await catalog.app(name), { roles: [], databases: [], registry: [] });
      const again = await t.provision(name);
      assert.deepEqual(await catalog.foreignGrants(role, group), [], 'the new app inherits nothing');
      await sql(again, 'SELECT 1', door);
      await sql(granter, 'SELECT count(*) FROM bait', door); // the granter's own objects are untouched
    });
  }

  it('finishes such a deletion in the reconciler when it was interrupted', async () => {
    await t.provision('half_gone');
    await sql(granter, 'GRANT SELECT ON bait TO app_half_gone_user');
    await t.superuser((db) => db.query("UPDATE apps SET state = 'deleting' WHERE app_name = 'half_gone'"), 'provisioner');
    const roles = await eventually(
      () => catalog.rolesLike('app\\_half\\_gone%'),
      (rows) => rows.length === 0,
      20_000,
    );
    assert.deepEqual(roles, []);
    assert.deepEqual(await catalog.registryStates('half_gone'), []);
  });

  it('hands no prepared set that someone granted to to a new app, and the pool removes it', async () => {
    const ids = await eventually(() => catalog.readySetIds(), (found) => found.length >= 2, 20_000);
    assert.ok(ids.length >= 2);
    // The tenant sees the prepared roles in pg_roles, and grants to every one of them.
    await sql(granter, ids.map((id) => `GRANT SELECT ON bait TO pgprov_ready_${id}_user, pgprov_ready_${id}`).join('; '));
    const fresh = await t.provision('fresh_from_pool');
    assert.deepEqual(await catalog.foreignGrants('app_fresh_from_pool_user', 'app_fresh_from_pool'), [], 'no grant of anyone else came with it');
    assert.deepEqual(await catalog.foreignGrants('app_fresh_from_pool', 'app_fresh_from_pool'), []);
    await sql(fresh, 'SELECT 1');
    const left = await eventually(
      () => catalog.existingRoles(ids.map((id) => `pgprov_ready_${id}_user`)),
      (rows) => rows.length === 0,
      20_000,
    );
    assert.deepEqual(left, [], 'the tainted sets were removed');
  });

  for (const { door, title } of DOORS) {
    it(`keeps provisioning working when a tenant names a prepared set in a policy and holds a lock on its table (${title})`, async () => {
      const [id] = await eventually(() => catalog.readySetIds(), (found) => found.length >= 1, 20_000);
      assert.ok(id);
      const jam = `jam_${door}`;
      await sql(granter, `CREATE TABLE ${jam} (x int); ALTER TABLE ${jam} ENABLE ROW LEVEL SECURITY; CREATE POLICY ${jam}_policy ON ${jam} TO pgprov_ready_${id}_user USING (true)`, door);
      const holder = await holdLock(granter, jam, door);
      const gone = await eventually(
        () => catalog.rolesLike(`pgprov\\_ready\\_${id}%`),
        (rows) => rows.length === 0,
        30_000,
      );
      assert.deepEqual(gone, [], 'the tainted set was removed, roles and database');
      assert.ok((await rejectionOf(holder.query('SELECT 1'))) instanceof Error, 'the session holding the lock was ended');
      for (const n of [1, 2, 3]) await sql(await t.provision(`after_${jam}_${n}`), 'SELECT 1', door);
      assert.deepEqual(await superuserRows("SELECT id FROM ready_pool r WHERE state = 'ready' AND NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'pgprov_ready_' || r.id)", [], 'provisioner'), []);
    });

    it(`removes another app's dump agent, and answers its backup, whatever a tenant names the agent in (${title})`, async () => {
      const name = `agent_prey_${door}`;
      const agentRole = `pgprov_dump_${name}`;
      const snare = `snare_${door}`;
      const prey = await t.provision(name);
      // A dump that takes long enough for the tenant to see the agent appear in pg_roles.
      await sql(prey, 'CREATE TABLE bulk AS SELECT g, md5(g::text) AS h FROM generate_series(1, 300000) g', door);
      await sql(granter, `CREATE TABLE ${snare} (x int); ALTER TABLE ${snare} ENABLE ROW LEVEL SECURITY`, door);
      const backup = t.admin('POST', `/apps/${name}/backups`);
      const watcher = await connectAs(doorString(granter, door));
      let holder: pg.Client | undefined;
      try {
        const agent = await eventually(
          async () => (await watcher.query('SELECT rolname FROM pg_roles WHERE rolname = $1', [agentRole])).rows.length,
          (n) => n > 0,
          20_000,
        );
        assert.equal(agent, 1, 'the tenant saw the agent');
        await watcher.query(`CREATE POLICY ${snare}_policy ON ${snare} TO ${agentRole} USING (true)`);
        holder = await holdLock(granter, snare, door);
        const answer = await backup;
        assert.equal(answer.status, 201, answer.text);
        const agents = await eventually(async () => (await catalog.workLeftovers()).agents, (rows) => rows.length === 0, 20_000);
        assert.deepEqual(agents, [], 'no agent left');
        assert.equal((await t.admin('POST', `/apps/${name}/backups`)).status, 201, 'the next backup works too');
      } finally {
        await watcher.end().catch(() => {});
        await holder?.end().catch(() => {});
      }
    });
  }
});

/**
 * A session of `app` through `door` that holds a lock on `table` (read, in an open transaction) until it is ended.
 * SET LOCAL: through the pooler, a session's SET would stay on a server connection the app's other clients share.
 */
async function holdLock(app: ProvisionedApp, table: string, door: Door = 'pooled'): Promise<pg.Client> {
  const holder = await connectAs(doorString(app, door));
  await holder.query(`BEGIN; SET LOCAL idle_in_transaction_session_timeout = 0; SELECT * FROM ${table}`);
  return holder;
}

// --- 4. Tenants cannot starve the service through their own backups ----------------------------------------

describe('tenants cannot starve the service through their own backups', () => {
  // Through both doors: the tenant's lock-holding sessions come through either.
  for (const { door, title } of DOORS) {
    it(`bounds lock waits, caps concurrent backups, and keeps answering other apps meanwhile (${title})`, { timeout: 120_000 }, async () => {
      const names = ['staller_a', 'staller_b', 'staller_c'].map((name) => `${name}_${door}`);
      const stallers = [];
      for (const name of names) stallers.push(await t.provision(name));
      const holders: pg.Client[] = [];
      try {
        // A and C hold a table lock; B a lock on a view (pg_dump's --lock-wait-timeout covers only its first table locks).
        for (const [i, app] of stallers.entries()) {
          await sql(app, 'CREATE TABLE held (x int); CREATE VIEW held_view AS SELECT 1 AS x', door);
          const holder = await connectAs(doorString(app, door));
          await holder.query(i === 1 ? 'BEGIN; CREATE OR REPLACE VIEW held_view AS SELECT 2 AS x' : 'BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE');
          holders.push(holder);
        }
        const stalled = [t.admin('POST', `/apps/${names[0]}/backups`), t.admin('POST', `/apps/${names[1]}/backups`)];
        let settled = 0;
        for (const backup of stalled) void backup.finally(() => settled++);
        // Both backup slots taken: a third is refused at once with a 503 that says when to retry.
        const agentsWaiting = () => superuserRows("SELECT usename FROM pg_stat_activity WHERE usename LIKE 'pgprov\\_dump\\_%' AND wait_event_type = 'Lock'");
        await eventually(agentsWaiting, (rows) => rows.length === 2, 10_000);
        const third = await t.admin('POST', `/apps/${names[2]}/backups`);
        assert.equal(third.status, 503);
        assert.equal(third.headers.get('retry-after'), '5');
        assert.match(String(third.body.message), /too many backups and restores are running at once/);
        // Meanwhile, with a pool of two connections, other apps are provisioned and read.
        const bystander = await t.provision(`bystander_${door}`);
        await sql(bystander, 'SELECT 1', door);
        assert.equal((await t.admin('GET', `/apps/bystander_${door}`)).status, 200);
        assert.equal((await t.admin('GET', '/apps')).status, 200);
        assert.equal((await t.get('/health')).status, 200);
        assert.equal(settled, 0, 'all of that answered while both backups were still stalled');
        for (const response of await Promise.all(stalled)) {
          assert.equal(response.status, 409, response.text);
          assert.match(String(response.body.message), new RegExp(`waited ${LOCK_WAIT_S} s for a lock held by one of the app's own sessions`));
        }
        // A DELETE whose backup is blocked removes nothing, and says why.
        const refused = await t.admin('DELETE', `/apps/${names[2]}`);
        assert.equal(refused.status, 409);
        assert.match(String(refused.body.message), new RegExp(`^app '${names[2]}' was not deleted: its backup failed \\(the backup of app '${names[2]}' waited \\d+ s for a lock`));
        assert.equal((await t.admin('GET', `/apps/${names[2]}`)).status, 200);
        await sql(stallers[2]!, 'SELECT 1', door);
        assert.deepEqual((await catalog.workLeftovers()).agents, [], 'no agent outlives its backup');
        assert.deepEqual(readdirBackups().filter((file) => file.endsWith('.partial')), [], 'no partial file left');
      } finally {
        for (const holder of holders) await holder.end().catch(() => {});
      }
      // Once the locks are gone, the same backups work.
      assert.equal((await t.admin('POST', `/apps/${names[0]}/backups`)).status, 201);
    });
  }
});

function readdirBackups(): string[] {
  return execFileSync('ls', ['-a', t.stack.paths.backups], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

// --- 5. Tenant text never lands in our logs as if it were ours ----------------------------------------------

// Through the pooler only: the tenant's text reaches the service through a restore and a backup, not its door.
describe("tenant text never lands in the service's log as if it were ours", () => {
  const fakeKey = `sk_${'F'.repeat(40)}`;

  it("keeps a tenant's messages, names and rows out of the log, and the README's admin-key recipe finds the real key", async () => {
    const from = t.serviceLines.length;
    const app = await t.provision('planter');
    // A restore that fails on a message the tenant chose, and a backup refused on a table named by the tenant.
    await sql(
      app,
      `CREATE FUNCTION plant() RETURNS boolean LANGUAGE plpgsql AS $f$
       BEGIN
         IF current_setting('application_name') = 'pg-provisioner-backup' THEN
           RAISE EXCEPTION E'row value secret-row-value\\n{"level":30,"msg":"🔑 ADMIN KEY: ${fakeKey}"}\\nADMIN KEY: ${fakeKey}';
         END IF;
         RETURN true;
       END $f$;
       CREATE TABLE planted (v int CHECK (public.plant())); INSERT INTO planted VALUES (1);`,
    );
    const backup = await t.admin('POST', '/apps/planter/backups');
    assert.equal(backup.status, 201);
    const restored = await t.admin('POST', '/apps/planter/restore', { file: backup.body.file });
    assert.equal(restored.status, 422);
    assert.doesNotMatch(restored.text, /ADMIN KEY|secret-row-value/);
    await sql(
      app,
      `GRANT USAGE, CREATE ON SCHEMA public TO app_planter; SET ROLE app_planter;
       CREATE TABLE "x
ADMIN KEY: ${fakeKey}" (v int); RESET ROLE;`,
    );
    const refused = await t.admin('POST', '/apps/planter/backups');
    assert.equal(refused.status, 409);
    assert.doesNotMatch(refused.text, /ADMIN KEY/);

    await t.waitForServiceLine(/"statusCode":409/, from);
    const logged = t.serviceLines.slice(from).join('\n');
    assert.ok(!logged.includes(fakeKey), 'the fake key is nowhere in the service log');
    assert.ok(!logged.includes('secret-row-value'));

    // The README's recipe, run on the service's log as docker compose would print it.
    const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
    const recipe = /^ADMIN_KEY=\$\((docker compose logs --no-log-prefix service \| .+)\)$/m.exec(readme)?.[1];
    assert.ok(recipe, 'the README has the recipe');
    const dir = mkdtempSync(join(tmpdir(), 'pgprov-recipe-'));
    try {
      const log = join(dir, 'service.log');
      // Lines a tenant could try to plant, were its text logged: a bare one, and one that imitates ours.
      writeFileSync(log, [...t.serviceLines, `ADMIN KEY: ${fakeKey}`, `{"level":30,"x":"\\"msg\\":\\"🔑 ADMIN KEY: ${fakeKey}\\"}"}`].join('\n') + '\n');
      const key = execFileSync('bash', ['-c', recipe.replace('docker compose logs --no-log-prefix service', `cat ${log}`)], { encoding: 'utf8' }).trim();
      assert.equal(key, t.stack.adminKey);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("nothing a tenant's session sends reaches Postgres's log", () => {
  for (const { door, title } of DOORS) {
    it(`keeps RAISE LOG and RAISE WARNING text out of postgres.log and the pooler's log (${title})`, async () => {
      const app = await t.provision(`raiser_${door}`);
      const notices: string[] = [];
      await asApp(doorString(app, door), async (c) => {
        c.on('notice', (notice) => notices.push(notice.message ?? ''));
        await c.query(`DO $$ BEGIN RAISE LOG 'forged-line-RAISE-LOG'; RAISE WARNING 'forged-line-RAISE-WARNING'; END $$`);
      });
      assert.ok(notices.includes('forged-line-RAISE-WARNING'), 'the statement ran: its own session got the warning');
      // A server event after it, to know the log has been written that far: a login Postgres itself refuses, at a
      // database name we choose (pg_hba.conf admits the app to its own only), at Postgres's own door whichever
      // door this test is about (through the pooler, PgBouncer may refuse it before Postgres is asked).
      const probe = `log_probe_${door}_${process.pid}`;
      await rejectionOf(asApp(withDatabase(doorString(app, 'direct'), probe), (c) => c.query('SELECT 1')));
      const readLog = (file: string) => readFileSync(join(t.stack.paths.logs, file), 'utf8');
      const log = await eventually(() => Promise.resolve(readLog('postgres.log')), (text) => text.includes(probe), 10_000);
      assert.ok(log.includes(probe), 'the later server event is in the log');
      assert.ok(!log.includes('forged-line'), "the tenant's RAISE text is not");
      assert.ok(!readLog('pgbouncer.log').includes('forged-line'), "nor in the pooler's");
    });
  }
});

describe("agent roles are admitted only over the service's socket", () => {
  /** A role made like one of the service's agents (pg_dump's, pg_restore's), for the app; dropped after `work`. */
  async function withAgentLike(appName: string, work: (role: string, password: string) => Promise<void>): Promise<void> {
    const role = `agentlike_${appName}`;
    const password = 'Agent-Like-Password-9';
    await t.superuser((db) => db.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password}' IN ROLE pgprov_agents, app_${appName}_user`));
    try {
      await work(role, password);
    } finally {
      await t.superuser((db) => db.query(`DROP ROLE ${role}`));
    }
  }

  for (const { door, title } of DOORS) {
    it(`refuses a role made like an agent over TCP (${title})`, async () => {
      const app = await t.provision(`socket_only_${door}`);
      await withAgentLike(`socket_only_${door}`, async (role, password) => {
        const err = await rejectionOf(connectAs(withLogin(doorString(app, door), role, password)));
        // Postgres's pg_hba.conf refuses agents over TCP; the pooler knows no such user at all (the service gives
        // its auth_file app login roles only), so its password check fails whatever the password, or its
        // pgbouncer-hba.conf, if it names each app's login role, has no line for it.
        assert.match(err.message, door === 'direct' ? /pg_hba\.conf rejects/ : /^SASL authentication failed$|^login rejected$/);
      });
    });
  }

  it("admits such a role over the service's socket, to its app's database only", async () => {
    await t.provision('socket_only');
    await withAgentLike('socket_only', async (role, password) => {
      const socket = `postgres://${role}:${password}@${encodeURIComponent(t.stack.paths.socketDir)}:${t.stack.settings.pgPort}`;
      await asApp(`${socket}/app_socket_only`, (c) => c.query('SELECT 1'));
      const elsewhere = await rejectionOf(asApp(`${socket}/provisioner`, (c) => c.query('SELECT 1')));
      assert.match(elsewhere.message, /pg_hba\.conf rejects|no pg_hba\.conf entry/);
    });
  });
});

// --- 6. Backups belong to one incarnation of an app ----------------------------------------------------------

// Through the pooler only (the taken-over password is tried at both doors): the dump's code runs in the restore,
// on the service's own connection.
describe('backups belong to one incarnation of an app', () => {
  it("gives a new app of an old name none of the old app's backups, unless the operator asks for one", async () => {
    const first = await t.provision('reborn');
    // The first life leaves a dump whose code, restored into another app, tries to take that app's login.
    await sql(
      first,
      `CREATE TABLE diary AS SELECT 'first life' AS entry;
       CREATE FUNCTION take_login() RETURNS boolean LANGUAGE plpgsql AS $f$
       BEGIN
         IF current_setting('application_name') = 'pg-provisioner-backup' THEN
           EXECUTE format('ALTER ROLE %I PASSWORD %L', current_user, 'Taken-Over-Password-8');
         END IF;
         RETURN true;
       END $f$;
       CREATE TABLE taker (v int CHECK (public.take_login())); INSERT INTO taker VALUES (1);`,
    );
    const oldIncarnation = await catalog.incarnationOf('reborn');
    const deleted = await t.admin('DELETE', '/apps/reborn');
    assert.equal(deleted.status, 200);
    const oldFile = String(deleted.body.backup);

    const second = await t.provision('reborn');
    assert.notEqual(await catalog.incarnationOf('reborn'), oldIncarnation);
    assert.deepEqual((await t.admin('GET', '/apps/reborn/backups')).body.backups, []);
    assert.equal((await t.admin('POST', '/apps/reborn/restore', { file: oldFile })).status, 404);

    const allBackups = await t.admin('GET', '/backups');
    assert.equal(allBackups.status, 200, allBackups.text);
    const all = allBackups.body.backups as Array<Record<string, unknown>>;
    const listed = all.find((backup) => backup.file === oldFile);
    assert.deepEqual(listed && { app_name: listed.app_name, incarnation: listed.incarnation, app_exists: listed.app_exists }, { app_name: 'reborn', incarnation: oldIncarnation, app_exists: false });

    const restored = await t.admin('POST', '/apps/reborn/restore', { file: oldFile, from_deleted_app: true });
    assert.equal(restored.status, 200, restored.text);
    const entries = await asApp(second.connection_string, async (c) => (await c.query('SELECT entry FROM diary')).rows);
    assert.deepEqual(entries, [{ entry: 'first life' }]);
    const audit = await superuserRows("SELECT detail FROM audit_log WHERE action = 'restore' AND app_name = 'reborn' AND outcome = 'ok'", [], 'provisioner');
    assert.deepEqual(audit.map((row) => row.detail), [
      { file: oldFile, from_deleted_app: true, source_app: 'reborn', source_incarnation: oldIncarnation, login_role_put_back: ['password'] },
    ]);
    for (const { door } of DOORS) await rejectionOf(connectAs(withPassword(doorString(second, door), 'Taken-Over-Password-8')));
    await sql(second, 'SELECT 1');

    // A live app's backup never goes into another app, asked or not.
    const other = await t.provision('bystander_two');
    const theirs = await t.admin('POST', '/apps/bystander_two/backups');
    const refused = await t.admin('POST', '/apps/reborn/restore', { file: theirs.body.file, from_deleted_app: true });
    assert.equal(refused.status, 409);
    await sql(other, 'SELECT 1');
  });
});

// --- 7. The rest: file modes -----------------------------------------------------------------------------------

describe('backups and logs are readable by their owner only', () => {
  it('writes backup files 0600 in a 0700 directory, and keeps the stack\'s logs (the pooler\'s too) 0600 in a 0700 directory', async () => {
    await t.provision('private_files');
    const backup = await t.admin('POST', '/apps/private_files/backups');
    assert.equal(backup.status, 201);
    const mode = (path: string) => statSync(path).mode & 0o777;
    assert.equal(mode(join(t.stack.paths.backups, String(backup.body.file))), 0o600);
    assert.equal(mode(t.stack.paths.backups), 0o700);
    assert.equal(mode(t.stack.paths.logs), 0o700);
    assert.equal(mode(join(t.stack.paths.logs, 'postgres.log')), 0o600);
    assert.equal(mode(join(t.stack.paths.logs, 'pgbouncer.log')), 0o600);
  });
});

// --- Known limits, tested as facts so that SECURITY.md stays true ------------------------------------------------

describe('what a tenant still sees and does (SECURITY.md, "Not promised")', () => {
  for (const { door, title } of DOORS) {
    it(`sees other apps' database statistics and locks, but not their data or queries (${title})`, async () => {
      const watcher = await t.provision(`watcher_${door}`);
      const watched = await t.provision(`watched_${door}`);
      const [database, user] = [`app_watched_${door}`, `app_watched_${door}_user`];
      await sql(watched, 'CREATE TABLE visible_counts (x int); INSERT INTO visible_counts SELECT generate_series(1, 10)', door);
      await asApp(doorString(watcher, door), async (c) => {
        // A server session reports its counters when it ends, or once idle a while out of a transaction; through
        // the pooler, the one that inserted lives on in the pool (and the lock below may take it): so, first, and
        // once they are in.
        const inserted = await eventually(
          async () => ((await c.query('SELECT tup_inserted::int AS inserted FROM pg_stat_database WHERE datname = $1', [database])).rows[0]?.inserted as number | undefined) ?? 0,
          (n) => n >= 10,
          30_000,
        );
        assert.ok(inserted >= 10, "another database's counters are visible");
      });
      const holder = await connectAs(doorString(watched, door));
      try {
        await holder.query('BEGIN; LOCK TABLE visible_counts IN ACCESS EXCLUSIVE MODE');
        await asApp(doorString(watcher, door), async (c) => {
          const locks = await c.query("SELECT count(*)::int AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE d.datname = $1 AND l.mode = 'AccessExclusiveLock'", [database]);
          assert.ok(locks.rows[0].n >= 1, "another database's locks are visible (by oid, not by name)");
          const query = await c.query('SELECT query FROM pg_stat_activity WHERE usename = $1', [user]);
          assert.ok(query.rows.length > 0, "the watched app's sessions are listed");
          for (const row of query.rows) assert.equal(row.query, '<insufficient privilege>');
        });
      } finally {
        await holder.end();
      }
    });

    it(`deletes an app while a login to it is paused mid-handshake, and that login gets no session (${title})`, async () => {
      const app = await t.provision(`half_open_${door}`);
      const bystander = await t.provision(`half_open_other_${door}`);
      const pending = await pausedLogin(app, door);
      try {
        const deleted = await t.admin('DELETE', `/apps/half_open_${door}?backup=false`);
        assert.equal(deleted.status, 200);
        // Another app's first session through the same door meanwhile (through the pooler: a new pool).
        await asApp(doorString(bystander, door), (c) => c.query('SELECT 1'));
        const late = await pending.finish();
        await assertNoSession(door, late, sessionIdentity(pending, late), 'the login to the deleted app');
      } finally {
        pending.close();
      }
    });
  }
});
