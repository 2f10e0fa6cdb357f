// Faults the service must survive, each against the real local stack: Postgres frozen, restarted, its
// backends terminated, its connection slots sought by one tenant (through the pooler, and through the direct
// door); the service down behind nginx.
// (Crashes of the service at each step of an operation: test/crash.test.ts. Stack restarts: lifecycle.test.ts.)
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { signalAll } from '../../scripts/lib/process-stats.js';
import { asApp, connectAs } from '../helpers/app-sessions.js';
import { eventually } from '../helpers/conditions.js';
import { request, type ProvisionedApp } from '../helpers/service-client.js';
import { catalogOf } from '../helpers/catalog.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let t: TestStack;
const apps: ProvisionedApp[] = [];
let counter = 0;
const catalog = catalogOf(() => t);

before(async () => {
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', APP_CONNECTION_LIMIT: '100', READY_POOL_SIZE: '2', READY_POOL_REFILL_PER_SECOND: '10' } });
  apps.push(await t.provision('steady'));
});
after(async () => {
  await t?.stop();
});

/**
 * An admin request through nginx. `patienceMs` only tells a hang from an answer (the test's own bound): a
 * service that answers by its own bounds is far inside it; without them it waits for nginx's route timeout.
 */
const adminRequest = (method: string, path: string, body?: unknown, patienceMs = 120_000) =>
  request(`${t.stack.httpUrl}${path}`, {
    method,
    signal: AbortSignal.timeout(patienceMs),
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

/** The service's JSON lines that carry `reqId` (every line a request logs), parsed. */
function serviceLinesOf(reqId: string): Array<Record<string, unknown>> {
  return t.serviceLines.filter((line) => line.includes(reqId)).flatMap((line) => {
    try {
      const parsed = JSON.parse(line) as Record<string, unknown>;
      return parsed.reqId === reqId ? [parsed] : [];
    } catch {
      return [];
    }
  });
}

// The bounds under test are the service's own (src/shared/config.ts, with their defaults here): a pool connection
// within DATABASE_CONNECT_TIMEOUT_MS (3 s), each answer within DATABASE_STATEMENT_TIMEOUT_MS (7 s), a health
// ping within HEALTH_TIMEOUT_MS (1.5 s). The test asserts no duration: it asserts that every answer given while
// Postgres is frozen is the service's own 503, given because one of those bounds ran out (the service's log line
// for that request names the timeout), and that none was cut by nginx (a 504) or by the client (a hang). The
// durations are printed (the service's own responseTimeMs) for RELIABILITY.md.
describe('Postgres frozen (SIGSTOP)', () => {
  it("answers every request with the service's own 503 when its own bound runs out, while Postgres is still frozen, and recovers after SIGCONT", async (ctx) => {
    await t.stack.stopService();
    await t.stack.startService({ READY_POOL_SIZE: '0' }); // every provision must reach Postgres
    const victim = await t.provision('frozen_victim');
    // The pool holds connections (more requests at once than it has): the first wave below finds them open.
    await Promise.all(Array.from({ length: 6 }, () => t.admin('GET', '/apps')));
    const pids = t.stack.postgresProcessIds();
    signalAll(pids, 'SIGSTOP');
    const frozenAt = Date.now();
    const answers: Array<{ what: string; response: Awaited<ReturnType<typeof adminRequest>> }> = [];
    const healthAnswers: Array<Awaited<ReturnType<typeof request>>> = [];
    try {
      // /health: the service's own 503 once its ping has failed; every answer on the way is the service's
      // (a 200 from the last success, or the 503), never nginx's 504 (its /health bound is 3 s).
      const health = await eventually(
        async () => {
          const response = await request(`${t.stack.httpUrl}/health`, { signal: AbortSignal.timeout(60_000) });
          healthAnswers.push(response);
          return response;
        },
        (r) => r.status !== 200,
        60_000,
      );
      ctx.diagnostic(`/health answered 503 ${Date.now() - frozenAt} ms after the freeze, after ${healthAnswers.length} requests`);
      assert.equal(health.status, 503, health.text);
      assert.deepEqual({ status: health.body.status, message: health.body.message }, { status: 'unavailable', message: 'the database is not answering' });
      for (const answer of healthAnswers) assert.ok(answer.status === 200 || answer.body.status === 'unavailable', `/health answered ${answer.status} ${answer.text}`);

      // Two waves of every kind of request, more at once than the pool has connections (5): the first finds
      // pooled connections open (and waits for one), the second finds none (each timed-out connection was
      // dropped) and must open new ones. Postgres stays frozen until every one is answered.
      for (let wave = 0; wave < 2; wave++) {
        const calls: Array<[string, () => ReturnType<typeof adminRequest>]> = [
          ['provision', () => adminRequest('POST', '/provision', { app_name: `frozen_${wave}_a` })],
          ['provision', () => adminRequest('POST', '/provision', { app_name: `frozen_${wave}_b` })],
          ['list', () => adminRequest('GET', '/apps')],
          ['list', () => adminRequest('GET', '/apps')],
          ['get', () => adminRequest('GET', '/apps/steady')],
          ['rotate', () => adminRequest('POST', '/apps/steady/rotate')],
          ['delete', () => adminRequest('DELETE', `/apps/${victim.app_name}?backup=false`)],
          ['backups', () => adminRequest('GET', '/apps/steady/backups')],
        ];
        answers.push(...(await Promise.all(calls.map(async ([what, call]) => ({ what: `${what} (wave ${wave + 1})`, response: await call() })))));
      }
    } finally {
      signalAll(pids, 'SIGCONT');
    }

    const durations: string[] = [];
    for (const { what, response } of answers) {
      assert.equal(response.status, 503, `${what}: ${response.status} ${response.text}`);
      // The service's own words (nginx's 503 says "not reachable", its 504 "did not answer in time").
      assert.equal(response.body.message, 'the database is unavailable, retry later', what);
      const reqId = response.headers.get('x-request-id') ?? '';
      assert.equal(response.body.request_id, reqId, `${what}: the answer is the service's, with the request's id`);
      // …given because one of the service's own bounds ran out: its log line for this request names the timeout.
      // (The service's output reaches this process through a pipe, after the answer: wait for the request's last line.)
      await t.waitForServiceLine(new RegExp(`"reqId":"${reqId}".*"msg":"request"`));
      const lines = serviceLinesOf(reqId);
      const failure = lines.find((line) => line.level === 50);
      assert.ok(failure, `${what}: the service logged the failure (${JSON.stringify(lines)})`);
      assert.match(JSON.stringify(failure.err), /timeout/i, `${what}: ${JSON.stringify(failure.err)}`);
      const done = lines.find((line) => line.msg === 'request');
      durations.push(`${what} ${done?.responseTimeMs ?? '?'} ms`);
    }
    ctx.diagnostic(`answered while frozen, the service's own time per request: ${durations.join(', ')}`);

    // After SIGCONT: nothing half-made once the reconciler has run (a restart runs it), and everything works.
    await t.stack.stopService();
    const from = t.serviceLines.length;
    await t.stack.startService();
    await t.waitForServiceLine(/reconcile finished/, from, 60_000);
    assert.deepEqual(await catalog.halfMadeObjects(), []);
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

// A tenant that opens connection after connection. Through the apps' door (connection_string, PgBouncer in
// transaction mode) its clients cost Postgres nothing beyond the app's pool: they all connect, and Postgres serves
// them with at most default_pool_size (2) sessions of its own. Only the direct door (direct_connection_string, an
// opt-in: docker-compose.direct-postgres.yml; the test stacks have it on) gives each client a Postgres slot, so
// that one tenant can take every slot; the superuser's reserved slots are then the service's way back in.
describe('one tenant takes every connection slot', () => {
  const TENANT_CLIENTS = 60; // more than Postgres's 47 non-reserved slots
  const POOL_SIZE = 2; // pgbouncer.ini's default_pool_size and max_db_connections

  it("through the pooler: its 60 clients all connect and are served, by at most 2 of Postgres's sessions; other apps are not held up", async () => {
    const tenant = await t.provision('pooled_hog');
    assert.equal(new URL(tenant.connection_string).port, String(t.stack.settings.poolerPort), 'connection_string names the pooler');
    const clients: pg.Client[] = [];
    try {
      for (let i = 0; i < TENANT_CLIENTS; i++) clients.push(await connectAs(tenant.connection_string));
      // Every client at once, each in a transaction that outlasts a moment, so that they queue for the pool.
      const servedBy = await Promise.all(
        clients.map(async (client) => (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid, pg_sleep(0.05)')).rows[0]!.pid),
      );
      assert.equal(servedBy.length, TENANT_CLIENTS, 'every client was served');
      const sessions = new Set(servedBy);
      assert.ok(sessions.size >= 1 && sessions.size <= POOL_SIZE, `served by ${sessions.size} Postgres sessions`);
      // What Postgres sees of the tenant while its 60 clients are all connected: the pool's sessions, no more.
      const seen = await t.superuser(async (db) => (await db.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE usename = 'app_pooled_hog_user'")).rows.map((r) => r.pid));
      assert.ok(seen.length <= POOL_SIZE, `Postgres has ${seen.length} sessions of the tenant's role`);
      for (const pid of seen) assert.ok(sessions.has(pid), `session ${pid} is one of the pool's`);
      // Postgres's slots are not the tenant's to take: another app still gets in, and the service still works.
      assert.equal(await asApp(apps[0]!.connection_string, async (c) => (await c.query<{ one: number }>('SELECT 1 AS one')).rows[0]?.one), 1);
      assert.equal((await t.admin('GET', '/apps/pooled_hog')).status, 200);
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
    }
    apps.push(tenant);
    await everythingWorks();
  });

  it('through the direct door: the service opens new connections through its reserved slots, and everything works again once the tenant lets go', async () => {
    const hog = (await t.provision('hog')) as ProvisionedApp & { direct_connection_string?: string };
    const direct = hog.direct_connection_string;
    assert.ok(direct, 'the test stack has the direct door on: answers carry direct_connection_string');
    assert.equal(new URL(direct).port, String(t.stack.settings.pgPort), "direct_connection_string names Postgres's own port");
    const held: pg.Client[] = [];
    /** Connects to Postgres directly as the tenant until Postgres refuses it; returns the refusal. */
    const takeEverySlot = async () => {
      for (let i = 0; i < TENANT_CLIENTS; i++) {
        try {
          held.push(await connectAs(direct));
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
