// Per-app settings across what replaces an app's Postgres objects or the service's defaults: a restart with other
// defaults (the ready pool, new apps handed over or made on demand, apps with and without overrides), a restore
// (a new database, and a dump whose code changes the login role's settings), and a crash between saving a change
// and putting it in force.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { asApp, doorString } from '../helpers/app-sessions.js';
import { catalogOf } from '../helpers/catalog.js';
import { eventually } from '../helpers/conditions.js';
import type { ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let t: TestStack;
before(async () => {
  t = await startTestStack({ serviceEnv: { RECONCILE_INTERVAL_MS: '3600000' } });
});
after(async () => {
  await t?.stop();
});
const catalog = catalogOf(() => t);

const direct = (app: ProvisionedApp) => doorString(app, 'direct');
const show = (connectionString: string, setting: string) => asApp(connectionString, async (c) => String(Object.values((await c.query(`SHOW ${setting}`)).rows[0])[0]));

/** The login role's connection limit and its settings (for every database). */
async function loginRole(appName: string): Promise<{ limit: number; settings: string[] }> {
  const role = (await catalog.roleAttributes(`app_${appName}_user`))!;
  return { limit: role.rolconnlimit, settings: [...(role.rolconfig ?? [])].sort() };
}

/** Restarts the service with `env` on top of the stack's settings, and waits for its first reconcile. */
async function restartService(env: Record<string, string> = {}): Promise<void> {
  const from = t.serviceLines.length;
  await t.stack.stopService();
  await t.stack.startService(env);
  await t.waitForServiceLine(/"msg":"reconcile finished"/, from);
}

describe('changed defaults', () => {
  it('reach the ready pool, new apps (handed over and on demand) and apps without overrides; an override stays', async () => {
    await t.provision('follower');
    await t.provision('keeper');
    assert.equal((await t.admin('PATCH', '/apps/keeper/settings', { statement_timeout: '45s', connection_limit: 3 })).status, 200);
    const prepared = await eventually(catalog.readySetLogins, (sets) => sets.length > 0, 60_000);
    assert.ok(prepared.length > 0 && prepared.every((set) => set.rolconnlimit === 10), 'sets prepared under the default limit');
    const newDefaults = { APP_CONNECTION_LIMIT: '7', APP_STATEMENT_TIMEOUT: '30s', APP_IDLE_SESSION_TIMEOUT: '1h' };
    try {
      await restartService(newDefaults);
      // The pool re-keys each set it finds (a new password and today's limits) before it can hand it over.
      const oldOids = new Set(prepared.map((set) => set.oid));
      const rekeyed = (sets: typeof prepared) => sets.filter((set) => oldOids.has(set.oid)).every((set) => set.rolconnlimit === 7 && set.rolconfig.includes('statement_timeout=30s'));
      assert.ok(rekeyed(await eventually(catalog.readySetLogins, rekeyed, 60_000)), 'every set prepared before the restart carries the new defaults');

      const handed = await t.provision('handed');
      assert.ok(oldOids.has((await catalog.databaseOid('app_handed'))!), 'handed over from a set prepared before the restart');
      const handedRole = await loginRole('handed');
      assert.equal(handedRole.limit, 7);
      assert.ok(handedRole.settings.includes('statement_timeout=30s') && handedRole.settings.includes('idle_session_timeout=1h'), handedRole.settings.join(' '));
      assert.equal(await show(handed.connection_string, 'statement_timeout'), '30s');

      // Made before the restart: the one without overrides follows the new defaults, the one with keeps its own.
      const follower = await loginRole('follower');
      assert.equal(follower.limit, 7);
      assert.ok(follower.settings.includes('statement_timeout=30s'), follower.settings.join(' '));
      const keeper = await loginRole('keeper');
      assert.equal(keeper.limit, 3);
      assert.ok(keeper.settings.includes('statement_timeout=45s') && keeper.settings.includes('idle_session_timeout=1h'), keeper.settings.join(' '));
      const view = (await t.admin('GET', '/apps/keeper/settings')).body as Record<string, Record<string, unknown>>;
      assert.deepEqual(view.overrides, { connection_limit: 3, statement_timeout: '45s', database: {} });
      assert.equal(view.in_force!.statement_timeout, '45s');
      assert.equal(view.defaults!.statement_timeout, '30s');
      assert.equal(view.defaults!.connection_limit, 7);

      // On demand (no ready pool): the new defaults too.
      await restartService({ ...newDefaults, READY_POOL_SIZE: '0' });
      const made = await t.provision('on_demand');
      const madeRole = await loginRole('on_demand');
      assert.equal(madeRole.limit, 7);
      assert.ok(madeRole.settings.includes('statement_timeout=30s'), madeRole.settings.join(' '));
      assert.equal(await show(direct(made), 'statement_timeout'), '30s');
    } finally {
      // The next test starts from the stack's own settings, whatever happened here.
      await restartService();
    }
    assert.equal((await loginRole('keeper')).limit, 3, 'back on the old defaults, the override still holds');
    assert.equal((await loginRole('follower')).limit, 10);
  });
});

describe('a restore', () => {
  it("keeps the app's overrides in force, and gives its database settings to the restored database", async () => {
    const app = await t.provision('restored');
    const overrides = { statement_timeout: '1s', connection_limit: 4, database: { timezone: 'Asia/Tokyo', search_path: ['app', 'public'] } };
    assert.equal((await t.admin('PATCH', '/apps/restored/settings', overrides)).status, 200);
    // A dump whose code changes the login role's settings while it is restored (the app's own rights may).
    await asApp(direct(app), (c) =>
      c.query(`CREATE SCHEMA app;
               CREATE TABLE app.kept (v text); INSERT INTO app.kept VALUES ('yes');
               CREATE FUNCTION public.loosen() RETURNS boolean LANGUAGE plpgsql AS $f$
               BEGIN
                 IF current_setting('application_name') = 'pg-provisioner-backup' THEN BEGIN
                   EXECUTE 'SET ROLE app_restored_user';
                   EXECUTE 'ALTER ROLE app_restored_user SET statement_timeout = ''0''';
                   EXECUTE 'RESET ROLE';
                 EXCEPTION WHEN OTHERS THEN NULL; END; END IF;
                 RETURN true;
               END $f$;
               CREATE TABLE public.loosener (v int CHECK (public.loosen()));
               INSERT INTO public.loosener VALUES (1);`),
    );
    const oidBefore = await catalog.databaseOid('app_restored');
    const backup = await t.admin('POST', '/apps/restored/backups');
    assert.equal(backup.status, 201, backup.text);
    const restored = await t.admin('POST', '/apps/restored/restore', { file: backup.body.file });
    assert.equal(restored.status, 200, restored.text);
    assert.notEqual(await catalog.databaseOid('app_restored'), oidBefore, 'a new database was swapped in');

    const detail = await t.superuser(async (db) => (await db.query("SELECT detail FROM audit_log WHERE app_name = 'restored' AND action = 'restore' ORDER BY id DESC LIMIT 1")).rows[0].detail, 'provisioner');
    assert.deepEqual(detail.login_role_put_back, ['settings'], 'the dump did change the role (so the put-back below is tested)');
    const role = await loginRole('restored');
    assert.equal(role.limit, 4);
    assert.ok(role.settings.includes('statement_timeout=1s'), `the override, not the default nor the dump's: ${role.settings.join(' ')}`);
    await asApp(direct(app), async (c) => {
      assert.equal((await c.query('SHOW timezone')).rows[0].TimeZone, 'Asia/Tokyo');
      assert.equal((await c.query('SELECT v FROM kept')).rows[0].v, 'yes', 'the restored data, found through search_path');
      assert.equal(await c.query('SELECT pg_sleep(3)').then(() => 'finished', (err: { code?: string }) => err.code), '57014');
    });
    assert.equal(await show(app.connection_string, 'timezone'), 'Asia/Tokyo', 'through the pooler too');
  });
});

describe('a crash', () => {
  it('between saving a change and putting it in force leaves the old settings, in the store and in Postgres', async () => {
    const app = await t.provision('crashed');
    assert.equal((await t.admin('PATCH', '/apps/crashed/settings', { statement_timeout: '5s' })).status, 200);
    const before = { api: (await t.admin('GET', '/apps/crashed/settings')).body, role: await loginRole('crashed') };
    await t.stack.stopService();
    await t.stack.startService({ CRASH_AT: 'settings:after-save' });
    const answer = await t.admin('PATCH', '/apps/crashed/settings', { statement_timeout: '9s', connection_limit: 2, database: { timezone: 'Europe/Paris' } });
    assert.equal(answer.status, 503, 'the client is told the service is unreachable');
    await t.stack.serviceExited();
    const from = t.serviceLines.length;
    await t.stack.startService();
    await t.waitForServiceLine(/"msg":"reconcile finished"/, from);
    assert.deepEqual({ api: (await t.admin('GET', '/apps/crashed/settings')).body, role: await loginRole('crashed') }, before);
    assert.equal(await show(direct(app), 'timezone'), 'UTC');
    // And the change, made again, is taken.
    assert.equal((await t.admin('PATCH', '/apps/crashed/settings', { statement_timeout: '9s' })).status, 200);
    assert.ok((await loginRole('crashed')).settings.includes('statement_timeout=9s'));
  });
});
