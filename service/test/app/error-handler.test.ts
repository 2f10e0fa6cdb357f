// The one error handler, on branches real Postgres cannot be made to reach on demand: an unexpected database
// error must become a bare 500, and a lost connection a 503, with the detail only in the log.
// (The database is stubbed here, and only here; every other test runs against the real stack.)
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/app.js';
import { loadConfig } from '../../src/shared/config.js';
import { appIdentifiers } from '../../src/shared/object-names.js';

const adminKey = 'sk_unit0000000000000000000000000000000000';
let app: FastifyInstance;

before(async () => {
  app = await buildApp(loadConfig({ POSTGRES_PASSWORD: 'unused', DATABASE_HOST: '127.0.0.1', DATABASE_PORT: '1', LOG_LEVEL: 'silent', RECONCILE_INTERVAL_MS: '3600000' }), { adminKey });
});
after(async () => {
  await app.close();
});

const provision = () => app.inject({ method: 'POST', url: '/provision', payload: { app_name: 'stubbed', admin_key: adminKey } });

describe('error handler', () => {
  it('answers an unexpected database error with a bare 500: no SQL, no Postgres message, no stack', async () => {
    app.operations.provision = async () => {
      throw Object.assign(new Error('syntax error at or near "DROP ROLE app_x_user"'), { code: '42601', where: 'SQL statement' });
    };
    const response = await provision();
    assert.equal(response.statusCode, 500);
    const requestId = response.headers['x-request-id'];
    assert.equal(typeof requestId, 'string');
    assert.deepEqual(response.json(), { statusCode: 500, error: 'Internal Server Error', message: 'Internal Server Error', request_id: requestId });
    assert.doesNotMatch(response.body, /syntax|DROP|SQL|at /);
  });

  it('answers a lost database connection with a 503 that says to retry', async () => {
    app.operations.provision = async () => {
      throw Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' });
    };
    const response = await provision();
    assert.equal(response.statusCode, 503);
    assert.deepEqual(response.json(), { statusCode: 503, error: 'Service Unavailable', message: 'the database is unavailable, retry later', request_id: response.headers['x-request-id'] });
  });

  it('answers a thrown non-database bug with a bare 500 too', async () => {
    app.operations.provision = async () => {
      throw new TypeError("Cannot read properties of undefined (reading 'rows')");
    };
    const response = await provision();
    assert.equal(response.statusCode, 500);
    assert.doesNotMatch(response.body, /rows|TypeError/);
  });
});

/** A log destination that keeps every chunk written. */
function logSink(): { lines: string[]; sink: Writable } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      lines.push(String(chunk));
      done();
    },
  });
  return { lines, sink };
}

describe('request ids, methods and paths', () => {
  it('puts the request id nginx gave in a 5xx body and its header, and in the log line that has the detail', async () => {
    const { lines, sink } = logSink();
    const config = loadConfig({ POSTGRES_PASSWORD: 'unused', DATABASE_HOST: '127.0.0.1', DATABASE_PORT: '1', LOG_PRETTY: 'false', RECONCILE_INTERVAL_MS: '3600000' });
    const logged = await buildApp(config, { adminKey, logStream: sink });
    logged.operations.provision = async () => {
      throw new TypeError('the detail only the log may hold');
    };
    const requestId = '0123456789abcdef0123456789abcdef';
    const response = await logged.inject({ method: 'POST', url: '/provision', payload: { app_name: 'stubbed', admin_key: adminKey }, headers: { 'x-request-id': requestId } });
    await logged.close();
    assert.equal(response.statusCode, 500);
    assert.equal(response.headers['x-request-id'], requestId);
    assert.equal(response.json().request_id, requestId);
    const failure = lines.flatMap((chunk) => chunk.split('\n').filter(Boolean)).map((line) => JSON.parse(line) as Record<string, unknown>).find((line) => line.msg === 'request failed');
    assert.equal(failure?.reqId, requestId);
    assert.match(JSON.stringify(failure?.err), /the detail only the log may hold/);
  });

  it('answers every request with x-request-id, making one when the given one is missing or not an id', async () => {
    for (const [given, kept] of [[undefined, false], ['trace-1', true], ['a'.repeat(129), false], ['has space', false], ['a/b', false]] as const) {
      for (const url of ['/health', '/nope', '/apps', '/provision']) {
        const response = await app.inject({ method: 'GET', url, headers: given === undefined ? {} : { 'x-request-id': given } });
        const id = response.headers['x-request-id'];
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
      const response = await app.inject({ method: method as 'GET', url });
      assert.equal(response.statusCode, status, `${method} ${url}: ${response.body}`);
      assert.equal(response.headers.allow, allow, `${method} ${url}`);
      assert.equal(response.json().statusCode, status);
      if (allow) assert.equal(response.json().message, `method not allowed: use ${allow}`);
    }
  });

  it('refuses a body that is not JSON with a 415 that says what to send, and takes an empty one of any type as no body', async () => {
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'application/xml']) {
      const refused = await app.inject({ method: 'POST', url: '/provision', headers: { 'content-type': type }, payload: `{"app_name":"abc","admin_key":"${adminKey}"}` });
      assert.equal(refused.statusCode, 415, type);
      assert.equal(refused.json().message, 'send the body as JSON, with "Content-Type: application/json"');
    }
    let rotated = 0;
    app.operations.rotate = async (name) => {
      rotated++;
      return { app: appIdentifiers(name), password: 'Pw0123456789abcdefghijABCDEFGHIJ', sessionsEnded: 0 };
    };
    const empty = await app.inject({ method: 'POST', url: '/apps/abc/rotate', headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'text/plain;charset=UTF-8' }, payload: '' });
    assert.equal(empty.statusCode, 200, empty.body);
    assert.equal(rotated, 1);
  });
});

describe('request logs', () => {
  it('write one line per request, with no key, password or connection string', async () => {
    const { lines, sink } = logSink();
    const config = loadConfig({ POSTGRES_PASSWORD: 'unused', DATABASE_HOST: '127.0.0.1', DATABASE_PORT: '1', LOG_PRETTY: 'false' });
    const logged = await buildApp(config, { adminKey, logStream: sink });
    logged.operations.provision = async (name) => ({ app: appIdentifiers(name), password: 'Pw0123456789abcdefghijABCDEFGHIJ' });
    const response = await logged.inject({ method: 'POST', url: '/provision', payload: { app_name: 'quiet', admin_key: adminKey }, headers: { authorization: `Bearer ${adminKey}` } });
    assert.equal(response.statusCode, 201);
    const password = new URL(response.json().connection_string).password;
    await logged.close();
    const text = lines.join('');
    assert.equal(lines.filter((line) => line.includes('"msg":"request"')).length, 1);
    assert.ok(!text.includes(adminKey));
    assert.ok(!text.includes(password));
    assert.ok(!text.includes('postgres://'));
  });

  it('carry the request id from nginx, keep redacting, and skip successful health checks only', async () => {
    const { lines, sink } = logSink();
    const config = loadConfig({ POSTGRES_PASSWORD: 'unused', DATABASE_HOST: '127.0.0.1', DATABASE_PORT: '1', LOG_PRETTY: 'false', HEALTH_TIMEOUT_MS: '200' });
    const logged = await buildApp(config, { adminKey, logStream: sink });
    logged.get('/log-probe', async (request) => {
      request.log.info({ nested: { password: 'probe-password' }, deeper: { more: { connection_string: 'postgres://probe' } } }, 'probe');
      return {};
    });
    await logged.inject({ method: 'GET', url: '/log-probe', headers: { 'x-request-id': 'trace-probe-1' } });
    const health = await logged.inject({ method: 'GET', url: '/health', headers: { 'x-request-id': 'trace-health-1' } });
    assert.equal(health.statusCode, 503, 'nothing listens on port 1');
    await logged.close();
    const parsed = lines.flatMap((chunk) => chunk.split('\n').filter(Boolean)).map((line) => JSON.parse(line) as Record<string, unknown>);
    const probe = parsed.find((line) => line.msg === 'probe');
    assert.equal(probe?.reqId, 'trace-probe-1');
    assert.deepEqual(probe?.nested, { password: '[redacted]' });
    assert.deepEqual(probe?.deeper, { more: { connection_string: '[redacted]' } });
    assert.ok(parsed.some((line) => line.msg === 'request' && line.reqId === 'trace-probe-1' && line.url === '/log-probe'));
    const healthLines = parsed.filter((line) => line.reqId === 'trace-health-1');
    assert.deepEqual(healthLines.map((line) => line.msg), ['health check: database not answering'], 'a failing check is logged once, at warn');
    assert.ok(parsed.every((line) => line.reqId === undefined || typeof line.reqId === 'string'));
  });
});
