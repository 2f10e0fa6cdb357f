// Per-app settings (GET and PATCH /apps/:name/settings) through the real stack: the operator sets them over HTTP,
// and the app meets them as an app would, in new sessions through its own connection strings. Bad input changes
// nothing; what the app can and cannot undo itself is shown for each kind of setting (SECURITY.md).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { asApp, connectAs, doorString } from '../helpers/app-sessions.js';
import type { ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let t: TestStack;
before(async () => {
  // The reconciler runs at each start only (not on a timer), so that what the app changes stays until the test
  // restarts the service: no race between the app's change and a repair.
  t = await startTestStack({ serviceEnv: { RECONCILE_INTERVAL_MS: '3600000' } });
});
after(async () => {
  await t?.stop();
});

/** The SQLSTATE a statement (or a connection) fails with; undefined if it succeeds. */
async function sqlError(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

const direct = (app: ProvisionedApp) => doorString(app, 'direct');
const show = (connectionString: string, setting: string) => asApp(connectionString, async (c) => String(Object.values((await c.query(`SHOW ${setting}`)).rows[0])[0]));

/** What Postgres holds for the app: its login role's limit and settings, and its database's settings. */
async function inPostgres(appName: string) {
  return t.superuser(async (db) => {
    const role = (await db.query('SELECT rolconnlimit, rolconfig FROM pg_roles WHERE rolname = $1', [`app_${appName}_user`])).rows[0];
    const database = (
      await db.query('SELECT s.setconfig FROM pg_database d LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0 WHERE d.datname = $1', [`app_${appName}`])
    ).rows[0];
    return { connectionLimit: role.rolconnlimit as number, role: [...((role.rolconfig as string[] | null) ?? [])].sort(), database: [...((database.setconfig as string[] | null) ?? [])].sort() };
  });
}

const auditOf = (appName: string, action: string) =>
  t.superuser(async (db) => (await db.query('SELECT outcome, detail FROM audit_log WHERE app_name = $1 AND action = $2 ORDER BY id', [appName, action])).rows, 'provisioner');

describe('GET /apps/:name/settings', () => {
  it('shows a new app on the defaults: no overrides, and in force what the service sets every app', async () => {
    await t.provision('fresh');
    const { status, body } = await t.admin('GET', '/apps/fresh/settings');
    assert.equal(status, 200);
    const defaults = { connection_limit: 10, temp_file_limit: '1GB', statement_timeout: '0', idle_in_transaction_session_timeout: '10min', idle_session_timeout: '0', storage_limit: '1GB', database: {} };
    assert.deepEqual(body, {
      app_name: 'fresh',
      in_force: defaults,
      overrides: { database: {} },
      defaults,
      allowed_database_settings: ['default_transaction_isolation', 'lock_timeout', 'search_path', 'timezone', 'work_mem'],
    });
    // What it says is in force is what the login role carries.
    const held = await inPostgres('fresh');
    assert.equal(held.connectionLimit, 10);
    for (const setting of ['temp_file_limit=1GB', 'statement_timeout=0', 'idle_in_transaction_session_timeout=10min', 'idle_session_timeout=0']) assert.ok(held.role.includes(setting), held.role.join(' '));
  });

  it('needs the admin key, and answers 404 for an app that does not exist', async () => {
    assert.equal((await t.get('/apps/fresh/settings')).status, 401);
    const unauthorised = await fetch(`${t.stack.httpUrl}/apps/fresh/settings`, { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: '{"connection_limit":1}' });
    assert.equal(unauthorised.status, 401);
    assert.equal((await inPostgres('fresh')).connectionLimit, 10);
    assert.equal((await t.admin('GET', '/apps/nobody_here/settings')).status, 404);
    assert.equal((await t.admin('PATCH', '/apps/nobody_here/settings', { connection_limit: 2 })).status, 404);
  });
});

describe('PATCH /apps/:name/settings refuses bad input and then changes nothing', () => {
  it('a setting outside the allowlist: 422 naming it and listing what is allowed', async () => {
    await t.provision('strict');
    const before = { api: (await t.admin('GET', '/apps/strict/settings')).body, postgres: await inPostgres('strict') };
    const outside = await t.admin('PATCH', '/apps/strict/settings', { connection_limit: 3, database: { timezone: 'UTC', log_statement: 'all' } });
    assert.equal(outside.status, 422, outside.text);
    assert.match(String(outside.body.message), /'database\.log_statement' is not a setting this API changes/);
    assert.match(String(outside.body.message), /Allowed: connection_limit, temp_file_limit, statement_timeout, idle_in_transaction_session_timeout, idle_session_timeout, storage_limit, database\.default_transaction_isolation, database\.lock_timeout, database\.search_path, database\.timezone, database\.work_mem/);
    const topLevel = await t.admin('PATCH', '/apps/strict/settings', { max_connections: 500, statement_timeout: '5s' });
    assert.equal(topLevel.status, 422, topLevel.text);
    assert.match(String(topLevel.body.message), /'max_connections' is not a setting/);
    // statement_timeout belongs to the role (a role's setting wins over its database's): refused on the database.
    const shadowed = await t.admin('PATCH', '/apps/strict/settings', { database: { statement_timeout: '5s' } });
    assert.equal(shadowed.status, 422, shadowed.text);
    assert.deepEqual({ api: (await t.admin('GET', '/apps/strict/settings')).body, postgres: await inPostgres('strict') }, before);
  });

  it('one bad field among good ones: none of them is applied', async () => {
    const before = { api: (await t.admin('GET', '/apps/strict/settings')).body, postgres: await inPostgres('strict') };
    const good = { connection_limit: 3, temp_file_limit: '256MB', statement_timeout: '5s', storage_limit: '2GB', database: { search_path: ['app', 'public'], work_mem: '8MB' } };
    const cases: Array<{ bad: Record<string, unknown>; status: number; says: RegExp }> = [
      { bad: { statement_timeout: '5 minutes' }, status: 400, says: /statement_timeout must be 0 \(off\) or a duration up to 1d/ },
      { bad: { idle_session_timeout: '2d' }, status: 400, says: /idle_session_timeout must be 0 \(off\) or a duration up to 1d/ },
      { bad: { connection_limit: 0 }, status: 400, says: /connection_limit must be a whole number from 1 to 1000/ },
      { bad: { connection_limit: 2.5 }, status: 400, says: /connection_limit must be a whole number/ },
      { bad: { temp_file_limit: '1gb' }, status: 400, says: /temp_file_limit must be a size from 1MB to 1TB/ },
      { bad: { storage_limit: '-1' }, status: 400, says: /storage_limit must be a size/ },
      { bad: { database: { ...good.database, search_path: ['pg_temp', 'public'] } }, status: 400, says: /cannot name pg_ schemas/ },
      { bad: { database: { ...good.database, search_path: ['other_db.public'] } }, status: 400, says: /plain schema names/ },
      { bad: { database: { ...good.database, work_mem: '1GB' } }, status: 400, says: /database\.work_mem must be a size from 64kB to 64MB/ },
      { bad: { database: { ...good.database, default_transaction_isolation: 'read uncommitted' } }, status: 400, says: /default_transaction_isolation must be/ },
      // Only the server can tell these: 422.
      { bad: { database: { ...good.database, timezone: 'Mars/Olympus_Mons' } }, status: 422, says: /database\.timezone 'Mars\/Olympus_Mons' is not a time zone Postgres knows/ },
      { bad: { connection_limit: 48 }, status: 422, says: /connection_limit 48 is more than this server can give an app: at most 47 \(max_connections 50 less superuser_reserved_connections 3\)/ },
    ];
    for (const { bad, status, says } of cases) {
      const answer = await t.admin('PATCH', '/apps/strict/settings', { ...good, ...bad });
      assert.equal(answer.status, status, `${JSON.stringify(bad)}: ${answer.text}`);
      assert.match(String(answer.body.message), says, JSON.stringify(bad));
      assert.match(String(answer.body.message), status === 422 ? /nothing was changed/ : /./);
    }
    assert.deepEqual({ api: (await t.admin('GET', '/apps/strict/settings')).body, postgres: await inPostgres('strict') }, before, 'nothing was applied');
    // The same good fields alone are taken (so the refusals above were the bad field's).
    const taken = await t.admin('PATCH', '/apps/strict/settings', good);
    assert.equal(taken.status, 200, taken.text);
    assert.deepEqual(taken.body.overrides, good);
    const held = await inPostgres('strict');
    assert.equal(held.connectionLimit, 3);
    assert.ok(held.role.includes('temp_file_limit=256MB') && held.role.includes('statement_timeout=5s'), held.role.join(' '));
    assert.deepEqual(held.database, ['search_path=app, public', 'work_mem=8MB']);
  });
});

describe('new sessions of the app get what the operator set', () => {
  it('connection_limit: a session beyond it is refused, and the app cannot lift it', async () => {
    const app = await t.provision('crowded');
    const patched = await t.admin('PATCH', '/apps/crowded/settings', { connection_limit: 2 });
    assert.equal(patched.status, 200, patched.text);
    assert.equal((patched.body.in_force as { connection_limit: number }).connection_limit, 2);
    const open: pg.Client[] = [];
    try {
      open.push(await connectAs(direct(app)), await connectAs(direct(app)));
      assert.equal(await sqlError(connectAs(direct(app)).then((c) => open.push(c))), '53300', 'a third session is refused: too many connections for role');
      assert.equal(await sqlError(open[0]!.query('ALTER ROLE app_crowded_user CONNECTION LIMIT 100')), '42501');
    } finally {
      await Promise.all(open.map((c) => c.end().catch(() => {})));
    }
    // Back to the default with null.
    const reset = await t.admin('PATCH', '/apps/crowded/settings', { connection_limit: null });
    assert.equal((reset.body.in_force as { connection_limit: number }).connection_limit, 10);
    assert.deepEqual(reset.body.overrides, { database: {} });
    assert.equal((await inPostgres('crowded')).connectionLimit, 10);
  });

  it('statement_timeout: a longer statement is cancelled in new sessions; open ones keep theirs until they reconnect, or end_sessions ends them', async () => {
    const app = await t.provision('impatient');
    const early = await connectAs(direct(app));
    try {
      assert.equal((await early.query('SHOW statement_timeout')).rows[0].statement_timeout, '0');
      const patched = await t.admin('PATCH', '/apps/impatient/settings', { statement_timeout: '1s' });
      assert.equal(patched.status, 200, patched.text);
      assert.equal(await sqlError(asApp(direct(app), (c) => c.query('SELECT pg_sleep(3)'))), '57014', 'cancelled by statement_timeout');
      assert.equal((await early.query('SHOW statement_timeout')).rows[0].statement_timeout, '0', 'a session open before the change keeps its value');
      const ended = await t.admin('PATCH', '/apps/impatient/settings?end_sessions=true', { statement_timeout: '1s' });
      assert.equal(ended.status, 200, ended.text);
      assert.ok(Number(ended.body.sessions_ended) >= 1, ended.text);
      assert.notEqual(await sqlError(early.query('SELECT 1')), undefined, 'the early session was ended');
    } finally {
      await early.end().catch(() => {});
    }
    // Through the pooler, as the app connects: its server connections are new since end_sessions.
    assert.equal(await sqlError(asApp(app.connection_string, (c) => c.query('SELECT pg_sleep(3)'))), '57014');
    assert.equal(await show(app.connection_string, 'statement_timeout'), '1s');
    assert.equal((await t.admin('PATCH', '/apps/impatient/settings?end_sessions=maybe', {})).status, 400);
  });

  it('timezone: SHOW timezone in a new session says it; null gives back the server\'s', async () => {
    const app = await t.provision('tokyo');
    const patched = await t.admin('PATCH', '/apps/tokyo/settings', { database: { timezone: 'asia/tokyo' } });
    assert.equal(patched.status, 200, patched.text);
    assert.deepEqual((patched.body.in_force as { database: unknown }).database, { timezone: 'Asia/Tokyo' }, "kept in Postgres's spelling");
    assert.equal(await show(direct(app), 'timezone'), 'Asia/Tokyo');
    assert.equal(await asApp(direct(app), async (c) => (await c.query("SELECT to_char(timestamptz '2024-01-01 00:00:00+00', 'HH24') AS h")).rows[0].h), '09');
    await t.admin('PATCH', '/apps/tokyo/settings', { database: { timezone: null } });
    assert.equal(await show(direct(app), 'timezone'), 'UTC');
    assert.deepEqual((await inPostgres('tokyo')).database, []);
  });

  it('the other database settings reach new sessions: search_path, lock_timeout, work_mem, default_transaction_isolation', async () => {
    const app = await t.provision('tuned');
    await asApp(direct(app), (c) => c.query('CREATE SCHEMA app; CREATE TABLE app.things (v int); INSERT INTO app.things VALUES (7)'));
    const settings = { search_path: ['app', 'public'], lock_timeout: '2s', work_mem: '8MB', default_transaction_isolation: 'serializable' };
    assert.equal((await t.admin('PATCH', '/apps/tuned/settings', { database: settings })).status, 200);
    await asApp(direct(app), async (c) => {
      assert.equal((await c.query('SELECT v FROM things')).rows[0].v, 7, 'found through search_path');
      assert.equal((await c.query('SHOW search_path')).rows[0].search_path, 'app, public');
      assert.equal((await c.query('SHOW lock_timeout')).rows[0].lock_timeout, '2s');
      assert.equal((await c.query('SHOW work_mem')).rows[0].work_mem, '8MB');
      assert.equal((await c.query('SHOW transaction_isolation')).rows[0].transaction_isolation, 'serializable');
    });
  });

  it('temp_file_limit: a sort that spills more is refused, and the app cannot lift it for itself', async () => {
    const app = await t.provision('spiller');
    // About 20 MB of temporary files with postgres.conf's work_mem (4MB): within the default limit (1GB).
    const spill = (c: pg.Client) => c.query('SELECT count(*) FROM (SELECT g FROM generate_series(1, 1000000) g ORDER BY g DESC) sorted');
    await asApp(direct(app), spill);
    assert.equal((await t.admin('PATCH', '/apps/spiller/settings', { temp_file_limit: '1MB' })).status, 200);
    await asApp(direct(app), async (c) => {
      assert.equal(await sqlError(spill(c)), '53400', 'temporary file size exceeds temp_file_limit');
      // temp_file_limit is a superuser's setting: the app can neither SET it nor change its role's.
      assert.equal(await sqlError(c.query("SET temp_file_limit = '-1'")), '42501');
      assert.equal(await sqlError(c.query("ALTER ROLE app_spiller_user SET temp_file_limit = '-1'")), '42501');
      assert.equal(await sqlError(c.query('ALTER ROLE app_spiller_user RESET ALL')), undefined, 'RESET ALL runs, and keeps what the app may not reset');
    });
    assert.ok((await inPostgres('spiller')).role.includes('temp_file_limit=1MB'));
    await asApp(direct(app), async (c) => assert.equal(await sqlError(spill(c)), '53400'));
  });
});

describe('what an app can undo itself', () => {
  it('lifts its role-level timeouts for its own sessions (a guard, not a wall), cannot touch its database settings, and the reconciler puts the operator\'s back', async () => {
    const app = await t.provision('lifter');
    assert.equal((await t.admin('PATCH', '/apps/lifter/settings', { statement_timeout: '1s', database: { timezone: 'Europe/Paris' } })).status, 200);
    await asApp(direct(app), async (c) => {
      // Postgres lets a role SET what it may SET, for its session, and as its own default for later sessions.
      assert.equal(await sqlError(c.query("SET statement_timeout = '0'")), undefined);
      assert.equal(await sqlError(c.query("ALTER ROLE app_lifter_user SET statement_timeout = '0'")), undefined);
      // Its database is the superuser's: the app cannot change its settings.
      assert.equal(await sqlError(c.query("ALTER DATABASE app_lifter SET timezone = 'UTC'")), '42501');
      assert.equal(await sqlError(c.query('ALTER DATABASE app_lifter RESET ALL')), '42501');
    });
    assert.equal(await show(direct(app), 'statement_timeout'), '0', 'until the next reconcile, new sessions get what the app set');
    assert.equal(await show(direct(app), 'timezone'), 'Europe/Paris');
    // A role may also set its own defaults for one database, which win over its role-wide ones: not undone.
    const other = await t.provision('lifter_in_db');
    assert.equal((await t.admin('PATCH', '/apps/lifter_in_db/settings', { statement_timeout: '1s' })).status, 200);
    await asApp(direct(other), (c) => c.query("ALTER ROLE app_lifter_in_db_user IN DATABASE app_lifter_in_db SET statement_timeout = '0'"));
    const from = t.serviceLines.length;
    await t.stack.stopService();
    await t.stack.startService();
    await t.waitForServiceLine(/"msg":"reconcile finished"/, from);
    assert.equal(await show(direct(app), 'statement_timeout'), '1s', "the reconciler put the operator's value back");
    const repairs = await auditOf('lifter', 'reconcile');
    assert.deepEqual(repairs.map((row) => row.outcome), ['applied its settings again (statement_timeout)']);
    assert.equal(await show(direct(other), 'statement_timeout'), '0', 'a per-database default the app set itself stays: the timeouts are guards, not walls');
  });

  it('writes each change to the audit log, with the names and values changed', async () => {
    const entries = await auditOf('lifter', 'change_settings');
    assert.deepEqual(entries, [{ outcome: 'ok', detail: { changed: { statement_timeout: '1s', 'database.timezone': 'Europe/Paris' } } }]);
    const refused = await auditOf('strict', 'change_settings');
    assert.ok(refused.some((row) => row.outcome === 'setting_not_allowed') && refused.some((row) => row.outcome === 'setting_value_refused'), JSON.stringify(refused));
  });
});

describe('the OpenAPI document', () => {
  it('describes GET and PATCH /apps/{name}/settings, with the settings PATCH takes (on the service\'s own port)', async () => {
    const doc = (await (await fetch(`${t.stack.serviceUrl}/docs/json`)).json()) as { paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: { properties: Record<string, unknown> } }> } }>> };
    const path = doc.paths['/apps/{name}/settings'];
    assert.ok(path?.get && path.patch, Object.keys(doc.paths).join(' '));
    const body = path.patch.requestBody!.content['application/json']!.schema.properties;
    for (const name of ['connection_limit', 'temp_file_limit', 'statement_timeout', 'idle_in_transaction_session_timeout', 'idle_session_timeout', 'storage_limit', 'database']) assert.ok(name in body, name);
  });
});
