// A hostile tenant with nothing but its own connection string, and an operator doing routine work (restore,
// rotate, delete, back up): every path from one app's database to the superuser, to other apps and to the
// service that such a tenant was found to have is attacked here, against the real stack (SECURITY.md,
// promises 8 to 13).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
import { catalogOf } from '../helpers/catalog.js';
import { beginLogin, type PausedLogin } from '../helpers/raw-pg.js';
import { asApp, connectAs } from '../helpers/app-sessions.js';
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

const sql = (app: ProvisionedApp, text: string) => asApp(app.connection_string, (c) => c.query(text));
const superuserRows = async (text: string, params: unknown[] = [], database = 'postgres') =>
  t.superuser(async (db) => (await db.query(text, params)).rows, database);
const catalog = catalogOf(() => t);

/** A raw login as the app, with `password` (default: the app's own), paused after the server read the role's password. */
function pausedLogin(app: ProvisionedApp, password?: string): Promise<PausedLogin> {
  const url = new URL(app.connection_string);
  return beginLogin({ host: url.hostname, port: Number(url.port), user: url.username, password: password ?? decodeURIComponent(url.password), database: url.pathname.slice(1) });
}

function withPassword(connectionString: string, password: string): string {
  const url = new URL(connectionString);
  url.password = password;
  return url.toString();
}

// --- 1. No operation runs tenant code with more rights than the tenant --------------------------------------

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
    // restore) and its settings.
    await rejectionOf(connectAs(withPassword(app.connection_string, 'Trap-Chosen-Password-7')));
    assert.equal(await asApp(app.connection_string, async (c) => (await c.query('SHOW statement_timeout')).rows[0].statement_timeout), '0');
    const audit = await superuserRows("SELECT detail FROM audit_log WHERE action = 'restore' AND app_name = 'trapper' AND outcome = 'ok'", [], 'provisioner');
    assert.deepEqual(audit.map((row) => row.detail.login_role_put_back), [['password', 'settings']]);
  });

  after(() => rmSync(marker, { force: true }));
});

// --- 2. Rotation really locks out the old password --------------------------------------------------------

describe('a rotation leaves the old password no way in', () => {

  it('refuses a login whose handshake began before the rotation and finishes during it', async () => {
    const app = await t.provision('rotor_one');
    const pending = await pausedLogin(app); // the server has read the old password's verifier
    const rotating = t.admin('POST', '/apps/rotor_one/rotate');
    try {
      // Finish the handshake once the rotation is under way (the old code never got here before answering).
      const underWay = await eventually(() => catalog.loginAllowed('app_rotor_one_user'), (allowed) => !allowed, 10_000);
      const early = await pending.finish();
      assert.equal(underWay, false);
      assert.deepEqual(early.ok, false, 'no session with the old password');
    } finally {
      pending.close();
    }
    const rotated = await rotating;
    assert.equal(rotated.status, 200);
    await rejectionOf(connectAs(app.connection_string));
    await asApp(String(rotated.body.connection_string), (c) => c.query('SELECT 1'));
  });

  it('refuses a login whose handshake began before the rotation and finishes after it has answered', async () => {
    const app = await t.provision('rotor_two');
    const pending = await pausedLogin(app);
    try {
      const rotated = await t.admin('POST', '/apps/rotor_two/rotate');
      assert.equal(rotated.status, 200);
      const late = await pending.finish();
      assert.equal(late.ok, false, 'no session with the old password');
      await asApp(String(rotated.body.connection_string), (c) => c.query('SELECT 1'));
    } finally {
      pending.close();
    }
  });

  it('leaves no session of the old password, and no password of its own choosing', async () => {
    const app = await t.provision('rotor_three');
    const chosen = 'Attacker-Chosen-Password-1';
    // Old sessions that set a password of their own as fast as they can (racing the rotation's own ALTER ROLE),
    // and logins begun with that password, held open across the rotation.
    const attackers = await Promise.all([1, 2, 3].map(() => connectAs(app.connection_string)));
    let stop = false;
    const settingPasswords = Promise.all(
      attackers.map(async (attacker) => {
        while (!stop) await attacker.query(`ALTER ROLE app_rotor_three_user PASSWORD '${chosen}'`).catch(() => (stop = true));
      }),
    );
    const pending: PausedLogin[] = [];
    const rotating = t.admin('POST', '/apps/rotor_three/rotate');
    let rotated: Awaited<typeof rotating> | undefined;
    void rotating.then((r) => (rotated = r));
    try {
      while (!rotated) {
        const login = await pausedLogin(app, chosen).catch(() => undefined);
        if (login) pending.push(login);
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      stop = true;
      await settingPasswords;
      assert.equal(rotated.status, 200);
      for (const attacker of attackers) assert.ok((await rejectionOf(attacker.query('SELECT 1'))) instanceof Error, 'the old sessions were ended');
      for (const login of pending) assert.equal((await login.finish()).ok, false, 'no session with a password the attacker chose');
      await rejectionOf(connectAs(withPassword(app.connection_string, chosen)));
      await rejectionOf(connectAs(app.connection_string));
      await asApp(String(rotated.body.connection_string), (c) => c.query('SELECT 1'));
    } finally {
      stop = true;
      for (const login of pending) login.close();
      for (const attacker of attackers) await attacker.end().catch(() => {});
    }
  });
});

// --- 3. One tenant's GRANTs cannot block or taint other apps ------------------------------------------------

describe("one tenant's grants cannot block or taint other apps", () => {
  let granter: ProvisionedApp;
  before(async () => {
    granter = await t.provision('granter');
    await sql(granter, 'CREATE TABLE bait (x int); ALTER TABLE bait ENABLE ROW LEVEL SECURITY');
  });

  it('deletes an app whatever another tenant granted to its roles, and frees the name', async () => {
    await t.provision('grantee');
    await sql(
      granter,
      `GRANT SELECT, INSERT ON bait TO app_grantee_user, app_grantee;
       ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO app_grantee_user;
       CREATE POLICY bait_policy ON bait TO app_grantee_user USING (true);
       CREATE SCHEMA lure; GRANT USAGE ON SCHEMA lure TO app_grantee_user;
       CREATE FUNCTION lure.f() RETURNS int LANGUAGE sql AS 'SELECT 1'; GRANT EXECUTE ON FUNCTION lure.f() TO app_grantee;`,
    );
    assert.ok((await catalog.foreignGrants('app_grantee_user', 'app_grantee')).length > 0, 'the grants are in place');
    // And a lock on the policy's table, held as long as the tenant likes: removing a role from a policy needs
    // an ACCESS EXCLUSIVE lock on it.
    const holder = await holdLock(granter, 'bait');
    const deleted = await t.admin('DELETE', '/apps/grantee?backup=false');
    assert.equal(deleted.status, 200, deleted.text);
    assert.ok((await rejectionOf(holder.query('SELECT 1'))) instanceof Error, "the session that blocked another app's deletion was ended");
    assert.deepEqual(await catalog.app('grantee'), { roles: [], databases: [], registry: [] });
    const again = await t.provision('grantee');
    assert.deepEqual(await catalog.foreignGrants('app_grantee_user', 'app_grantee'), [], 'the new app inherits nothing');
    await sql(again, 'SELECT 1');
    await sql(granter, 'SELECT count(*) FROM bait'); // the granter's own objects are untouched
  });

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

  it('keeps provisioning working when a tenant names a prepared set in a policy and holds a lock on its table', async () => {
    const [id] = await eventually(() => catalog.readySetIds(), (found) => found.length >= 1, 20_000);
    assert.ok(id);
    await sql(granter, `CREATE TABLE jam (x int); ALTER TABLE jam ENABLE ROW LEVEL SECURITY; CREATE POLICY jam_policy ON jam TO pgprov_ready_${id}_user USING (true)`);
    const holder = await holdLock(granter, 'jam');
    const gone = await eventually(
      () => catalog.rolesLike(`pgprov\\_ready\\_${id}%`),
      (rows) => rows.length === 0,
      30_000,
    );
    assert.deepEqual(gone, [], 'the tainted set was removed, roles and database');
    assert.ok((await rejectionOf(holder.query('SELECT 1'))) instanceof Error, 'the session holding the lock was ended');
    for (const name of ['after_jam_1', 'after_jam_2', 'after_jam_3']) await sql(await t.provision(name), 'SELECT 1');
    assert.deepEqual(await superuserRows("SELECT id FROM ready_pool r WHERE state = 'ready' AND NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'pgprov_ready_' || r.id)", [], 'provisioner'), []);
  });

  it("removes another app's dump agent, and answers its backup, whatever a tenant names the agent in", async () => {
    const prey = await t.provision('agent_prey');
    // A dump that takes long enough for the tenant to see the agent appear in pg_roles.
    await sql(prey, 'CREATE TABLE bulk AS SELECT g, md5(g::text) AS h FROM generate_series(1, 300000) g');
    await sql(granter, 'CREATE TABLE snare (x int); ALTER TABLE snare ENABLE ROW LEVEL SECURITY');
    const backup = t.admin('POST', '/apps/agent_prey/backups');
    const watcher = await connectAs(granter.connection_string);
    let holder: pg.Client | undefined;
    try {
      const agent = await eventually(
        async () => (await watcher.query("SELECT rolname FROM pg_roles WHERE rolname = 'pgprov_dump_agent_prey'")).rows.length,
        (n) => n > 0,
        20_000,
      );
      assert.equal(agent, 1, 'the tenant saw the agent');
      await watcher.query('CREATE POLICY snare_policy ON snare TO pgprov_dump_agent_prey USING (true)');
      holder = await holdLock(granter, 'snare');
      const answered = await backup;
      assert.equal(answered.status, 201, answered.text);
      const agents = await eventually(async () => (await catalog.workLeftovers()).agents, (rows) => rows.length === 0, 20_000);
      assert.deepEqual(agents, [], 'no agent left');
      assert.equal((await t.admin('POST', '/apps/agent_prey/backups')).status, 201, 'the next backup works too');
    } finally {
      await watcher.end().catch(() => {});
      await holder?.end().catch(() => {});
    }
  });
});

/** A session of `app` that holds a lock on `table` (read, in an open transaction) until it is ended. */
async function holdLock(app: ProvisionedApp, table: string): Promise<pg.Client> {
  const holder = await connectAs(app.connection_string);
  await holder.query(`SET idle_in_transaction_session_timeout = 0; BEGIN; SELECT * FROM ${table}`);
  return holder;
}

// --- 4. Tenants cannot starve the service through their own backups ----------------------------------------

describe('tenants cannot starve the service through their own backups', () => {
  it('bounds lock waits, caps concurrent backups, and keeps answering other apps meanwhile', { timeout: 120_000 }, async () => {
    const names = ['staller_a', 'staller_b', 'staller_c'];
    const stallers = [];
    for (const name of names) stallers.push(await t.provision(name));
    const holders: pg.Client[] = [];
    try {
      // A and C hold a table lock; B a lock on a view (pg_dump's --lock-wait-timeout covers only its first table locks).
      for (const [i, app] of stallers.entries()) {
        await sql(app, 'CREATE TABLE held (x int); CREATE VIEW held_view AS SELECT 1 AS x');
        const holder = await connectAs(app.connection_string);
        await holder.query(i === 1 ? 'BEGIN; CREATE OR REPLACE VIEW held_view AS SELECT 2 AS x' : 'BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE');
        holders.push(holder);
      }
      const stalled = [t.admin('POST', '/apps/staller_a/backups'), t.admin('POST', '/apps/staller_b/backups')];
      let settled = 0;
      for (const backup of stalled) void backup.finally(() => settled++);
      // Both backup slots taken: a third is refused at once with a 503 that says when to retry.
      const agentsWaiting = () => superuserRows("SELECT usename FROM pg_stat_activity WHERE usename LIKE 'pgprov\\_dump\\_%' AND wait_event_type = 'Lock'");
      await eventually(agentsWaiting, (rows) => rows.length === 2, 10_000);
      const third = await t.admin('POST', '/apps/staller_c/backups');
      assert.equal(third.status, 503);
      assert.equal(third.headers.get('retry-after'), '5');
      assert.match(String(third.body.message), /too many backups and restores are running at once/);
      // Meanwhile, with a pool of two connections, other apps are provisioned and read.
      const bystander = await t.provision('bystander');
      await sql(bystander, 'SELECT 1');
      assert.equal((await t.admin('GET', '/apps/bystander')).status, 200);
      assert.equal((await t.admin('GET', '/apps')).status, 200);
      assert.equal((await t.get('/health')).status, 200);
      assert.equal(settled, 0, 'all of that answered while both backups were still stalled');
      for (const response of await Promise.all(stalled)) {
        assert.equal(response.status, 409, response.text);
        assert.match(String(response.body.message), new RegExp(`waited ${LOCK_WAIT_S} s for a lock held by one of the app's own sessions`));
      }
      // A DELETE whose backup is blocked removes nothing, and says why.
      const refused = await t.admin('DELETE', '/apps/staller_c');
      assert.equal(refused.status, 409);
      assert.match(String(refused.body.message), /^app 'staller_c' was not deleted: its backup failed \(the backup of app 'staller_c' waited \d+ s for a lock/);
      assert.equal((await t.admin('GET', '/apps/staller_c')).status, 200);
      await sql(stallers[2]!, 'SELECT 1');
      assert.deepEqual((await catalog.workLeftovers()).agents, [], 'no agent outlives its backup');
      assert.deepEqual(readdirBackups().filter((file) => file.endsWith('.partial')), [], 'no partial file left');
    } finally {
      for (const holder of holders) await holder.end().catch(() => {});
    }
    // Once the locks are gone, the same backups work.
    assert.equal((await t.admin('POST', '/apps/staller_a/backups')).status, 201);
  });
});

function readdirBackups(): string[] {
  return execFileSync('ls', ['-a', t.stack.paths.backups], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

// --- 5. Tenant text never lands in our logs as if it were ours ----------------------------------------------

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
  it('keeps RAISE LOG and RAISE WARNING text out of postgres.log', async () => {
    const app = await t.provision('raiser');
    await sql(app, `DO $$ BEGIN RAISE LOG 'forged-line-RAISE-LOG'; RAISE WARNING 'forged-line-RAISE-WARNING'; END $$`);
    // A server event after it, to know the log has been written that far: a failed login with a name we choose.
    const probe = `log-probe-${process.pid}`;
    await rejectionOf(connectAs(withPassword(app.connection_string, 'wrong').replace('app_raiser_user', probe)));
    const log = await eventually(() => Promise.resolve(readFileSync(join(t.stack.paths.logs, 'postgres.log'), 'utf8')), (text) => text.includes(probe), 10_000);
    assert.ok(log.includes(probe), 'the later server event is in the log');
    assert.ok(!log.includes('forged-line'), "the tenant's RAISE text is not");
  });
});

describe("agent roles are admitted only over the service's socket", () => {
  it('refuses a role made like an agent over TCP, and admits it over the socket to its app only', async () => {
    const app = await t.provision('socket_only');
    await t.superuser((db) =>
      db.query(`CREATE ROLE agentlike_socket_only LOGIN PASSWORD 'Agent-Like-Password-9' IN ROLE pgprov_agents, app_socket_only_user`),
    );
    try {
      const tcp = withPassword(app.connection_string, 'Agent-Like-Password-9').replace('app_socket_only_user', 'agentlike_socket_only');
      const err = await rejectionOf(connectAs(tcp));
      assert.match(err.message, /pg_hba\.conf rejects/);
      const socket = `postgres://agentlike_socket_only:Agent-Like-Password-9@${encodeURIComponent(t.stack.paths.socketDir)}:${t.stack.settings.pgPort}`;
      await asApp(`${socket}/app_socket_only`, (c) => c.query('SELECT 1'));
      const elsewhere = await rejectionOf(asApp(`${socket}/provisioner`, (c) => c.query('SELECT 1')));
      assert.match(elsewhere.message, /pg_hba\.conf rejects|no pg_hba\.conf entry/);
    } finally {
      await t.superuser((db) => db.query('DROP ROLE agentlike_socket_only'));
    }
  });
});

// --- 6. Backups belong to one incarnation of an app ----------------------------------------------------------

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
    await rejectionOf(connectAs(withPassword(second.connection_string, 'Taken-Over-Password-8')));
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
  it('writes backup files 0600 in a 0700 directory, and keeps the stack\'s logs in a 0700 directory', async () => {
    await t.provision('private_files');
    const backup = await t.admin('POST', '/apps/private_files/backups');
    assert.equal(backup.status, 201);
    const mode = (path: string) => statSync(path).mode & 0o777;
    assert.equal(mode(join(t.stack.paths.backups, String(backup.body.file))), 0o600);
    assert.equal(mode(t.stack.paths.backups), 0o700);
    assert.equal(mode(t.stack.paths.logs), 0o700);
    assert.equal(mode(join(t.stack.paths.logs, 'postgres.log')), 0o600);
  });
});

// --- Known limits, tested as facts so that SECURITY.md stays true ------------------------------------------------

describe('what a tenant still sees and does (SECURITY.md, "Not promised")', () => {
  it("sees other apps' database statistics and locks, but not their data or queries", async () => {
    const watcher = await t.provision('watcher');
    const watched = await t.provision('watched');
    await sql(watched, 'CREATE TABLE visible_counts (x int); INSERT INTO visible_counts SELECT generate_series(1, 10)');
    const holder = await connectAs(watched.connection_string);
    try {
      await holder.query('BEGIN; LOCK TABLE visible_counts IN ACCESS EXCLUSIVE MODE');
      await asApp(watcher.connection_string, async (c) => {
        const stats = await c.query("SELECT tup_inserted::int AS inserted FROM pg_stat_database WHERE datname = 'app_watched'");
        assert.ok(stats.rows[0].inserted >= 10, "another database's counters are visible");
        const locks = await c.query("SELECT count(*)::int AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE d.datname = 'app_watched' AND l.mode = 'AccessExclusiveLock'");
        assert.ok(locks.rows[0].n >= 1, "another database's locks are visible (by oid, not by name)");
        const query = await c.query("SELECT query FROM pg_stat_activity WHERE usename = 'app_watched_user'");
        for (const row of query.rows) assert.equal(row.query, '<insufficient privilege>');
      });
    } finally {
      await holder.end();
    }
  });

  it('deletes an app while a login to it is paused mid-handshake, and that login gets no session', async () => {
    const app = await t.provision('half_open');
    const pending = await pausedLogin(app);
    try {
      const deleted = await t.admin('DELETE', '/apps/half_open?backup=false');
      assert.equal(deleted.status, 200);
      const late = await pending.finish();
      assert.equal(late.ok, false);
    } finally {
      pending.close();
    }
  });
});
