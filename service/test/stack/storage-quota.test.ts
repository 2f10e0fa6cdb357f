// The storage quota per app (src/domain/storage-quota.ts), through the real stack, as an app meets it: it writes
// past its limit and its new sessions are read-only (SQLSTATE 25006) at both doors; BEGIN READ WRITE writes anyway
// (the guard is soft); past the hard limit its logins are refused; the limit raised (PATCH /apps/:name/settings), it
// writes again, every row still there. Companion databases count and extra credentials are held with the app; a
// restore, a rotation, the reconciler and a settings change never lift the enforcement; an app that lifts its own
// flag gets it back; a new app of the same name starts writable. Limits are small (16MB, an
// empty app is ~7.5 MB) and the check runs every 300 ms.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { asApp, connectAs, doorString, DOORS, withDatabase } from '../helpers/app-sessions.js';
import { SYSTEM_DATABASE } from '../helpers/catalog.js';
import { eventually, rejectionOf } from '../helpers/conditions.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

const MB = 2 ** 20;
const LIMIT = 16 * MB;
const HARD_LIMIT = Math.floor((LIMIT * 120) / 100);

let t: TestStack;

before(async () => {
  t = await startTestStack({
    serviceEnv: { LOG_PRETTY: 'false', APP_STORAGE_LIMIT: '16MB', STORAGE_CHECK_INTERVAL_MS: '300', RECONCILE_INTERVAL_MS: '2000' },
  });
});
after(async () => {
  await t?.stop();
});

interface Storage {
  used_bytes: number;
  limit_bytes: number | null;
  hard_limit_bytes: number | null;
  state: string;
}

const storageOf = async (app: string): Promise<Storage> => {
  const answer = await t.admin('GET', `/apps/${app}`);
  assert.equal(answer.status, 200, answer.text);
  return answer.body.storage as Storage;
};

const AUDITED: Record<string, string | undefined> = { ok: 'storage_writable', read_only: 'storage_read_only', suspended: 'storage_suspended' };

/**
 * Waits (the check runs every 300 ms) until GET /apps/:name says `state` and, for a state the quota brings an app
 * to, its enforcement has been carried out to its end: its audit entry, the last step, is written (GET says what the
 * roles carry, which they do from the first step on).
 */
async function untilState(app: string, state: string): Promise<Storage> {
  const seen = await eventually(
    async () => ({ storage: await storageOf(app), last: (await storageAudit(app)).at(-1)?.action }),
    ({ storage, last }) => storage.state === state && (AUDITED[state] === undefined || last === AUDITED[state] || (state === 'ok' && last === undefined)),
    20_000,
  );
  assert.equal(seen.storage.state, state, `${app}: ${JSON.stringify(seen)}`);
  return seen.storage;
}

/** Rows of about 1.6 kB: four to a page, so `rows` of them take rows × 2 kB of disk. */
const fill = (table: string, from: number, rows: number) => `INSERT INTO ${table} SELECT g, repeat(md5(g::text), 50) FROM generate_series(${from}, ${from + rows - 1}) g`;

const insertCode = async (connectionString: string, sql: string): Promise<string | undefined> =>
  asApp(connectionString, (c) => c.query(sql)).then(
    () => undefined,
    (err: { code?: string }) => err.code ?? 'no code',
  );

const storageAudit = (app: string) =>
  t.superuser(
    async (c) => (await c.query<{ action: string; detail: Record<string, unknown> }>(`SELECT action, detail FROM audit_log WHERE app_name = $1 AND action LIKE 'storage\\_%' ORDER BY id`, [app])).rows,
    SYSTEM_DATABASE,
  );

const roleSettings = (role: string) =>
  t.superuser(async (c) => (await c.query<{ setconfig: string[] }>(`SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = $1 AND s.setdatabase = 0`, [role])).rows[0]?.setconfig ?? []);

const metricsText = async () => (await fetch(`${t.stack.serviceUrl}/metrics`)).text();

describe('an app that outgrows its storage limit', () => {
  it('is warned, made read-only (25006 at both doors), writes anyway with BEGIN READ WRITE, is suspended past the hard limit, and writes again once its limit is raised, every row still there', { timeout: 120_000 }, async () => {
    const app = await t.provision('grower');
    const pooled = app.connection_string;
    const direct = doorString(app, 'direct');
    await asApp(pooled, (c) => c.query('CREATE TABLE notes (n int, body text)'));
    const fresh = await storageOf('grower');
    assert.deepEqual({ ...fresh, used_bytes: 0 }, { used_bytes: 0, limit_bytes: LIMIT, hard_limit_bytes: HARD_LIMIT, state: 'ok' });

    // A pooled client connected before any of it, holding its connection throughout, as an app's pool does.
    const held = await connectAs(pooled);
    await held.query('SELECT 1');

    // 80% of the limit: a warning, nothing enforced.
    await asApp(pooled, (c) => c.query(fill('notes', 1, 3000)));
    const warned = await untilState('grower', 'warning');
    assert.ok(warned.used_bytes >= LIMIT * 0.8 && warned.used_bytes <= LIMIT, JSON.stringify(warned));
    // /metrics tells from the last check (GET measured on the spot): it names the app once a check has seen it.
    const limitLine = /^pgprov_app_storage_limit_bytes\{app="grower"\} 16777216$/m;
    assert.match(await eventually(metricsText, (text) => limitLine.test(text), 20_000), limitLine);

    // Past the limit: read-only, at both doors, the held client included (its server session was replaced).
    await asApp(pooled, (c) => c.query(fill('notes', 3001, 2000)));
    const readOnly = await untilState('grower', 'read_only');
    assert.ok(readOnly.used_bytes > LIMIT && readOnly.used_bytes <= HARD_LIMIT, JSON.stringify(readOnly));
    for (const { door } of DOORS) assert.equal(await insertCode(doorString(app, door), "INSERT INTO notes VALUES (0, 'refused')"), '25006', door);
    const heldAnswer = await held.query("INSERT INTO notes VALUES (0, 'held')").then(
      () => 'written',
      (err: { code?: string }) => err.code,
    );
    assert.notEqual(heldAnswer, 'written', "the held client's session was ended, or is read-only");
    if (heldAnswer !== '25006') assert.equal(await held.query("INSERT INTO notes VALUES (0, 'held')").catch((err: { code?: string }) => err.code), '25006', 'once its session was replaced');
    await held.end().catch(() => {});
    // Reading still works; the app can see why it cannot write.
    assert.equal(await asApp(pooled, async (c) => (await c.query('SELECT count(*)::int AS n FROM notes')).rows[0].n), 5000);
    assert.equal(await asApp(direct, async (c) => (await c.query("SELECT current_setting('pgprov.storage_enforcement') AS s")).rows[0].s), 'read_only');

    // A pooled client connected while it is read-only, holding its connection.
    const heldReadOnly = await connectAs(pooled);
    await heldReadOnly.query('SELECT 1');

    // The guard is soft: a session that asks for a read-write transaction writes (SECURITY.md says so).
    await asApp(pooled, async (c) => {
      await c.query('BEGIN READ WRITE');
      await c.query(fill('notes', 5001, 2000));
      await c.query('COMMIT');
    });

    // Past the hard limit: suspended. Logins are refused at both doors; the operator can still back it up.
    const suspended = await untilState('grower', 'suspended');
    assert.ok(suspended.used_bytes > HARD_LIMIT, JSON.stringify(suspended));
    const refusedDirect = await rejectionOf(connectAs(direct));
    assert.equal(refusedDirect.code, '53300');
    assert.match(refusedDirect.message, /too many connections for role "app_grower_user"/);
    assert.match((await rejectionOf(asApp(pooled, (c) => c.query('SELECT 1')))).message, /login rejected/);
    await rejectionOf(heldReadOnly.query('SELECT 1')); // its pooled clients were disconnected
    await heldReadOnly.end().catch(() => {});
    const backup = await t.admin('POST', '/apps/grower/backups');
    assert.equal(backup.status, 201, backup.text);
    // Neither the reconciler (which puts each app's settings back in force) nor a change of its connection limit
    // (PATCH /apps/:name/settings) lifts the suspension: the new limit is the one it gets back.
    const from = t.serviceLines.length;
    await t.waitForServiceLine(/"msg":"reconcile finished"/, from);
    assert.equal((await t.admin('PATCH', '/apps/grower/settings', { connection_limit: 4 })).status, 200);
    assert.equal((await rejectionOf(connectAs(direct))).code, '53300', 'still suspended');
    assert.equal((await storageOf('grower')).state, 'suspended');
    const overLine = /^pgprov_apps_over_storage_limit 1$/m;
    assert.match(await eventually(metricsText, (text) => overLine.test(text), 20_000), overLine);
    assert.match(await metricsText(), /^pgprov_apps_storage_used_bytes [1-9]\d{7,}$/m);

    // The limit raised: writable again, every row still there.
    const raised = await t.admin('PATCH', '/apps/grower/settings', { storage_limit: '64MB' });
    assert.equal(raised.status, 200, raised.text);
    const lifted = await untilState('grower', 'ok');
    assert.equal(lifted.limit_bytes, 64 * MB);
    const rows = await asApp(pooled, async (c) => {
      await c.query("INSERT INTO notes VALUES (0, 'after the limit was raised')");
      return (await c.query('SELECT count(*)::int AS n FROM notes')).rows[0].n;
    });
    assert.equal(rows, 7001, 'every row written, none lost');
    assert.equal(await insertCode(direct, "INSERT INTO notes VALUES (0, 'direct')"), undefined);
    const role = await t.superuser(async (c) => (await c.query(`SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app_grower_user'`)).rows[0]);
    assert.deepEqual(role, { rolconnlimit: 4 }, 'its connection limit is put back: the one set while it was suspended');
    assert.deepEqual((await roleSettings('app_grower_user')).filter((entry) => /default_transaction_read_only|pgprov/.test(entry)), []);

    // Logged, audited with the size and the limit, counted.
    const audit = await storageAudit('grower');
    assert.deepEqual(audit.map((entry) => entry.action), ['storage_read_only', 'storage_suspended', 'storage_writable']);
    assert.ok(Number(audit[0]!.detail.used_bytes) > LIMIT && audit[0]!.detail.limit_bytes === LIMIT, JSON.stringify(audit[0]));
    assert.ok(Number(audit[1]!.detail.used_bytes) > HARD_LIMIT && audit[1]!.detail.hard_limit_bytes === HARD_LIMIT, JSON.stringify(audit[1]));
    assert.equal(audit[2]!.detail.limit_bytes, 64 * MB);
    assert.ok(t.serviceLines.some((line) => /"level":40/.test(line) && /made read-only/.test(line) && /"app":"grower"/.test(line)));
    const metrics = await metricsText();
    for (const action of ['read_only', 'suspended', 'writable']) assert.match(metrics, new RegExp(`^pgprov_storage_enforcements_total\\{action="${action}"\\} 1$`, 'm'));
    assert.doesNotMatch(metrics, /^pgprov_app_storage_\w+\{app="grower"\}/m, 'an app under its warning threshold is not named in the storage metrics');
  });
});

describe('a well-behaved app over its limit', () => {
  it('frees space itself as the README says: a DELETE gives nothing back, VACUUM FULL does, TRUNCATE in a read-write transaction does at once, and it is writable again', { timeout: 60_000 }, async () => {
    const app = await t.provision('tidy');
    await asApp(app.connection_string, (c) => c.query(`CREATE TABLE logs (n int, body text); ${fill('logs', 1, 2500)}; CREATE TABLE old (n int, body text); ${fill('old', 1, 2500)}`));
    const over = await untilState('tidy', 'read_only');
    assert.equal(await insertCode(app.connection_string, 'TRUNCATE old'), '25006', 'in the read-only default, a TRUNCATE is refused too');

    await asApp(app.connection_string, async (c) => {
      await c.query('BEGIN READ WRITE');
      await c.query('DELETE FROM logs WHERE n % 2 = 0');
      await c.query('COMMIT');
    });
    const afterDelete = await storageOf('tidy');
    assert.ok(afterDelete.used_bytes >= over.used_bytes, `a DELETE leaves the table's size as it was: ${over.used_bytes} → ${afterDelete.used_bytes}`);
    assert.equal(afterDelete.state, 'read_only');

    // VACUUM FULL rewrites the table without the deleted rows; it runs as it is, in the read-only default.
    await asApp(app.connection_string, (c) => c.query('VACUUM FULL logs'));
    const afterVacuum = await storageOf('tidy');
    assert.ok(afterVacuum.used_bytes < afterDelete.used_bytes - 2 * MB, `${afterDelete.used_bytes} → ${afterVacuum.used_bytes}`);

    await asApp(app.connection_string, async (c) => {
      await c.query('BEGIN READ WRITE');
      await c.query('TRUNCATE old');
      await c.query('COMMIT');
    });
    const afterTruncate = await storageOf('tidy');
    assert.ok(afterTruncate.used_bytes < afterVacuum.used_bytes - 4 * MB, `${afterVacuum.used_bytes} → ${afterTruncate.used_bytes}`);

    await eventually(() => storageOf('tidy'), (s) => s.state === 'ok', 20_000);
    assert.equal(await insertCode(app.connection_string, "INSERT INTO logs VALUES (0, 'writable again')"), undefined);
    assert.equal(await asApp(app.connection_string, async (c) => (await c.query('SELECT count(*)::int AS n FROM logs')).rows[0].n), 1251);
  });
});

describe("an app's companion databases and extra credentials", () => {
  it("count and are held: a companion database takes the app over its limit; its credentials are made read-only and suspended with it; deleting the companion lifts it all, a read-only credential keeping its own read-only default", { timeout: 90_000 }, async () => {
    const app = await t.provision('twin');
    const direct = doorString(app, 'direct');
    await asApp(app.connection_string, (c) => c.query('CREATE TABLE t (x int)'));
    // Its extra credentials (POST /apps/:name/credentials): a full one, and a read-only one, which carries
    // default_transaction_read_only of its own.
    const writer = await t.admin('POST', '/apps/twin/credentials', { name: 'writer', access: 'full' });
    const reader = await t.admin('POST', '/apps/twin/credentials', { name: 'reader', access: 'read_only' });
    assert.deepEqual([writer.status, reader.status], [201, 201], writer.text + reader.text);
    const asWriter = doorString(writer.body as never, 'direct');
    const asReader = doorString(reader.body as never, 'direct');
    assert.equal(await insertCode(asWriter, 'INSERT INTO t VALUES (0)'), undefined);

    // A companion database (POST /apps/:name/databases), filled by the app's own login.
    const alone = (await storageOf('twin')).used_bytes;
    const made = await t.admin('POST', '/apps/twin/databases', { name: 'scratch' });
    assert.equal(made.status, 201, made.text);
    const inCompanion = withDatabase(direct, 'app_twin-scratch');
    await asApp(inCompanion, (c) => c.query(`CREATE TABLE filler (n int, body text); ${fill('filler', 1, 1500)}`));
    const storage = await untilState('twin', 'read_only');
    const sizes = await t.superuser(async (c) => (await c.query(`SELECT sum(pg_database_size(datname))::float8 AS s FROM pg_database WHERE datname IN ('app_twin', 'app_twin-scratch')`)).rows[0].s as number);
    assert.ok(storage.used_bytes > alone + 7 * MB && Math.abs(storage.used_bytes - sizes) < MB, `used ${storage.used_bytes}, the two databases ${sizes}`);
    assert.equal(await insertCode(app.connection_string, 'INSERT INTO t VALUES (1)'), '25006', 'its own database is read-only');
    assert.equal(await insertCode(withDatabase(app.connection_string, 'app_twin-scratch'), 'INSERT INTO filler VALUES (0)'), '25006', 'so is its companion');
    assert.equal(await insertCode(asWriter, 'INSERT INTO t VALUES (1)'), '25006', 'and its full credential');

    // Over the hard limit: its credentials' logins are suspended with the app's.
    await asApp(inCompanion, async (c) => {
      await c.query('BEGIN READ WRITE');
      await c.query(fill('filler', 1501, 1000));
      await c.query('COMMIT');
    });
    await untilState('twin', 'suspended');
    for (const login of [asWriter, asReader]) assert.equal((await rejectionOf(connectAs(login))).code, '53300');
    assert.match((await rejectionOf(asApp(String(writer.body.connection_string), (c) => c.query('SELECT 1')))).message, /login rejected/);

    // The companion deleted (DELETE /apps/:name/databases/:name): under the limit, everything lifted.
    assert.equal((await t.admin('DELETE', '/apps/twin/databases/scratch')).status, 200);
    await untilState('twin', 'ok');
    assert.equal(await insertCode(app.connection_string, 'INSERT INTO t VALUES (1)'), undefined);
    assert.equal(await insertCode(asWriter, 'INSERT INTO t VALUES (2)'), undefined);
    assert.equal(await asApp(asReader, async (c) => (await c.query('SELECT count(*)::int AS n FROM t')).rows[0].n), 3, 'the read-only credential logs in and reads');
    assert.equal(await insertCode(asReader, 'INSERT INTO t VALUES (3)'), '25006', 'and stays read-only: that default is its own, not the quota\'s');
    const roles = await t.superuser(async (c) => (await c.query(`SELECT rolname, rolconnlimit, rolconfig FROM pg_roles WHERE rolname LIKE 'app\\_twin%' AND rolcanlogin ORDER BY 1`)).rows);
    assert.deepEqual(
      roles.map((role) => [role.rolname, role.rolconnlimit, (role.rolconfig as string[]).filter((item) => /read_only|pgprov/.test(item))]),
      [['app_twin.reader', 10, ['default_transaction_read_only=on']], ['app_twin.writer', 10, []], ['app_twin_user', 10, []]],
    );
  });

  it('lifted, a pooled client writes at its next transaction; a direct session keeps its read-only default until it reconnects or turns it off', { timeout: 60_000 }, async () => {
    const app = await t.provision('twin_b');
    await asApp(app.connection_string, (c) => c.query(`CREATE TABLE t (x int); CREATE TABLE filler (n int, body text); ${fill('filler', 1, 5000)}`));
    await untilState('twin_b', 'read_only');
    const pooledClient = await connectAs(app.connection_string);
    const directClient = await connectAs(doorString(app, 'direct'));
    assert.equal((await t.admin('PATCH', '/apps/twin_b/settings', { storage_limit: '64MB' })).status, 200);
    await untilState('twin_b', 'ok');
    await pooledClient.query('INSERT INTO t VALUES (1)');
    assert.equal(await directClient.query('INSERT INTO t VALUES (2)').catch((err: { code?: string }) => err.code), '25006');
    await directClient.query('SET default_transaction_read_only = off');
    await directClient.query('INSERT INTO t VALUES (2)');
    await Promise.all([pooledClient.end(), directClient.end()]);
  });
});

describe('what must not lift the enforcement', () => {
  it('an app that lifts its own read-only flag gets it back; a rotation, the reconciler and a restore (whose dump resets the flag) keep it; a new app of the same name starts writable', { timeout: 120_000 }, async () => {
    const app = await t.provision('keeper');
    // A trap in the app's own data: during a restore (as the restore's agent, with the app's rights) it lifts the
    // app's read-only flag, as a hostile dump could.
    await asApp(app.connection_string, (c) =>
      c.query(
        `CREATE FUNCTION lift() RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN
           IF current_setting('application_name') = 'pg-provisioner-backup' THEN BEGIN
             EXECUTE 'SET ROLE app_keeper_user';
             EXECUTE 'ALTER ROLE app_keeper_user RESET default_transaction_read_only';
             EXECUTE 'RESET ROLE';
           EXCEPTION WHEN OTHERS THEN NULL; END; END IF;
           RETURN true;
         END $f$;
         CREATE TABLE trap (v int CHECK (lift()));
         INSERT INTO trap VALUES (1);
         CREATE TABLE notes (n int, body text);
         ${fill('notes', 1, 5000)}`,
      ),
    );
    await untilState('keeper', 'read_only');
    const readOnlyNow = async () => insertCode(app.connection_string, "INSERT INTO notes VALUES (0, 'x')");
    assert.equal(await readOnlyNow(), '25006');

    // The app lifts its own flag (it may, in a read-write transaction): the next check sets it again, and ends the
    // sessions that could write.
    await asApp(app.connection_string, async (c) => {
      await c.query('BEGIN READ WRITE');
      await c.query('ALTER ROLE app_keeper_user RESET default_transaction_read_only');
      await c.query('COMMIT');
    });
    const reapplied = await eventually(() => storageAudit('keeper'), (audit) => audit.length === 2, 20_000);
    assert.deepEqual(reapplied.map((entry) => [entry.action, entry.detail.roles]), [['storage_read_only', ['app_keeper_user']], ['storage_read_only', ['app_keeper_user']]]);
    assert.equal(await readOnlyNow(), '25006');

    // A rotation, and the reconciler's runs (every 2 s here), leave it read-only.
    const rotated = await t.admin('POST', '/apps/keeper/rotate');
    assert.equal(rotated.status, 200, rotated.text);
    const from = t.serviceLines.length;
    await t.waitForServiceLine(/"msg":"reconcile finished"/, from);
    assert.equal(await insertCode(String(rotated.body.connection_string), "INSERT INTO notes VALUES (0, 'x')"), '25006');

    // A restore while over the limit: the dump's trap lifts the flag, the restore puts the login role's settings
    // back, the quota's included.
    const backup = await t.admin('POST', '/apps/keeper/backups');
    assert.equal(backup.status, 201, backup.text);
    const restored = await t.admin('POST', '/apps/keeper/restore', { file: backup.body.file });
    assert.equal(restored.status, 200, restored.text);
    const restoreAudit = await t.superuser(async (c) => (await c.query(`SELECT detail FROM audit_log WHERE app_name = 'keeper' AND action = 'restore' AND outcome = 'ok'`)).rows, SYSTEM_DATABASE);
    assert.deepEqual(restoreAudit.map((row) => row.detail.login_role_put_back), [['settings']], 'the trap fired during the restore, and the settings were put back');
    assert.ok((await roleSettings('app_keeper_user')).includes('default_transaction_read_only=on'), 'read-only right after the restore, before any check');
    assert.equal(await insertCode(String(rotated.body.connection_string), "INSERT INTO notes VALUES (0, 'x')"), '25006');
    assert.equal((await storageOf('keeper')).state, 'read_only');
    assert.equal((await storageAudit('keeper')).length, 2, 'no check had to set it again');

    // Deleted while read-only, then provisioned again (a ready pool's hand-over): the new app writes.
    assert.equal((await t.admin('DELETE', '/apps/keeper?backup=false')).status, 200);
    const reborn = await t.provision('keeper');
    assert.equal(await insertCode(reborn.connection_string, 'CREATE TABLE fresh (x int); INSERT INTO fresh VALUES (1)'), undefined);
    assert.equal((await storageOf('keeper')).state, 'ok');
  });
});
