// Crash safety of extra credentials: the service is killed (SIGKILL, via CRASH_AT) between the steps of making,
// rotating and deleting one. After a restart, the reconciler must leave each credential live and working, or gone;
// and it removes the credential roles of an app that is not registered.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { asApp, connectAs, DOORS, doorString, type AppDoors } from '../helpers/app-sessions.js';
import { catalogOf } from '../helpers/catalog.js';
import { rejectionOf } from '../helpers/conditions.js';
import { type ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let t: TestStack;
let app: ProvisionedApp & AppDoors;

// Up to 20 credentials on one app: each login holds the app's connection limit, and together they must fit the
// server's slots (refuseLoginsBeyondServer), so the limit is 2 here (21 logins, 42 of 47).
before(async () => {
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', READY_POOL_SIZE: '0', APP_MAX_CREDENTIALS: '20', APP_CONNECTION_LIMIT: '2' } });
  app = (await t.provision('crashing')) as ProvisionedApp & AppDoors;
  await asApp(app.connection_string, (c) => c.query("CREATE TABLE kept AS SELECT 'yes' AS v"));
});
after(async () => {
  await t?.stop();
});
const catalog = catalogOf(() => t);

/** Restarts the service with CRASH_AT=point, runs `trigger` (the client is told 503), and restarts it until the reconciler has run. */
async function crashAt(point: string, trigger: () => Promise<{ status: number }>): Promise<void> {
  await t.stack.stopService();
  await t.stack.startService({ CRASH_AT: point, APP_MAX_CREDENTIALS: '20', APP_CONNECTION_LIMIT: '2' });
  const answer = await trigger();
  assert.equal(answer.status, 503, `${point}: the client is told the service is unreachable`);
  await t.stack.serviceExited();
  const from = t.serviceLines.length;
  await t.stack.startService({ APP_MAX_CREDENTIALS: '20', APP_CONNECTION_LIMIT: '2' });
  await t.waitForServiceLine(/"msg":"reconcile finished"/, from);
}

/** A credential role as the catalog has it: whether it exists, may log in, and is live (not marked VALID UNTIL -infinity). */
async function credentialState(role: string): Promise<{ exists: boolean; login?: boolean; live?: boolean }> {
  const [row] = await t.superuser(async (db) => (await db.query('SELECT rolcanlogin, rolvaliduntil IS NULL OR rolvaliduntil > now() AS live FROM pg_roles WHERE rolname = $1', [role])).rows);
  return row ? { exists: true, login: row.rolcanlogin, live: row.live } : { exists: false };
}

async function makeCredential(name: string, access: string): Promise<AppDoors & { password: string }> {
  const made = await t.admin('POST', '/apps/crashing/credentials', { name, access });
  assert.equal(made.status, 201, made.text);
  return made.body as unknown as AppDoors & { password: string };
}

const works = async (login: AppDoors) => {
  for (const { door } of DOORS) assert.deepEqual(await asApp(doorString(login, door), async (c) => (await c.query('SELECT v FROM kept')).rows), [{ v: 'yes' }], door);
};

describe('a crash while making a credential', () => {
  for (const [point, access] of [
    ['create-credential:after-create-role', 'read_only'],
    ['create-credential:after-grants', 'read_only'],
    ['create-credential:after-create-role', 'full'],
  ] as const) {
    it(`at ${point} (${access}): the half-made credential is removed, and the name can be made again`, async () => {
      const name = `${access === 'full' ? 'f' : 'r'}_${point.split(':')[1]!.replaceAll('-', '_')}`;
      await crashAt(point, () => t.admin('POST', '/apps/crashing/credentials', { name, access }));
      assert.deepEqual(await credentialState(`app_crashing.${name}`), { exists: false });
      const again = await makeCredential(name, access);
      await works(again);
    });
  }

  it('at create-credential:after-live: the credential is complete, and the door admits it once rotated', async () => {
    await crashAt('create-credential:after-live', () => t.admin('POST', '/apps/crashing/credentials', { name: 'made_live', access: 'read_only' }));
    assert.deepEqual(await credentialState('app_crashing.made_live'), { exists: true, login: true, live: true });
    const listed = await t.admin('GET', '/apps/crashing/credentials');
    assert.ok((listed.body.credentials as Array<{ name: string }>).some((c) => c.name === 'made_live'));
    const rotated = await t.admin('POST', '/apps/crashing/credentials/made_live/rotate');
    assert.equal(rotated.status, 200, rotated.text);
    await works(rotated.body as unknown as AppDoors);
  });
});

describe('a crash while rotating a credential', () => {
  it('at rotate-credential:after-disable-login: it may log in again, with the password it has', async () => {
    const login = await makeCredential('rot_early', 'read_only');
    await crashAt('rotate-credential:after-disable-login', () => t.admin('POST', '/apps/crashing/credentials/rot_early/rotate'));
    assert.deepEqual(await credentialState('app_crashing.rot_early'), { exists: true, login: true, live: true });
    await works(login);
  });

  it('at rotate-credential:after-set-password: it may log in again, and rotating again gives a working password', async () => {
    await makeCredential('rot_late', 'full');
    await crashAt('rotate-credential:after-set-password', () => t.admin('POST', '/apps/crashing/credentials/rot_late/rotate'));
    assert.deepEqual(await credentialState('app_crashing.rot_late'), { exists: true, login: true, live: true });
    const rotated = await t.admin('POST', '/apps/crashing/credentials/rot_late/rotate');
    assert.equal(rotated.status, 200, rotated.text);
    await works(rotated.body as unknown as AppDoors);
  });
});

describe('a crash while deleting a credential', () => {
  for (const point of ['delete-credential:after-retire', 'delete-credential:after-end-sessions']) {
    it(`at ${point}: the deletion is finished by the reconciler`, async () => {
      const name = `del_${point.split(':')[1]!.replace('after-', '').replaceAll('-', '_')}`;
      const login = await makeCredential(name, 'read_only');
      await crashAt(point, () => t.admin('DELETE', `/apps/crashing/credentials/${name}`));
      assert.deepEqual(await credentialState(`app_crashing.${name}`), { exists: false });
      for (const { door } of DOORS) await rejectionOf(connectAs(doorString(login, door)));
    });
  }
});

describe('the reconciler', () => {
  it('removes the credential roles of an app that is not registered', async () => {
    // As a crash or a hand could leave them: roles named like a credential, of an app the registry does not know.
    await t.superuser((db) =>
      db.query(`CREATE ROLE "app_ghost.reader" LOGIN NOINHERIT IN ROLE provisioned_apps; CREATE ROLE "app_ghost.full" NOLOGIN NOINHERIT VALID UNTIL '-infinity'`),
    );
    const from = t.serviceLines.length;
    await t.stack.stopService();
    await t.stack.startService({ APP_MAX_CREDENTIALS: '20', APP_CONNECTION_LIMIT: '2' });
    await t.waitForServiceLine(/"msg":"reconcile finished"/, from);
    assert.deepEqual(await catalog.rolesLike('app\\_ghost%'), []);
  });

  it('leaves the app and every credential the client was told of working', async () => {
    await works(app);
    const listed = await t.admin('GET', '/apps/crashing/credentials');
    assert.deepEqual(
      (listed.body.credentials as Array<{ name: string }>).map((c) => c.name),
      ['f_after_create_role', 'made_live', 'r_after_create_role', 'r_after_grants', 'rot_early', 'rot_late'],
    );
    assert.deepEqual(await catalog.halfMadeObjects(), []);
  });
});
