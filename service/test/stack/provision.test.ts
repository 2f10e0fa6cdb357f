// POST /provision and GET /health through nginx, against the real local stack: nginx's own answers, request ids
// from nginx to the service's log, Postgres or the service down under a running stack, and the logs of the whole
// stack. What provisioning makes, in process: test/app/provision.test.ts.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { asApp } from '../helpers/app-sessions.js';
import { eventually } from '../helpers/conditions.js';
import { request, type ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';
import { SAME_DISK_WARNING } from '../../src/domain/provisioner.js';

/** No off-site remote in this stack: /health says the backups share the data's disk. */
const NO_OFFSITE = { offsite: 'none', warning: SAME_DISK_WARNING };

let t: TestStack;
before(async () => {
  t = await startTestStack();
});
after(async () => {
  await t?.stop();
});

describe('nginx and health', () => {
  it('answers GET / itself, with JSON', async () => {
    const response = await t.get('/');
    assert.equal(response.status, 200);
    assert.deepEqual(response.body, { status: 'ok', service: 'nginx' });
    assert.match(response.headers.get('content-type') ?? '', /application\/json/);
  });

  it('reports health as ok while Postgres answers, and the apps\' door (PgBouncer) as ok', async () => {
    const response = await t.get('/health');
    assert.equal(response.status, 200);
    // The stack is up once the service has found its door (LocalStack.startPgBouncer waits for it).
    assert.deepEqual(response.body, { status: 'ok', pooler: 'ok', backups: NO_OFFSITE });
  });

  it('hides versions and sends nosniff on every answer', async () => {
    for (const response of [await t.get('/'), await t.get('/health'), await t.get('/nope'), await t.post('/provision', {})]) {
      assert.equal(response.headers.get('server'), 'nginx');
      assert.equal(response.headers.get('x-powered-by'), null);
      assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
      assert.match(response.headers.get('content-type') ?? '', /application\/json/);
    }
  });

  it('gives every answer, nginx\'s own and the service\'s, one x-request-id: the id in the service\'s log line', async () => {
    const answers = {
      'nginx 200': await t.get('/'),
      'nginx 404': await t.get('/nope'),
      'nginx 405': await request(`${t.stack.httpUrl}/health`, { method: 'DELETE' }),
      'nginx 413': await t.post('/provision', { app_name: 'big', admin_key: 'x'.repeat(20_000) }),
      'service 200': await t.get('/health'),
      'service 400': await t.post('/provision', {}),
      'service 401': await t.get('/apps'),
      'service 201': await t.post('/provision', { app_name: 'request_ids', admin_key: t.stack.adminKey }),
    };
    const ids = new Set<string>();
    for (const [label, response] of Object.entries(answers)) {
      const id = response.headers.get('x-request-id');
      assert.match(String(id), /^[0-9a-f]{32}$/, `${label}: one id, nginx's $request_id (${id})`);
      ids.add(id!);
    }
    assert.equal(ids.size, Object.keys(answers).length, 'a new id per request');
    const created = answers['service 201'].headers.get('x-request-id')!;
    const line = await t.waitForServiceLine(new RegExp(`"reqId":"${created}"[^\\n]*"msg":"request"`));
    assert.match(line, /"statusCode":201/);

    const direct = await request(`${t.stack.serviceUrl}/health`);
    assert.match(String(direct.headers.get('x-request-id')), /^[A-Za-z0-9_-]{12}$/, 'the service makes one when nobody gave it one');
    const given = await request(`${t.stack.serviceUrl}/nope`, { headers: { 'x-request-id': 'my-trace-0001' } });
    assert.equal(given.headers.get('x-request-id'), 'my-trace-0001', 'and keeps a well-formed one it was given');
  });

  it('answers unknown paths with a JSON 404', async () => {
    for (const path of ['/nope', '/provision/extra', '/admin', '/metrics', '/docs/json']) {
      const response = await t.get(path);
      assert.equal(response.status, 404, path);
      assert.equal(response.body.statusCode, 404);
    }
  });

  it('answers a body over 16 KB with a JSON 413 from nginx', async () => {
    const response = await t.post('/provision', { app_name: 'big', admin_key: 'x'.repeat(20_000) });
    assert.equal(response.status, 413);
    assert.equal(response.body.statusCode, 413);
  });
});

describe('health when Postgres is away', () => {
  it('answers 503 with JSON while Postgres is down, and ok again once it is back', async () => {
    await t.stack.stopPostgres();
    try {
      // One ping's answer is shared for HEALTH_REUSE_MS (250 ms), so the change shows within a moment.
      const down = await eventually(() => t.get('/health'), (r) => r.status === 503);
      assert.equal(down.status, 503);
      assert.equal(down.body.status, 'unavailable');
      const provision = await t.post('/provision', { app_name: 'while_down', admin_key: t.stack.adminKey });
      assert.equal(provision.status, 503);
      assert.equal(provision.body.message, 'the database is unavailable, retry later');
    } finally {
      await t.stack.startPostgres();
    }
    assert.equal((await eventually(() => t.get('/health'), (r) => r.status === 200)).status, 200);
    assert.equal((await t.post('/provision', { app_name: 'after_outage', admin_key: t.stack.adminKey })).status, 201);
  });
});

describe('health when the pooler is away', () => {
  it('stays ok and says the pooler is unavailable; an app made meanwhile logs in through it once it is back', async () => {
    await t.stack.stopPgBouncer();
    let made: ProvisionedApp | undefined;
    try {
      // The service checks its door every 2 s: a pooler that is down is reported, not a reason to be unhealthy.
      const away = await eventually(() => t.get('/health'), (r) => r.body.pooler === 'unavailable');
      assert.equal(away.status, 200);
      assert.deepEqual(away.body, { status: 'ok', pooler: 'unavailable', backups: NO_OFFSITE });
      // Provisioning goes on: the login is in Postgres, and in the auth_file PgBouncer reads when it starts.
      made = await t.provision('door_away');
    } finally {
      await t.stack.startPgBouncer(); // which waits until the service sees its door again
    }
    assert.deepEqual((await t.get('/health')).body, { status: 'ok', pooler: 'ok', backups: NO_OFFSITE });
    assert.ok(made);
    assert.equal(new URL(made.connection_string).port, String(t.stack.settings.poolerPort), 'the string names the pooler');
    const role = await asApp(made.connection_string, async (db) => (await db.query<{ user: string }>('SELECT current_user AS user')).rows[0]?.user);
    assert.equal(role, 'app_door_away_user');
  });
});

describe('nginx when the service is down', () => {
  it('answers 503 with its request id in the body and the header', async () => {
    await t.stack.stopService();
    try {
      const response = await t.post('/provision', { app_name: 'while_away', admin_key: 'sk_whatever' });
      assert.equal(response.status, 503);
      const requestId = response.headers.get('x-request-id');
      assert.match(String(requestId), /^[0-9a-f]{32}$/);
      assert.deepEqual(response.body, {
        statusCode: 503,
        error: 'Service Unavailable',
        message: 'the provisioning service is not reachable, retry shortly',
        request_id: requestId,
      });
      const logs = await eventually(async () => t.allLogs(), (text) => text.includes(`"request_id":"${requestId}"`));
      assert.ok(logs.includes(`"request_id":"${requestId}"`), "and nginx's access log has it");
    } finally {
      await t.stack.startService();
    }
  });
});

describe('logs', () => {
  it('print the admin key exactly once, and never a password or connection string', async () => {
    const keyLines = t.serviceLines.filter((line) => line.includes(t.stack.adminKey));
    assert.equal(keyLines.length, 1);
    assert.match(keyLines[0]!, /ADMIN KEY: sk_/);
    const app = await t.provision('log_check');
    const password = new URL(app.connection_string).password;
    const rotated = await t.admin('POST', '/apps/log_check/rotate');
    assert.equal(rotated.status, 200);
    const logs = t.allLogs();
    for (const secret of [password, String(rotated.body.password)]) assert.ok(!logs.includes(secret), 'no app password in any log');
    assert.ok(!logs.includes('postgres://'), 'no connection string in any log');
    assert.ok(!logs.includes('postgresql://'), 'no database_url in any log');
    assert.ok(!logs.includes(t.stack.postgresPassword), 'no superuser password in any log');
    assert.equal(logs.split(t.stack.adminKey).length - 1, 1, 'the admin key appears once in all logs together');
    assert.ok(t.serviceLines.some((line) => line.includes('"url":"/provision"') && line.includes('"statusCode":201')), 'one line per request');
  });
});
