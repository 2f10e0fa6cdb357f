// POST /provision on demand, in process: the service without a ready pool (READY_POOL_SIZE=0), on a Postgres of
// its own (this file's), so that every provision takes the path of many steps, and a failure among them is undone.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { buildTestApp, type TestApp } from '../helpers/app.js';
import { catalogOf } from '../helpers/catalog.js';

let t: TestApp;
before(async () => {
  t = await buildTestApp({ env: { READY_POOL_SIZE: '0' } });
});
after(async () => {
  await t?.close();
});
const catalog = catalogOf(() => t);

describe('POST /provision on demand (no ready pool)', () => {
  it('undoes the role when the database cannot be made (no half app)', async () => {
    assert.deepEqual(await catalog.readySetIds(), [], 'no ready pool: every provision is made on demand');
    await t.superuser((db) => db.query('CREATE DATABASE app_blocked'));
    const from = t.serviceLines.length;
    const response = await t.post('/provision', { app_name: 'blocked', admin_key: t.adminKey });
    assert.equal(response.status, 409);
    assert.equal(response.body.message, "app 'blocked' already exists");
    // The on-demand path made the roles, failed at CREATE DATABASE, and undid what it had made: it says so.
    await t.waitForServiceLine(/"app":"blocked"[^\n]*"msg":"provisioning failed; the steps already done were undone"/, from);
    const roles = await catalog.appRoleNames();
    assert.ok(!roles.includes('app_blocked_user'), 'the login role made before the failure was dropped');
    assert.ok(!roles.includes('app_blocked'), 'the access role made before the failure was dropped');
    assert.deepEqual(await catalog.registryStates('blocked'), [], 'the registry row made first was removed');
    assert.deepEqual(await catalog.appDatabaseNames(), ['app_blocked'], 'the database that was there, not ours, is left alone');
    // And the name works once its database is gone.
    await t.superuser((db) => db.query('DROP DATABASE app_blocked'));
    assert.equal((await t.post('/provision', { app_name: 'blocked', admin_key: t.adminKey })).status, 201);
  });
});
