// Faults the service must survive, each against the real local stack: Postgres frozen, restarted, its
// backends terminated, its connection slots taken by one tenant; the service down behind nginx.
// (Crashes of the service at each step of an operation: test/crash.test.ts. Stack restarts: lifecycle.test.ts.)
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { signalAll } from '../scripts/process-stats.js';
import { asApp, connectAs, eventually, request, startTestStack, type ProvisionedApp, type TestStack } from './helpers/stack.js';

let t: TestStack;
const apps: ProvisionedApp[] = [];
let counter = 0;

before(async () => {
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', APP_CONNECTION_LIMIT: '100', READY_POOL_SIZE: '2', READY_POOL_REFILL_PER_SECOND: '10' } });
  apps.push(await t.provision('steady'));
});
after(async () => {
  await t?.stop();
});

/** An admin request that gives up after 15 s: an answer within that is "bounded"; an abort fails the test. */
const bounded = (method: string, path: string, body?: unknown) =>
  request(`${t.stack.httpUrl}${path}`, {
    method,
    signal: AbortSignal.timeout(15_000),
    headers: { authorization: `Bearer ${t.stack.adminKey}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });

async function everythingWorks(): Promise<void> {
  const health = await eventually(() => t.get('/health'), (r) => r.status === 200);
  assert.equal(health.status, 200);
  const created = await t.provision(`after_fault_${counter++}`);
  apps.push(created);
  assert.equal((await t.admin('GET', '/apps')).status, 200);
  for (const app of apps) await asApp(app.connection_string, (c) => c.query('SELECT 1'));
}

describe('Postgres frozen (SIGSTOP) for 20 s under load', () => {
  it('answers every request within a bounded time with a JSON 503, reports it on /health, and recovers after SIGCONT', async () => {
    await t.stack.stopService();
    await t.stack.startService({ READY_POOL_SIZE: '0' }); // every provision must reach Postgres
    const pids = t.stack.postgresProcessIds();
    signalAll(pids, 'SIGSTOP');
    const answers: Array<{ status: number; body: Record<string, unknown> }> = [];
    try {
      const frozenAt = Date.now();
      const health = await eventually(() => t.get('/health'), (r) => r.status === 503, 5_000);
      assert.equal(health.status, 503);
      assert.equal(health.body.status, 'unavailable');
      // Four clients keep sending requests until the freeze has lasted 20 s.
      await Promise.all(
        Array.from({ length: 4 }, async (_, client) => {
          for (let i = 0; Date.now() - frozenAt < 20_000; i++) {
            const which = (client + i) % 3;
            const response =
              which === 0 ? await bounded('POST', '/provision', { app_name: `frozen_${client}_${i}` }) : which === 1 ? await bounded('GET', '/apps') : await bounded('POST', '/apps/steady/rotate');
            answers.push(response);
          }
        }),
      );
    } finally {
      signalAll(pids, 'SIGCONT');
    }
    assert.ok(answers.length >= 4);
    for (const answer of answers) {
      assert.equal(answer.status, 503, JSON.stringify(answer.body));
      assert.equal(answer.body.statusCode, 503);
    }
    await everythingWorks();
  });
});

describe('Postgres restarted, and the service\'s backends terminated', () => {
  it('drops dead connections: the next requests succeed, and no app the client was told of is lost', async () => {
    await t.stack.stopService();
    await t.stack.startService();
    const made = await t.provision('before_restart');
    apps.push(made);
    await t.get('/apps'); // the pool holds connections now
    await t.stack.stopPostgres();
    await t.stack.startPostgres();
    assert.equal((await t.admin('GET', '/apps')).status, 200);
    apps.push(await t.provision('after_restart'));

    const ended = await t.superuser(async (db) => (await db.query("SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name = 'pg-provisioner'")).rows[0].n);
    assert.ok(ended >= 1);
    await new Promise((resolve) => setTimeout(resolve, 1_100)); // past the idle time after which a connection is tested
    assert.equal((await t.admin('GET', '/apps')).status, 200);
    apps.push(await t.provision('after_terminate'));
    const listed = ((await t.admin('GET', '/apps')).body.apps as Array<{ app_name: string }>).map((a) => a.app_name);
    for (const app of apps) assert.ok(listed.includes(app.app_name), app.app_name);
    await everythingWorks();
  });
});

describe('the service down behind nginx', () => {
  it('gets a JSON 503 from nginx at once, and nginx routes again when the service is back, without a reload', async () => {
    await t.stack.stopService();
    for (const path of ['/health', '/apps', '/provision']) {
      const response = await request(`${t.stack.httpUrl}${path}`, { method: path === '/provision' ? 'POST' : 'GET', signal: AbortSignal.timeout(5_000) });
      assert.equal(response.status, 503, path);
      assert.equal(response.body.statusCode, 503);
    }
    await t.stack.startService();
    await everythingWorks();
  });
});

describe("one tenant takes every connection slot", () => {
  it('the service opens new connections through its reserved slots, and everything works again once the tenant lets go', async () => {
    const hog = await t.provision('hog');
    const held: pg.Client[] = [];
    /** Connects as the tenant until Postgres refuses it; returns the refusal. */
    const takeEverySlot = async () => {
      for (let i = 0; i < 60; i++) {
        try {
          held.push(await connectAs(hog.connection_string));
        } catch (err) {
          return err as Error & { code?: string };
        }
      }
      return undefined;
    };
    try {
      assert.equal((await takeEverySlot())?.code, '53300', 'the tenant ran out of slots');
      // A service that starts now has no connection open: every one it needs is new, and only the slots
      // reserved for the superuser are left (the ones the old service held are taken by the tenant first).
      await t.stack.stopService();
      assert.equal((await takeEverySlot())?.code, '53300', 'the slots the old service freed are taken too');
      await t.stack.startService({ READY_POOL_SIZE: '0', DATABASE_POOL_SIZE: '2' });
      const health = await eventually(() => t.get('/health'), (r) => r.status === 200, 10_000);
      assert.equal(health.status, 200, 'the service reaches Postgres through new connections (superuser_reserved_connections)');
      assert.equal((await t.admin('GET', '/apps/steady')).status, 200);
    } finally {
      await Promise.all(held.map((c) => c.end()));
    }
    await t.stack.stopService();
    await t.stack.startService();
    apps.push(hog);
    await everythingWorks();
  });
});
