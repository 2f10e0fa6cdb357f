// Crash safety: the service is killed (SIGKILL, via CRASH_AT) between the statements of provision, rotate,
// restore and delete. After a restart, the reconciler must leave every app complete or absent, and every app
// the client was told exists must still work.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { asApp } from '../helpers/app-sessions.js';
import { type ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';
import { appIdentifiers, readySetNames } from '../../src/shared/object-names.js';
import { catalogOf } from '../helpers/catalog.js';
import { eventually } from '../helpers/conditions.js';

let t: TestStack;
let survivor: ProvisionedApp;

before(async () => {
  // The on-demand path is the one with many steps; the ready pool's handover is one transaction, and gets its
  // own tests at the end, with the pool switched on.
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', READY_POOL_SIZE: '0' } });
  survivor = await t.provision('survivor');
  await asApp(survivor.connection_string, (c) => c.query("CREATE TABLE kept AS SELECT 'yes' AS v"));
});
after(async () => {
  await t?.stop();
});
const catalog = catalogOf(() => t);

/**
 * Restarts the service with CRASH_AT=point (and `crashEnv`), runs `trigger` (if any), waits for the crash,
 * restarts it normally (with `env`), and waits for the reconciler's first run.
 */
async function crashAt(point: string, trigger?: () => Promise<unknown>, env: Record<string, string> = {}, crashEnv = env): Promise<void> {
  await t.stack.stopService();
  // Without a trigger the crash comes from background work, possibly before the service reports ready.
  const started = t.stack.startService({ ...crashEnv, CRASH_AT: point });
  await (trigger ? started : started.catch(() => {}));
  if (trigger) {
    const answer = await trigger();
    assert.equal((answer as { status?: number }).status, 503, `${point}: the client is told the service is unreachable`);
  }
  await t.stack.serviceExited();
  const from = t.serviceLines.length;
  await t.stack.startService(env);
  await t.waitForServiceLine(/"msg":"reconcile finished"/, from);
}

interface AppState {
  registry: string[];
  loginRole: boolean;
  loginAllowed: boolean;
  accessRole: boolean;
  database: boolean;
  allowsConnections: boolean | null;
  workDatabases: string[];
}

async function stateOf(appName: string): Promise<AppState> {
  const app = appIdentifiers(appName);
  const login = await catalog.roleAttributes(app.username);
  const allows = await catalog.databaseAllowsConnections(app.database);
  // The agent roles of dumps and restores (src/db/postgres-server/agent-roles.ts) count as work left over too.
  const { databases, agents } = await catalog.workLeftovers();
  return {
    registry: await catalog.registryStates(appName),
    loginRole: login !== undefined,
    loginAllowed: login?.rolcanlogin === true,
    accessRole: (await catalog.existingRoles([app.accessRole])).length === 1,
    database: allows !== undefined,
    allowsConnections: allows ?? null,
    workDatabases: [...databases, ...agents.map((agent) => `role ${agent}`)],
  };
}

const ABSENT: AppState = { registry: [], loginRole: false, loginAllowed: false, accessRole: false, database: false, allowsConnections: null, workDatabases: [] };
const COMPLETE: AppState = { registry: ['ready'], loginRole: true, loginAllowed: true, accessRole: true, database: true, allowsConnections: true, workDatabases: [] };

describe('a crash in the middle of provisioning leaves no half-made app', () => {
  for (const point of ['provision:after-register', 'provision:after-create-roles', 'provision:after-create-database', 'provision:after-hand-over']) {
    it(`at ${point}: the app is absent after reconcile, and the name can be provisioned again`, async () => {
      const name = `crash_${point.split(':')[1]!.replaceAll('-', '_')}`;
      await crashAt(point, () => t.post('/provision', { app_name: name, admin_key: t.stack.adminKey }));
      assert.deepEqual(await stateOf(name), ABSENT);
      const app = await t.provision(name);
      await asApp(app.connection_string, (c) => c.query('SELECT 1'));
      assert.deepEqual(await stateOf(name), COMPLETE);
    });
  }
});

describe('a crash in the middle of deleting leaves the app either whole or gone', () => {
  it('at delete:after-backup (before anything is removed): the app is complete and still works', async () => {
    const app = await t.provision('del_early');
    await crashAt('delete:after-backup', () => t.admin('DELETE', '/apps/del_early'));
    assert.deepEqual(await stateOf('del_early'), COMPLETE);
    await asApp(app.connection_string, (c) => c.query('SELECT 1'));
  });

  for (const point of ['delete:after-mark-deleting', 'delete:after-end-sessions', 'delete:after-drop-database']) {
    it(`at ${point}: the deletion is finished by the reconciler`, async () => {
      const name = `del_${point.split(':')[1]!.replaceAll('-', '_')}`;
      await t.provision(name);
      await crashAt(point, () => t.admin('DELETE', `/apps/${name}`));
      assert.deepEqual(await stateOf(name), ABSENT);
    });
  }
});

describe('a crash in the middle of rotating', () => {
  it('at rotate:after-disable-login: the reconciler lets the app log in again, with the password it has', async () => {
    const app = await t.provision('rot_early');
    await crashAt('rotate:after-disable-login', () => t.admin('POST', '/apps/rot_early/rotate'));
    assert.deepEqual(await stateOf('rot_early'), COMPLETE);
    await asApp(app.connection_string, (c) => c.query('SELECT 1'));
  });

  it('at rotate:after-set-password: the app is complete, and rotating again gives a working password', async () => {
    await t.provision('rot_crash');
    await crashAt('rotate:after-set-password', () => t.admin('POST', '/apps/rot_crash/rotate'));
    assert.deepEqual(await stateOf('rot_crash'), COMPLETE);
    const rotated = await t.admin('POST', '/apps/rot_crash/rotate');
    assert.equal(rotated.status, 200);
    await asApp(String(rotated.body.connection_string), (c) => c.query('SELECT 1'));
  });
});

describe('a crash in the middle of restoring leaves the old data or the restored data, never a mix', () => {
  for (const point of ['restore:after-create-copy', 'restore:after-create-agent', 'restore:after-restore', 'restore:after-swap']) {
    it(`at ${point}`, async () => {
      const name = `res_${point.split(':')[1]!.replaceAll('-', '_')}`;
      const app = await t.provision(name);
      await asApp(app.connection_string, (c) => c.query("CREATE TABLE t AS SELECT 'backed up' AS v"));
      const backup = await t.admin('POST', `/apps/${name}/backups`);
      await asApp(app.connection_string, (c) => c.query("UPDATE t SET v = 'changed later'"));
      await crashAt(point, () => t.admin('POST', `/apps/${name}/restore`, { file: backup.body.file }));
      assert.deepEqual(await stateOf(name), COMPLETE);
      const value = await asApp(app.connection_string, async (c) => (await c.query('SELECT v FROM t')).rows[0].v);
      assert.equal(value, point === 'restore:after-swap' ? 'backed up' : 'changed later');
    });
  }
});

describe('a crash with the ready pool on', () => {
  const pool = { READY_POOL_SIZE: '2', READY_POOL_REFILL_PER_SECOND: '20' };
  const readySets = async () => ({ entries: await catalog.readySetEntries(), ...(await catalog.readySetObjects()) });

  it('while preparing a set (after its database is made): the half-prepared set is removed', async () => {
    await crashAt('ready-pool:after-create-database', undefined, { READY_POOL_SIZE: '0' }, pool);
    const sets = await readySets();
    assert.deepEqual(sets, { entries: [], databases: [], roles: [] });
  });

  /**
   * Restarts the service with a ready pool, waits for two ready sets, then provisions new names (`prefix`_<i>)
   * until one goes through a hand-over and the service dies at `point` in it; returns that name.
   */
  async function crashInHandOver(point: string, prefix: string): Promise<string> {
    await t.stack.stopService();
    await t.stack.startService(pool);
    await t.waitForServiceLine(/"msg":"reconcile finished"/);
    await eventually(readySets, (sets) => sets.entries.filter((e) => e.state === 'ready').length >= 2, 10_000);
    // The restarted service gives the prepared sets new passwords in the background; until it has, provisioning
    // takes the on-demand path (201, no crash). Provision new names until one goes through a hand-over.
    let crashed = '';
    await crashAt(
      point,
      async () => {
        for (let i = 0; i < 100; i++) {
          const response = await t.post('/provision', { app_name: `${prefix}_${i}`, admin_key: t.stack.adminKey });
          if (response.status !== 201) {
            crashed = `${prefix}_${i}`;
            return response;
          }
          await new Promise((r) => setTimeout(r, 100));
        }
        throw new Error('no provision went through a hand-over');
      },
      pool,
    );
    return crashed;
  }

  it("between a hand-over's rename on the server and its confirmation in the system store: the app is absent after reconcile", async () => {
    const crashed = await crashInHandOver('provision:after-handover-rename', 'renamed_crash');
    assert.deepEqual(await stateOf(crashed), ABSENT);
    const again = await t.provision(crashed);
    await asApp(again.connection_string, (c) => c.query('SELECT 1'));
  });

  it('right after a handover commits: the app is complete and works', async () => {
    const crashed = await crashInHandOver('provision:after-handover', 'pooled_crash');
    assert.deepEqual(await stateOf(crashed), COMPLETE);
    const rotated = await t.admin('POST', `/apps/${crashed}/rotate`);
    await asApp(String(rotated.body.connection_string), (c) => c.query('SELECT 1'));
    const sets = await readySets();
    for (const entry of sets.entries) assert.ok(sets.databases.includes(readySetNames(entry.id).database) || entry.state === 'preparing');
  });
});

describe('after every crash', () => {
  it('the app the client was told exists still works, with its data', async () => {
    const rows = await asApp(survivor.connection_string, async (c) => (await c.query('SELECT v FROM kept')).rows);
    assert.deepEqual(rows, [{ v: 'yes' }]);
    const listed = await t.admin('GET', '/apps');
    const names = (listed.body.apps as Array<{ app_name: string }>).map((a) => a.app_name);
    assert.ok(names.includes('survivor'));
    for (const name of names) assert.deepEqual(await stateOf(name), COMPLETE, name);
  });
});
