// POST /provision on demand, in process: the service without a ready pool (READY_POOL_SIZE=0), on a Postgres of
// its own (this file's), so that every provision takes the path of many steps, and a failure among them is undone.
// And the benchmark's floor (scripts/lib/bench/floor.ts), which sends those steps straight to Postgres: it must
// make, and remove, exactly what the service does.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { floorDelete, floorProvision } from '../../scripts/lib/bench/floor.js';
import { appRoleLimits, openStoreAndServer } from '../../src/domain/provisioner.js';
import { appIdentifiers } from '../../src/shared/object-names.js';
import { newAppCredential } from '../../src/shared/secrets.js';
import { buildTestApp, type TestApp } from '../helpers/app.js';
import { catalogOf, objectFacts } from '../helpers/catalog.js';

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

describe("the benchmark's floor", () => {
  it('makes and removes, with the service\'s own steps, exactly what the service makes and removes', async () => {
    const { store, server } = openStoreAndServer(t.config, pino({ level: 'silent' }));
    const client = await store.connections.connect();
    try {
      await t.provision('service_made');
      await floorProvision(client, server, appIdentifiers('floor_made'), await newAppCredential(), appRoleLimits(t.config));
      const service = await objectFacts(t.superuser, appIdentifiers('service_made'));
      const floor = await objectFacts(t.superuser, appIdentifiers('floor_made'));
      assert.ok((service.loginRole as { rolcanlogin: boolean }).rolcanlogin, 'the facts are of a made app');
      assert.deepEqual(floor, service);
      assert.deepEqual(await catalog.registryStates('floor_made'), ['ready']);

      assert.equal((await t.admin('DELETE', '/apps/service_made?backup=false')).status, 200);
      await floorDelete(client, server, appIdentifiers('floor_made'));
      for (const name of ['service_made', 'floor_made']) assert.deepEqual(await catalog.app(name), { roles: [], databases: [], registry: [] }, name);
    } finally {
      await client.end();
      await store.close();
    }
  });
});
