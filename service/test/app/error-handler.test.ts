// The one error handler and the request log, in process, against a real Postgres: an unexpected error must become a
// bare 500, and a lost database connection a 503, with the detail only in the log. The errors Postgres cannot be made
// to raise on demand are thrown by a route of this test's own, registered on the app buildApp makes (before it is
// ready), so that they pass through the same hooks and error handler as every route of the service's.
import assert from 'node:assert/strict';
import { STATUS_CODES } from 'node:http';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import {
  AppBusyError,
  AppExistsError,
  AppNameConflictError,
  AppNotDeletedError,
  AppNotFoundError,
  BackupBlockedError,
  BackupFailedError,
  BackupNotFoundError,
  BackupNotRestorableError,
  BackupOfLiveAppError,
  BackupRefusedError,
  DatabaseUnavailableError,
  OperationsBusyError,
} from '../../src/shared/errors.js';
import { buildTestApp, type TestApp } from '../helpers/app.js';

/** What the test route throws, by name: errors as pg and the service's code raise them. */
const THROWN: Record<string, () => Error> = {
  // An unexpected database error, its message quoting SQL.
  'unexpected-sql': () => Object.assign(new Error('syntax error at or near "DROP ROLE app_x_user"'), { code: '42601', where: 'SQL statement' }),
  // The connection lost under the request: Postgres shutting down, an administrator's pg_terminate_backend.
  'connection-lost': () => Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' }),
  // A bug of the service's own.
  bug: () => new TypeError("Cannot read properties of undefined (reading 'rows')"),
  'bug-with-detail': () => new TypeError('the detail only the log may hold'),
};

/** Each of the service's own errors (src/shared/errors.ts, which knows no HTTP), with the status it must get. */
const OWN_ERRORS: Array<[string, () => Error, number]> = [
  ['app-exists', () => new AppExistsError('stubbed'), 409],
  ['name-conflict', () => new AppNameConflictError('stubbed_user', 'stubbed', 'app_stubbed_user'), 409],
  ['app-busy', () => new AppBusyError('stubbed'), 409],
  ['app-not-found', () => new AppNotFoundError('stubbed'), 404],
  ['app-not-deleted', () => new AppNotDeletedError('stubbed', 'pg_dump failed'), 409],
  ['backup-not-found', () => new BackupNotFoundError('stubbed', 'app_stubbed-x.dump'), 404],
  ['backup-blocked', () => new BackupBlockedError('stubbed', 3), 409],
  ['backup-refused', () => new BackupRefusedError('stubbed', 'permission denied'), 409],
  ['backup-not-restorable', () => new BackupNotRestorableError('app_stubbed-x.dump', 'stubbed'), 422],
  ['backup-of-live-app', () => new BackupOfLiveAppError('app_other-x.dump', 'other'), 409],
  ['backup-failed', () => new BackupFailedError('pg_dump', 'stubbed'), 500],
  ['operations-busy', () => new OperationsBusyError('rotations'), 503],
  ['database-unavailable', () => new DatabaseUnavailableError(), 503],
];
for (const [kind, make] of OWN_ERRORS) THROWN[kind] = make;

/** Test-only routes: one that throws what it is told to, one that logs secrets nested in objects. */
function testRoutes(app: FastifyInstance): void {
  app.get('/test/throws/:kind', async (request) => {
    throw THROWN[(request.params as { kind: string }).kind]!();
  });
  app.get('/test/log-probe', async (request) => {
    request.log.info({ nested: { password: 'probe-password' }, deeper: { more: { connection_string: 'postgres://probe' } } }, 'probe');
    return {};
  });
}

let t: TestApp;
before(async () => {
  t = await buildTestApp({ beforeReady: testRoutes });
});
after(async () => {
  await t?.close();
});

/** The log lines written for the request `reqId`. */
const linesOf = (reqId: string) => t.logLines().filter((line) => line.reqId === reqId);

describe('error handler', () => {
  it('answers an unexpected database error with a bare 500: no SQL, no Postgres message, no stack', async () => {
    const response = await t.get('/test/throws/unexpected-sql');
    assert.equal(response.status, 500);
    const requestId = response.headers.get('x-request-id');
    assert.equal(typeof requestId, 'string');
    assert.deepEqual(response.body, { statusCode: 500, error: 'Internal Server Error', message: 'Internal Server Error', request_id: requestId });
    assert.doesNotMatch(response.text, /syntax|DROP|SQL|at /);
  });

  it('answers a lost database connection with a 503 that says to retry', async () => {
    const response = await t.get('/test/throws/connection-lost');
    assert.equal(response.status, 503);
    assert.deepEqual(response.body, { statusCode: 503, error: 'Service Unavailable', message: 'the database is unavailable, retry later', request_id: response.headers.get('x-request-id') });
  });

  it("answers each of the service's own errors with its status, its body and its headers", async () => {
    for (const [kind, make, status] of OWN_ERRORS) {
      const response = await t.get(`/test/throws/${kind}`);
      const label = `${kind}: ${response.text}`;
      assert.equal(response.status, status, label);
      const requestId = response.headers.get('x-request-id');
      const message = make().message;
      const expected =
        status === 500
          ? { statusCode: 500, error: 'Internal Server Error', message: 'Internal Server Error', request_id: requestId }
          : status === 503
            ? { statusCode: 503, error: 'Service Unavailable', message, request_id: requestId }
            : { statusCode: status, error: STATUS_CODES[status], message };
      assert.deepEqual(response.body, expected, label);
      assert.equal(response.headers.get('retry-after'), status === 503 ? '5' : null, label);
      assert.equal(response.headers.get('www-authenticate'), null, label);
    }
  });

  it('answers a thrown non-database bug with a bare 500 too', async () => {
    const response = await t.get('/test/throws/bug');
    assert.equal(response.status, 500);
    assert.doesNotMatch(response.text, /rows|TypeError/);
  });
});

describe('request ids, methods and paths', () => {
  it('puts the request id nginx gave in a 5xx body and its header, and in the log line that has the detail', async () => {
    const requestId = '0123456789abcdef0123456789abcdef';
    const response = await t.get('/test/throws/bug-with-detail', { 'x-request-id': requestId });
    assert.equal(response.status, 500);
    assert.equal(response.headers.get('x-request-id'), requestId);
    assert.equal(response.body.request_id, requestId);
    const failure = linesOf(requestId).find((line) => line.msg === 'request failed');
    assert.equal(failure?.reqId, requestId);
    assert.match(JSON.stringify(failure?.err), /the detail only the log may hold/);
  });

  it('answers every request with x-request-id, making one when the given one is missing or not an id', async () => {
    for (const [given, kept] of [[undefined, false], ['trace-1', true], ['a'.repeat(129), false], ['has space', false], ['a/b', false]] as const) {
      for (const url of ['/health', '/nope', '/apps', '/provision']) {
        const response = await t.get(url, given === undefined ? {} : { 'x-request-id': given });
        const id = response.headers.get('x-request-id');
        assert.equal(typeof id, 'string', `${url} ${given}`);
        if (kept) assert.equal(id, given);
        else assert.match(String(id), /^[A-Za-z0-9_-]{12}$/, `${url} ${given}`);
      }
    }
  });

  it('answers a method a route does not take with 405 and Allow, and a path no route has with 404', async () => {
    const cases: Array<[string, string, number, string?]> = [
      ['POST', '/health', 405, 'GET, HEAD'],
      ['GET', '/provision', 405, 'POST'],
      ['PUT', '/apps', 405, 'GET, HEAD'],
      ['POST', '/backups', 405, 'GET, HEAD'],
      ['PUT', '/apps/abc', 405, 'DELETE, GET, HEAD'],
      ['GET', '/apps/abc/rotate', 405, 'POST'],
      ['GET', '/apps/abc/restore?x=1', 405, 'POST'],
      ['PATCH', '/apps/abc/backups', 405, 'GET, HEAD, POST'],
      ['POST', '/metrics', 405, 'GET, HEAD'],
      ['GET', '/apps/', 404],
      ['POST', '/apps/', 404],
      ['GET', '/apps//backups', 404],
      ['GET', '/apps/abc/def', 404],
      ['GET', '/nope', 404],
    ];
    for (const [method, url, status, allow] of cases) {
      const response = await t.request(method, url);
      assert.equal(response.status, status, `${method} ${url}: ${response.text}`);
      assert.equal(response.headers.get('allow') ?? undefined, allow, `${method} ${url}`);
      assert.equal(response.body.statusCode, status);
      if (allow) assert.equal(response.body.message, `method not allowed: use ${allow}`);
    }
  });

  it('refuses a body that is not JSON with a 415 that says what to send, and takes an empty one of any type as no body', async () => {
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'application/xml']) {
      const refused = await t.post('/provision', `{"app_name":"abc","admin_key":"${t.adminKey}"}`, { 'content-type': type });
      assert.equal(refused.status, 415, type);
      assert.equal(refused.body.message, 'send the body as JSON, with "Content-Type: application/json"');
    }
    await t.provision('empty_body');
    // fetch's POST with body '' says text/plain: taken as no body, so the backup is made.
    const empty = await t.request('POST', '/apps/empty_body/backups', { headers: { authorization: `Bearer ${t.adminKey}`, 'content-type': 'text/plain;charset=UTF-8' }, body: '' });
    assert.equal(empty.status, 201, empty.text);
    assert.equal(empty.body.app_name, 'empty_body');
    const backups = await t.superuser(async (db) => (await db.query("SELECT outcome FROM audit_log WHERE action = 'backup' AND app_name = 'empty_body'")).rows, 'provisioner');
    assert.deepEqual(backups, [{ outcome: 'ok' }], 'backed up once');
  });
});

describe('request logs', () => {
  it('write one line per request, with no key, password or connection string', async () => {
    const response = await t.post('/provision', { app_name: 'quiet', admin_key: t.adminKey }, { authorization: `Bearer ${t.adminKey}` });
    assert.equal(response.status, 201);
    const password = new URL(String(response.body.connection_string)).password;
    const requestLines = linesOf(response.headers.get('x-request-id')!).filter((line) => line.msg === 'request');
    assert.equal(requestLines.length, 1);
    const text = t.serviceLines.join('\n');
    assert.ok(!text.includes(t.adminKey));
    assert.ok(!text.includes(password));
    assert.ok(!text.includes('postgres://'));
  });

  it('carry the request id from nginx, keep redacting, and skip successful health checks only', async () => {
    await t.get('/test/log-probe', { 'x-request-id': 'trace-probe-1' });
    const healthy = await t.get('/health', { 'x-request-id': 'trace-health-ok' });
    assert.equal(healthy.status, 200, 'Postgres answers');
    const probe = linesOf('trace-probe-1').find((line) => line.msg === 'probe');
    assert.equal(probe?.reqId, 'trace-probe-1');
    assert.deepEqual(probe?.nested, { password: '[redacted]' });
    assert.deepEqual(probe?.deeper, { more: { connection_string: '[redacted]' } });
    assert.ok(linesOf('trace-probe-1').some((line) => line.msg === 'request' && line.url === '/test/log-probe'));
    assert.deepEqual(linesOf('trace-health-ok'), [], 'a successful check is not logged');
    assert.ok(t.logLines().every((line) => line.reqId === undefined || typeof line.reqId === 'string'));

    // A service whose database does not answer: its failing check is logged, once, at warn.
    const down = await buildTestApp({ env: { DATABASE_HOST: '127.0.0.1', DATABASE_PORT: '1', HEALTH_TIMEOUT_MS: '200' } });
    try {
      const health = await down.get('/health', { 'x-request-id': 'trace-health-1' });
      assert.equal(health.status, 503, 'nothing listens on port 1');
      const healthLines = down.logLines().filter((line) => line.reqId === 'trace-health-1');
      assert.deepEqual(healthLines.map((line) => line.msg), ['health check: database not answering'], 'a failing check is logged once, at warn');
      assert.deepEqual(healthLines.map((line) => line.level), [40]);
    } finally {
      await down.close();
    }
  });
});
