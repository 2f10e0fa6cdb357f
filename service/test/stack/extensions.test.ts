// Extensions an operator enables (APP_EXTENSIONS_ALLOWED; src/domain/operations/extensions.ts,
// src/db/postgres-server/extensions.ts), on the real stack: installed as the superuser into a schema of the
// service's in the app's database; what the app then sees and may call; the traps a tenant lays for a superuser's
// CREATE EXTENSION; refusals; removal; backups and restores (from a deleted app too) of an app that has them; and a
// crash on either side of the install's COMMIT.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SERVICE_DIR } from '../../scripts/lib/local-stack.js';
import { asApp, doorString } from '../helpers/app-sessions.js';
import { catalogOf } from '../helpers/catalog.js';
import { eventually, rejectionOf } from '../helpers/conditions.js';
import { rawRequest } from '../helpers/raw-http.js';
import type { ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

describe('service start-up', () => {
  it('refuses to start when APP_EXTENSIONS_ALLOWED names an extension the service refuses, naming it and why', () => {
    const run = spawnSync(process.execPath, [join(SERVICE_DIR, 'dist', 'server.js')], {
      env: { PATH: process.env.PATH ?? '', POSTGRES_PASSWORD: 'x', APP_EXTENSIONS_ALLOWED: 'pg_stat_statements,dblink' },
      encoding: 'utf8',
      timeout: 10_000,
    });
    assert.equal(run.status, 1);
    assert.match(run.stderr, /APP_EXTENSIONS_ALLOWED is invalid: dblink is refused by the service whatever this setting says: it opens connections out of the app's database/);
    assert.doesNotMatch(run.stdout + run.stderr, /ADMIN KEY/);
  });
});

let t: TestStack;
before(async () => {
  // The default list, and one name the server does not have (to be told so).
  // The default list; earthdistance, which requires cube (trusted: the app's to create); and one name the server
  // does not have (to be told so).
  t = await startTestStack({ serviceEnv: { APP_EXTENSIONS_ALLOWED: 'pg_stat_statements,pgstattuple,earthdistance,no_such_extension' } });
});
after(async () => {
  await t?.stop();
});
const catalog = catalogOf(() => t);

type Row = Record<string, unknown>;
const sql = async (app: ProvisionedApp, text: string, params: unknown[] = []): Promise<Row[]> => asApp(app.connection_string, async (c) => (await c.query(text, params)).rows);
const superuserRows = async (text: string, params: unknown[] = [], database = 'postgres'): Promise<Row[]> => t.superuser(async (db) => (await db.query(text, params)).rows, database);
const install = (appName: string, name: unknown) => t.admin('POST', `/apps/${appName}/extensions`, { name });
const listed = async (appName: string) => {
  const response = await t.admin('GET', `/apps/${appName}/extensions`);
  assert.equal(response.status, 200, response.text);
  return response.body.extensions as Array<{ name: string; version: string; schema: string; installed_by: string }>;
};
const extensionRows = (database: string) =>
  superuserRows(
    `SELECT e.extname AS name, n.nspname AS schema, e.extowner::regrole::text AS owner FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
      WHERE e.extname <> 'plpgsql' ORDER BY 1`,
    [],
    database,
  );
/** The service's schema in `database`: its owner, and whether the app's login may create in it, or use it. */
const serviceSchema = async (database: string, login: string) =>
  (
    await superuserRows(
      `SELECT nspowner::regrole::text AS owner, has_schema_privilege($1, oid, 'CREATE') AS app_may_create, has_schema_privilege($1, oid, 'USAGE') AS app_may_use
         FROM pg_namespace WHERE nspname = 'extensions'`,
      [login],
      database,
    )
  )[0];
const auditOf = (appName: string, action: string) =>
  superuserRows('SELECT outcome, detail FROM audit_log WHERE app_name = $1 AND action = $2 ORDER BY id', [appName, action], 'provisioner');

describe('installing an extension the operator allows', () => {
  let main: ProvisionedApp;
  let other: ProvisionedApp;
  before(async () => {
    main = await t.provision('ext_main');
    other = await t.provision('ext_other');
  });

  it("installs pg_stat_statements as the superuser into the service's schema (201), answers 200 for it again, lists it as the service's, and audits both", async () => {
    const created = await install('ext_main', 'pg_stat_statements');
    assert.equal(created.status, 201, created.text);
    assert.deepEqual(created.body, { name: 'pg_stat_statements', version: '1.10', schema: 'extensions', installed_by: 'service' });
    const again = await install('ext_main', 'pg_stat_statements');
    assert.equal(again.status, 200, again.text);
    assert.deepEqual(again.body, created.body);

    assert.deepEqual(await listed('ext_main'), [
      { name: 'pg_stat_statements', version: '1.10', schema: 'extensions', installed_by: 'service' },
      { name: 'plpgsql', version: '1.0', schema: 'pg_catalog', installed_by: 'superuser' },
    ]);
    assert.deepEqual(await extensionRows('app_ext_main'), [{ name: 'pg_stat_statements', schema: 'extensions', owner: 'postgres' }]);
    // A schema of the superuser's, which the app may use and never write to.
    assert.deepEqual(await serviceSchema('app_ext_main', 'app_ext_main_user'), { owner: 'postgres', app_may_create: false, app_may_use: true });
    await assert.rejects(sql(main, 'CREATE TABLE extensions.mine (id int)'), { code: '42501' });
    assert.deepEqual(await auditOf('ext_main', 'install_extension'), [
      { outcome: 'ok', detail: { extension: 'pg_stat_statements', version: '1.10', created: true } },
      { outcome: 'ok', detail: { extension: 'pg_stat_statements', version: '1.10', created: false } },
    ]);
  });

  it("shows the app its own statements' statistics and never another app's query text; the reset stays the superuser's; no utility statement (a password) is kept", async () => {
    await sql(other, 'CREATE TABLE b_private_ledger (amount int); INSERT INTO b_private_ledger VALUES (1)');
    for (let i = 0; i < 3; i++) await sql(other, 'SELECT count(*) FROM b_private_ledger');
    await sql(main, 'CREATE TABLE a_own (id int PRIMARY KEY); INSERT INTO a_own SELECT generate_series(1, 100)');
    await sql(main, 'SELECT count(*) FROM a_own');
    // A utility statement holding a secret: an app sets its own password in SQL. (Through the direct door: the
    // new verifier is not the one the pooler holds until the next reconcile, so this app is used no more.)
    const password = 'Utility-Statement-Secret-5v9q';
    const setter = await t.provision('ext_pw_setter');
    await asApp(doorString(setter, 'direct'), (c) => c.query(`ALTER ROLE CURRENT_USER PASSWORD '${password}'`));

    const otherRole = Number((await superuserRows("SELECT oid FROM pg_roles WHERE rolname = 'app_ext_other_user'"))[0]!.oid);
    const seen = await sql(main, 'SELECT userid::int AS userid, query FROM extensions.pg_stat_statements');
    assert.ok(seen.some((row) => String(row.query).includes('FROM a_own')), 'the app sees its own statements');
    const others = seen.filter((row) => row.userid === otherRole);
    assert.ok(others.length > 0, "the other app's statements are counted…");
    assert.ok(others.every((row) => row.query === '<insufficient privilege>'), '…and their text is hidden');
    assert.ok(!seen.some((row) => String(row.query).includes('b_private_ledger')));
    // The superuser sees that text (the test could fail), and sees no password anywhere.
    const all = await superuserRows('SELECT query FROM extensions.pg_stat_statements', [], 'app_ext_main');
    assert.ok(all.some((row) => String(row.query).includes('FROM b_private_ledger')));
    assert.ok(!all.some((row) => /ALTER ROLE|CREATE ROLE|SCRAM-SHA-256|Utility-Statement-Secret/i.test(String(row.query))), "utility statements (the service's CREATE ROLE with a verifier, an app's ALTER ROLE … PASSWORD) are not tracked");

    // Resetting would reset every app's statistics: the superuser's alone.
    await assert.rejects(sql(main, 'SELECT extensions.pg_stat_statements_reset()'), { code: '42501' });
    await assert.rejects(sql(main, 'SELECT extensions.pg_stat_statements_reset(0, 0, 0)'), { code: '42501' });
  });

  it("installs pgstattuple with its functions granted to the app's database: the app measures its own tables, and no other app's", async () => {
    const created = await install('ext_main', 'pgstattuple');
    assert.equal(created.status, 201, created.text);
    assert.deepEqual(created.body, { name: 'pgstattuple', version: '1.5', schema: 'extensions', installed_by: 'service' });
    assert.deepEqual(await sql(main, "SELECT tuple_count::int FROM extensions.pgstattuple('a_own')"), [{ tuple_count: 100 }]);
    assert.equal((await sql(main, "SELECT leaf_pages::int FROM extensions.pgstatindex('a_own_pkey')"))[0]!.leaf_pages, 1);
    // Another app's table is in another database: its oid names nothing here.
    const foreign = Number((await superuserRows("SELECT 'b_private_ledger'::regclass::oid AS oid", [], 'app_ext_other'))[0]!.oid);
    const err = await rejectionOf(sql(main, 'SELECT * FROM extensions.pgstattuple($1::oid::regclass)', [foreign]));
    assert.match(err.message, /could not open relation with OID/);
  });

  it('answers 422 for a trusted extension, which the app creates itself and owns, and lists those as the app\'s', async () => {
    const trusted = await install('ext_main', 'pg_trgm');
    assert.equal(trusted.status, 422);
    assert.match(String(trusted.body.message), /extension 'pg_trgm' is trusted by Postgres: the app creates it itself in its own database \(CREATE EXTENSION "pg_trgm";\)/);
    await sql(main, 'CREATE EXTENSION pg_trgm; CREATE EXTENSION citext; CREATE EXTENSION hstore; CREATE EXTENSION pgcrypto; CREATE EXTENSION "uuid-ossp"');
    const byName = new Map((await listed('ext_main')).map((extension) => [extension.name, extension]));
    for (const name of ['pg_trgm', 'citext', 'hstore', 'pgcrypto', 'uuid-ossp']) assert.deepEqual([byName.get(name)?.schema, byName.get(name)?.installed_by], ['public', 'app'], name);
    assert.equal(byName.get('pgstattuple')?.installed_by, 'service');
  });

  it('refuses what the operator does not allow, what the server lacks (422) and a malformed request (400), installing nothing', async () => {
    const before = await listed('ext_main');
    const refused = await install('ext_main', 'dblink');
    assert.equal(refused.status, 422);
    assert.match(String(refused.body.message), /extension 'dblink' is refused by this service whatever its settings say: it opens connections out of the app's database/);
    const notListed = await install('ext_main', 'pgrowlocks');
    assert.equal(notListed.status, 422);
    assert.match(String(notListed.body.message), /extension 'pgrowlocks' is not in APP_EXTENSIONS_ALLOWED \(pg_stat_statements, pgstattuple, earthdistance, no_such_extension\)/);
    const missing = await install('ext_main', 'no_such_extension');
    assert.equal(missing.status, 422);
    assert.match(String(missing.body.message), /this Postgres server does not have it/);
    for (const body of [{ name: 'Bad;Name' }, { name: 'x'.repeat(64) }, { name: 5 }, {}, { name: 'pgstattuple', schema: 'public' }, []]) {
      const answer = await t.admin('POST', '/apps/ext_main/extensions', body);
      assert.equal(answer.status, 400, `${JSON.stringify(body)}: ${answer.text}`);
    }
    assert.equal((await install('no_such_app', 'pgstattuple')).status, 404);
    assert.equal((await t.post('/apps/ext_main/extensions', { name: 'pgstattuple' })).status, 401);
    assert.equal((await t.get('/apps/ext_main/extensions')).status, 401);
    assert.deepEqual(await listed('ext_main'), before);
    // A failure is answered at once and audited as soon as it can be: wait for the rows.
    const installs = await eventually(async () => (await auditOf('ext_main', 'install_extension')).slice(-3).map((row) => row.outcome), (outcomes) => !outcomes.includes('ok'), 30_000);
    assert.deepEqual(installs, ['extension_not_allowed', 'extension_not_allowed', 'extension_not_available']);
  });

  it("removes an extension the service installed, refuses while the app's objects use it (409), and never the app's own (422) or an absent one (404)", async () => {
    await sql(main, "CREATE VIEW my_sizes AS SELECT tuple_count FROM extensions.pgstattuple('a_own')");
    const inUse = await t.admin('DELETE', '/apps/ext_main/extensions/pgstattuple');
    assert.equal(inUse.status, 409);
    assert.match(String(inUse.body.message), /objects of the app depend on it/);
    await sql(main, 'DROP VIEW my_sizes');
    const removed = await t.admin('DELETE', '/apps/ext_main/extensions/pgstattuple');
    assert.equal(removed.status, 200, removed.text);
    assert.deepEqual(removed.body, { app_name: 'ext_main', removed: 'pgstattuple' });
    assert.ok(!(await listed('ext_main')).some((extension) => extension.name === 'pgstattuple'));
    assert.equal((await t.admin('DELETE', '/apps/ext_main/extensions/pgstattuple')).status, 404);
    const own = await t.admin('DELETE', '/apps/ext_main/extensions/pg_trgm');
    assert.equal(own.status, 422);
    assert.match(String(own.body.message), /the app's own: the app drops it itself/);
    assert.equal((await t.admin('DELETE', '/apps/ext_main/extensions/plpgsql')).status, 422);
    assert.equal((await t.admin('DELETE', '/apps/ext_main/extensions/Bad;Name')).status, 400);
    // A failure is answered at once and audited as soon as it can be: wait for all five rows.
    const removals = await eventually(async () => (await auditOf('ext_main', 'remove_extension')).map((row) => row.outcome), (outcomes) => outcomes.length >= 5, 30_000);
    assert.deepEqual(removals, ['extension_in_use', 'ok', 'extension_not_installed', 'extension_not_removable', 'extension_not_removable']);
  });

  it('answers a wrong method with 405 and Allow, the same through nginx and directly', async () => {
    const table: Array<[string, string, number, string?]> = [
      ['PUT', '/apps/ext_main/extensions', 405, 'GET, HEAD, POST'],
      ['DELETE', '/apps/ext_main/extensions', 405, 'GET, HEAD, POST'],
      ['GET', '/apps/ext_main/extensions/pgstattuple', 405, 'DELETE'],
      ['POST', '/apps/ext_main/extensions/pgstattuple', 405, 'DELETE'],
      ['GET', '/apps/ext_main/extensions/pgstattuple/x', 404],
    ];
    for (const [method, path, status, allow] of table) {
      for (const port of [t.stack.settings.httpPort, t.stack.settings.servicePort]) {
        const response = await rawRequest(port, { method, path, headers: { Authorization: `Bearer ${t.stack.adminKey}` } });
        assert.deepEqual([response.status, response.headers.allow], [status, allow], `${method} ${path} on ${port}`);
      }
    }
  });
});

describe("a superuser's CREATE EXTENSION in a tenant's database", () => {
  // Each trap records who ran it, and makes the app a superuser if it can: it would, run as the superuser.
  const TRAPS = `
    CREATE TABLE public.trap_log (who text, session_who text, via text);
    CREATE FUNCTION public.sprung(via text) RETURNS void LANGUAGE plpgsql AS $f$
    BEGIN
      INSERT INTO public.trap_log VALUES (current_user, session_user, via);
      BEGIN
        EXECUTE format('ALTER ROLE %I SUPERUSER', current_database() || '_user');
      EXCEPTION WHEN insufficient_privilege THEN NULL;
      END;
    END $f$;`;
  const trapped = async (app: string) => ({
    log: await superuserRows('SELECT who, session_who, via FROM public.trap_log', [], `app_${app}`),
    superuser: (await catalog.roleAttributes(`app_${app}_user`))?.rolsuper,
  });

  it("runs none of the tenant's code, whatever traps it lays in the schemas it owns for the script's names and the service's own statements", async () => {
    const tenant = await t.provision('ext_trap');
    await sql(
      tenant,
      `${TRAPS}
       -- What pg_stat_statements' script binds its views to, were the tenant's public on its search_path.
       CREATE FUNCTION public.pg_stat_statements(showtext boolean, OUT userid oid, OUT query text) RETURNS SETOF record
         LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.sprung('pg_stat_statements(boolean)'); END $f$;
       CREATE FUNCTION public.pg_stat_statements_info(OUT dealloc bigint) RETURNS SETOF bigint
         LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.sprung('pg_stat_statements_info()'); END $f$;
       -- Objects named like those the scripts make.
       CREATE VIEW public.pg_stat_statements AS SELECT * FROM public.pg_stat_statements(true);
       CREATE FUNCTION public.pgstattuple(regclass, OUT tuple_count bigint) RETURNS bigint
         LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.sprung('pgstattuple(regclass)'); tuple_count := 0; END $f$;
       -- Operators for the comparisons of the service's own catalog reads (extname = $1), and functions they call.
       CREATE FUNCTION public.trap_eq(name, text) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.sprung('=(name, text)'); RETURN $1::text = $2; END $f$;
       CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = text, FUNCTION = public.trap_eq);
       CREATE FUNCTION public.trap_eq_name(name, name) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.sprung('=(name, name)'); RETURN $1::text = $2::text; END $f$;
       CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = name, FUNCTION = public.trap_eq_name);
       CREATE FUNCTION public.current_setting(text) RETURNS text LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.sprung('current_setting(text)'); RETURN ''; END $f$;
       CREATE FUNCTION public.aclexplode(aclitem[], OUT grantor oid, OUT grantee oid, OUT privilege_type text, OUT is_grantable boolean) RETURNS SETOF record
         LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.sprung('aclexplode(aclitem[])'); END $f$;`,
    );
    // The trap it cannot lay: an event trigger (it would fire on the superuser's DDL).
    await assert.rejects(sql(tenant, "CREATE FUNCTION public.on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.sprung('event trigger'); END $f$; CREATE EVENT TRIGGER t ON ddl_command_end EXECUTE FUNCTION public.on_ddl()"), { code: '42501' });

    // The traps work: a superuser session whose search_path reaches public springs them (rolled back).
    await t.superuser(async (db) => {
      await db.query('BEGIN');
      await db.query('SET LOCAL search_path = public, pg_catalog');
      await db.query("SELECT 'a'::name = 'b'::text AS same");
      await db.query('SELECT * FROM pg_stat_statements(true)');
      const { rows } = await db.query('SELECT who, via FROM public.trap_log ORDER BY via');
      assert.deepEqual(rows, [{ who: 'postgres', via: '=(name, text)' }, { who: 'postgres', via: 'pg_stat_statements(boolean)' }]);
      assert.equal((await db.query("SELECT rolsuper FROM pg_roles WHERE rolname = 'app_ext_trap_user'")).rows[0].rolsuper, true);
      await db.query('ROLLBACK');
    }, 'app_ext_trap');
    assert.deepEqual(await trapped('ext_trap'), { log: [], superuser: false });

    for (const name of ['pg_stat_statements', 'pgstattuple']) assert.equal((await install('ext_trap', name)).status, 201, name);
    assert.deepEqual(await trapped('ext_trap'), { log: [], superuser: false });
    // The views are bound to the extension's own functions: even a superuser querying them later, with the
    // default search_path ("$user", public), runs none of the tenant's.
    const definition = String((await superuserRows("SELECT pg_get_viewdef('extensions.pg_stat_statements'::regclass) AS d", [], 'app_ext_trap'))[0]!.d);
    assert.match(definition, /FROM extensions\.pg_stat_statements\(true\)/);
    await superuserRows('SELECT count(*) FROM extensions.pg_stat_statements; SELECT * FROM extensions.pg_stat_statements_info', [], 'app_ext_trap');
    await superuserRows("SELECT tuple_count FROM extensions.pgstattuple('public.trap_log'::regclass)", [], 'app_ext_trap');
    assert.deepEqual(await trapped('ext_trap'), { log: [], superuser: false });
    await sql(tenant, 'SELECT count(*) FROM extensions.pg_stat_statements');
    assert.deepEqual(await extensionRows('app_ext_trap'), [
      { name: 'pg_stat_statements', schema: 'extensions', owner: 'postgres' },
      { name: 'pgstattuple', schema: 'extensions', owner: 'postgres' },
    ]);
  });

  it("installs one that requires another only when that one is in the service's schema, never with the app's public on the script's path", async () => {
    const tenant = await t.provision('ext_requires');
    const first = await install('ext_requires', 'earthdistance');
    assert.equal(first.status, 422);
    assert.match(String(first.body.message), /it requires extension cube: install that first/);
    await sql(tenant, 'CREATE EXTENSION cube');
    const inPublic = await install('ext_requires', 'earthdistance');
    assert.equal(inPublic.status, 422);
    assert.match(String(inPublic.body.message), /it requires extension cube, which is in schema public: .*Move it into extensions/);
    assert.deepEqual(await extensionRows('app_ext_requires'), [{ name: 'cube', schema: 'public', owner: 'app_ext_requires_user' }]);

    assert.equal((await install('ext_requires', 'pgstattuple')).status, 201);
    // The app cannot move its cube, and its own functions with it, into the service's schema…
    await assert.rejects(sql(tenant, 'ALTER EXTENSION cube SET SCHEMA extensions'), { code: '42501' });
    // …but it may create a trusted extension there: its objects are a superuser's, made by Postgres's own script.
    await sql(tenant, 'DROP EXTENSION cube; CREATE EXTENSION cube SCHEMA extensions');
    const created = await install('ext_requires', 'earthdistance');
    assert.equal(created.status, 201, created.text);
    assert.deepEqual(created.body, { name: 'earthdistance', version: '1.1', schema: 'extensions', installed_by: 'service' });
    // Its SQL functions name cube's unqualified: the app calls them with extensions on its path.
    const metres = await asApp(tenant.connection_string, async (c) => {
      await c.query('BEGIN');
      await c.query('SET LOCAL search_path = public, extensions');
      const { rows } = await c.query('SELECT earth_distance(ll_to_earth(0, 0), ll_to_earth(0, 1)) AS m');
      await c.query('COMMIT');
      return Number(rows[0].m);
    });
    assert.ok(metres > 111_000 && metres < 112_000, String(metres));
  });

  it("refuses (409) a schema named like the service's that the app owns, could write to, or holds objects in; nothing runs, nothing is installed", async () => {
    const tenant = await t.provision('ext_squat');
    await sql(
      tenant,
      `${TRAPS}
       CREATE SCHEMA extensions;
       CREATE FUNCTION extensions.pg_stat_statements(showtext boolean, OUT userid oid) RETURNS SETOF oid
         LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.sprung('extensions.pg_stat_statements(boolean)'); END $f$;
       CREATE TABLE extensions.pg_stat_statements_info (dealloc bigint);`,
    );
    const owned = await install('ext_squat', 'pg_stat_statements');
    assert.equal(owned.status, 409);
    assert.match(String(owned.body.message), /app 'ext_squat' has a schema 'extensions' the service cannot install into \(the app owns it\).*ALTER SCHEMA extensions RENAME TO/);
    assert.deepEqual(await extensionRows('app_ext_squat'), []);

    // Out of the way, the service makes its own.
    await sql(tenant, 'ALTER SCHEMA extensions RENAME TO mine');
    assert.equal((await install('ext_squat', 'pg_stat_statements')).status, 201);
    // An operator's mistake: CREATE on the service's schema for the app…
    await superuserRows('GRANT CREATE ON SCHEMA extensions TO app_ext_squat_user', [], 'app_ext_squat');
    const writable = await install('ext_squat', 'pgstattuple');
    assert.equal(writable.status, 409);
    assert.match(String(writable.body.message), /a role other than a superuser may create objects in it/);
    // …taken back after the app put something there.
    await sql(tenant, "CREATE FUNCTION extensions.pgstattuple(text) RETURNS int LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.sprung('extensions.pgstattuple(text)'); RETURN 0; END $f$");
    await superuserRows('REVOKE CREATE ON SCHEMA extensions FROM app_ext_squat_user', [], 'app_ext_squat');
    const holds = await install('ext_squat', 'pgstattuple');
    assert.equal(holds.status, 409);
    assert.match(String(holds.body.message), /it holds objects a role other than a superuser owns/);
    await sql(tenant, 'DROP FUNCTION extensions.pgstattuple(text)');
    assert.equal((await install('ext_squat', 'pgstattuple')).status, 201);

    assert.deepEqual(await trapped('ext_squat'), { log: [], superuser: false });
    assert.deepEqual(await extensionRows('app_ext_squat'), [
      { name: 'pg_stat_statements', schema: 'extensions', owner: 'postgres' },
      { name: 'pgstattuple', schema: 'extensions', owner: 'postgres' },
    ]);
  });
});

describe('backups and restores of an app with extensions the service installed', () => {
  it('restores them as the service installed them (its schema, its grants), with the data, into the app and, from a deleted app, into another', async () => {
    const keep = await t.provision('ext_keep');
    for (const name of ['pg_stat_statements', 'pgstattuple']) assert.equal((await install('ext_keep', name)).status, 201, name);
    await sql(
      keep,
      `CREATE EXTENSION citext;
       CREATE TABLE notes (id int PRIMARY KEY, body citext);
       INSERT INTO notes VALUES (1, 'Kept');
       CREATE VIEW note_tuples AS SELECT tuple_count FROM extensions.pgstattuple('public.notes'::regclass);`,
    );
    const backup = await t.admin('POST', '/apps/ext_keep/backups');
    assert.equal(backup.status, 201, backup.text);
    await sql(keep, "INSERT INTO notes VALUES (2, 'after the backup')");

    const restored = await t.admin('POST', '/apps/ext_keep/restore', { file: backup.body.file });
    assert.equal(restored.status, 200, restored.text);
    const restoredAudit = await superuserRows("SELECT detail FROM audit_log WHERE app_name = 'ext_keep' AND action = 'restore' AND outcome = 'ok'", [], 'provisioner');
    assert.deepEqual(restoredAudit.map((row) => row.detail), [{ file: backup.body.file, extensions: ['pg_stat_statements', 'pgstattuple'] }]);

    const expectRestored = async (app: ProvisionedApp, appName: string) => {
      assert.deepEqual(await sql(app, "SELECT id, body::text FROM notes WHERE body = 'kept'"), [{ id: 1, body: 'Kept' }], 'the data, and citext at work');
      assert.deepEqual(await sql(app, 'SELECT count(*)::int AS n FROM notes'), [{ n: 1 }]);
      assert.deepEqual(await sql(app, 'SELECT tuple_count::int FROM note_tuples'), [{ tuple_count: 1 }], "pgstattuple's grant, given again");
      await sql(app, 'SELECT count(*) FROM extensions.pg_stat_statements');
      assert.deepEqual(
        (await listed(appName)).filter((extension) => extension.name !== 'plpgsql'),
        [
          { name: 'citext', version: '1.6', schema: 'public', installed_by: 'app' },
          { name: 'pg_stat_statements', version: '1.10', schema: 'extensions', installed_by: 'service' },
          { name: 'pgstattuple', version: '1.5', schema: 'extensions', installed_by: 'service' },
        ],
      );
      assert.deepEqual(await serviceSchema(`app_${appName}`, `app_${appName}_user`), { owner: 'postgres', app_may_create: false, app_may_use: true });
    };
    await expectRestored(keep, 'ext_keep');

    const deleted = await t.admin('DELETE', '/apps/ext_keep');
    assert.equal(deleted.status, 200, deleted.text);
    assert.deepEqual(await catalog.existingDatabases(['app_ext_keep']), []);
    const heir = await t.provision('ext_heir');
    const adopted = await t.admin('POST', '/apps/ext_heir/restore', { file: deleted.body.backup, from_deleted_app: true });
    assert.equal(adopted.status, 200, adopted.text);
    await expectRestored(heir, 'ext_heir');
  });

  it('refuses (422) to restore a dump needing an extension the service would not install, before changing anything', async () => {
    const handmade = await t.provision('ext_handmade');
    await sql(handmade, "CREATE TABLE notes AS SELECT 'as it was' AS v");
    // Installed by hand by a superuser, as the service never would: one it does not allow, then one it refuses.
    for (const [name, reason] of [
      ['pgrowlocks', /needs extension 'pgrowlocks', which the service will not create: it is not in APP_EXTENSIONS_ALLOWED/],
      ['pg_buffercache', /needs extension 'pg_buffercache', which the service will not create: it shows every database's pages in shared memory/],
    ] as const) {
      await superuserRows(`DROP EXTENSION IF EXISTS pgrowlocks; CREATE SCHEMA IF NOT EXISTS extensions; CREATE EXTENSION ${name} SCHEMA extensions`, [], 'app_ext_handmade');
      const backup = await t.admin('POST', '/apps/ext_handmade/backups');
      assert.equal(backup.status, 201, backup.text);
      await sql(handmade, `INSERT INTO notes VALUES ('after ${name}')`);
      const refused = await t.admin('POST', '/apps/ext_handmade/restore', { file: backup.body.file });
      assert.equal(refused.status, 422, refused.text);
      assert.match(String(refused.body.message), reason);
      assert.match(String(refused.body.message), /The app's database is unchanged/);
    }
    assert.deepEqual(await sql(handmade, 'SELECT v FROM notes ORDER BY v'), [{ v: 'after pg_buffercache' }, { v: 'after pgrowlocks' }, { v: 'as it was' }]);
    assert.deepEqual(await catalog.workLeftovers(), { databases: [], agents: [] });
  });
});

describe('a crash on either side of the COMMIT of an install', () => {
  /** Restarts the service with CRASH_AT=point, sends `trigger` (answered 503: the service died), restarts it normally, and waits for its first reconcile. */
  async function crashAt(point: string, trigger: () => Promise<{ status: number }>): Promise<void> {
    await t.stack.stopService();
    await t.stack.startService({ CRASH_AT: point });
    assert.equal((await trigger()).status, 503, `${point}: the client is told the service is unreachable`);
    await t.stack.serviceExited();
    const from = t.serviceLines.length;
    await t.stack.startService();
    await t.waitForServiceLine(/"msg":"reconcile finished"/, from);
  }

  it('leaves nothing before it (no extension, no schema), the whole of it after; the reconciler has nothing to repair', async () => {
    await t.provision('ext_crash');
    await crashAt('extension:before-commit', () => install('ext_crash', 'pgstattuple'));
    assert.deepEqual(await extensionRows('app_ext_crash'), []);
    assert.equal(await serviceSchema('app_ext_crash', 'app_ext_crash_user'), undefined, 'the schema went with the transaction');

    await crashAt('extension:after-commit', () => install('ext_crash', 'pgstattuple'));
    // (The reconciler may repair other things a kill leaves, such as a ready-pool set being made: never this app.)
    assert.deepEqual(await auditOf('ext_crash', 'reconcile'), []);
    assert.deepEqual(await extensionRows('app_ext_crash'), [{ name: 'pgstattuple', schema: 'extensions', owner: 'postgres' }]);
    assert.deepEqual(await serviceSchema('app_ext_crash', 'app_ext_crash_user'), { owner: 'postgres', app_may_create: false, app_may_use: true });
    const again = await install('ext_crash', 'pgstattuple');
    assert.equal(again.status, 200, again.text);
    assert.equal(again.body.installed_by, 'service');
  });
});
