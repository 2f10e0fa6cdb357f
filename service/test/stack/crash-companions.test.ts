// Crash safety of companion databases: the service is killed (SIGKILL, via CRASH_AT) between the steps of making
// one (access role made, database made, handed over; a branch: its source refusing connections), of removing one,
// and of deleting an app that has some. After a restart the reconciler leaves each companion complete or gone, and
// a branch's source taking connections again. What a half-made companion holds nobody could log in to (the app's
// login is admitted last), so the reconciler removes it rather than completing it: a POST retried after the crash
// then makes it anew.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { asApp, withDatabase, withLogin } from '../helpers/app-sessions.js';
import { catalogOf } from '../helpers/catalog.js';
import { type ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let t: TestStack;
type App = ProvisionedApp & { password: string; username: string };
let app: App;

before(async () => {
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', READY_POOL_SIZE: '0' } });
  app = (await t.provision('crashy')) as App;
  await asApp(app.connection_string, (c) => c.query("CREATE TABLE kept AS SELECT 'main data' AS v"));
  assert.equal((await t.admin('POST', '/apps/crashy/databases', { name: 'survivor' })).status, 201);
  await asApp(companionString('survivor'), (c) => c.query("CREATE TABLE kept AS SELECT 'companion data' AS v"));
});
after(async () => {
  await t?.stop();
});
const catalog = catalogOf(() => t);

/** The app's string to its companion `name`, with its password in (the service's answer has none). */
const companionString = (name: string) => withDatabase(withLogin(app.connection_string, app.username, app.password), `app_crashy-${name}`);

/** Restarts the service with CRASH_AT=point, runs `trigger` (answered 503: the service died), restarts it, and waits for its first reconcile. */
async function crashAt(point: string, trigger: () => Promise<{ status: number }>): Promise<void> {
  await t.stack.stopService();
  await t.stack.startService({ CRASH_AT: point });
  const answer = await trigger();
  assert.equal(answer.status, 503, `${point}: the client is told the service is unreachable`);
  await t.stack.serviceExited();
  const from = t.serviceLines.length;
  await t.stack.startService();
  await t.waitForServiceLine(/"msg":"reconcile finished"/, from);
}

interface CompanionState {
  database: boolean;
  accessRole: boolean;
  admitted: boolean;
}

async function companionState(database: string): Promise<CompanionState> {
  return t.superuser(async (db) => {
    const { rows } = await db.query<CompanionState>(
      `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS database,
              EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AS "accessRole",
              EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member
                       WHERE g.rolname = $1 AND r.rolname = 'app_crashy_user') AS admitted`,
      [database],
    );
    return rows[0]!;
  });
}

const GONE: CompanionState = { database: false, accessRole: false, admitted: false };
const COMPLETE: CompanionState = { database: true, accessRole: true, admitted: true };

/** Every database of the app takes connections, and the app reaches its data in its own and in the survivor. */
async function assertAppWhole(): Promise<void> {
  assert.equal(await catalog.databaseAllowsConnections('app_crashy'), true, 'the app\'s database takes connections');
  assert.equal(await asApp(app.connection_string, async (c) => (await c.query('SELECT v FROM kept')).rows[0].v), 'main data');
  assert.deepEqual(await companionState('app_crashy-survivor'), COMPLETE);
  assert.equal(await catalog.databaseAllowsConnections('app_crashy-survivor'), true, 'the survivor takes connections');
  assert.equal(await asApp(companionString('survivor'), async (c) => (await c.query('SELECT v FROM kept')).rows[0].v), 'companion data');
}

describe('a crash while a companion is made leaves none, and the name can be made again', () => {
  const cases: Array<[string, string, Record<string, unknown>]> = [
    ['companion:after-create-role', 'role_only', {}],
    ['companion:after-create-database', 'no_grants', {}],
    ['companion:after-hand-over', 'not_admitted', {}],
    ['companion:after-close-source', 'source_closed', { copy_of: 'main' }],
    ['companion:after-create-database', 'copied', { copy_of: 'main' }],
    ['companion:after-close-source', 'companion_source', { copy_of: 'survivor' }],
  ];
  for (const [point, name, extra] of cases) {
    it(`at ${point}${extra.copy_of ? ` (a copy of ${String(extra.copy_of)})` : ''}`, async () => {
      await crashAt(point, () => t.admin('POST', '/apps/crashy/databases', { name, ...extra }));
      assert.deepEqual(await companionState(`app_crashy-${name}`), GONE);
      await assertAppWhole();
      const again = await t.admin('POST', '/apps/crashy/databases', { name, ...extra });
      assert.equal(again.status, 201, again.text);
      assert.equal(await asApp(companionString(name), async (c) => (await c.query('SELECT current_database() AS d')).rows[0].d), `app_crashy-${name}`);
      assert.equal((await t.admin('DELETE', `/apps/crashy/databases/${name}`)).status, 200);
    });
  }
});

describe('a crash while a companion is removed: the reconciler finishes it', () => {
  for (const point of ['companion-delete:after-refuse-login', 'companion-delete:after-drop-database']) {
    it(`at ${point}`, async () => {
      const name = point.endsWith('login') ? 'del_early' : 'del_late';
      assert.equal((await t.admin('POST', '/apps/crashy/databases', { name })).status, 201);
      await crashAt(point, () => t.admin('DELETE', `/apps/crashy/databases/${name}`));
      assert.deepEqual(await companionState(`app_crashy-${name}`), GONE);
      await assertAppWhole();
    });
  }
});

describe('leftovers the reconciler removes', () => {
  it('a companion of an unregistered app, and an access role left without its database', async () => {
    await t.superuser(async (db) => {
      await db.query('CREATE ROLE "app_ghost-x" NOLOGIN');
      await db.query('CREATE DATABASE "app_ghost-x"');
      await db.query('CREATE ROLE "app_crashy-stray" NOLOGIN');
    });
    const from = t.serviceLines.length;
    await t.stack.stopService();
    await t.stack.startService();
    await t.waitForServiceLine(/"msg":"reconcile finished"/, from);
    assert.deepEqual(await catalog.existingDatabases(['app_ghost-x']), []);
    assert.deepEqual(await catalog.existingRoles(['app_ghost-x', 'app_crashy-stray']), []);
    await assertAppWhole();
  });
});

describe('a crash while an app with companions is deleted', () => {
  it('at delete:after-end-sessions: the reconciler removes the app and every companion', async () => {
    await t.provision('doomed_app');
    for (const name of ['one', 'two']) assert.equal((await t.admin('POST', '/apps/doomed_app/databases', { name })).status, 201);
    await crashAt('delete:after-end-sessions', () => t.admin('DELETE', '/apps/doomed_app?backup=false'));
    assert.deepEqual(await catalog.databasesLike('app\\_doomed\\_app%'), []);
    assert.deepEqual(await catalog.rolesLike('app\\_doomed\\_app%'), []);
    assert.deepEqual(await catalog.registryStates('doomed_app'), []);
    await assertAppWhole();
  });
});

describe('after every crash', () => {
  it('nothing is left half-made, and the complete companion still holds its data', async () => {
    assert.deepEqual(await catalog.halfMadeObjects(), []);
    await assertAppWhole();
  });
});
