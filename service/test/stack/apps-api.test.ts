// The app lifecycle through nginx, where it needs the running stack: Postgres stopped under the service (every
// route's 503, with nginx's request id, and the log line it finds); metrics and OpenAPI on the service's own port
// only; the CA certificate through nginx. Everything else of /apps, in process: test/app/apps-api.test.ts and
// test/app/apps-rotation.test.ts.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { request } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let t: TestStack;
before(async () => {
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false' } });
});
after(async () => {
  await t?.stop();
});

describe('failures', () => {
  it('answers 503 on every lifecycle route while Postgres is down', async () => {
    await t.provision('held');
    await t.stack.stopPostgres();
    try {
      for (const [method, path] of [['GET', '/apps'], ['GET', '/apps/held'], ['POST', '/apps/held/rotate'], ['POST', '/apps/held/backups'], ['DELETE', '/apps/held']] as const) {
        const response = await t.admin(method, path);
        assert.equal(response.status, 503, `${method} ${path}`);
        assert.equal(response.body.message, 'the database is unavailable, retry later');
        // The request id nginx gave it, in the body and the header: the operator's way to the log line.
        const requestId = response.headers.get('x-request-id');
        assert.match(String(requestId), /^[0-9a-f]{32}$/, `${method} ${path}`);
        assert.equal(response.body.request_id, requestId, `${method} ${path}`);
        const logged = await t.waitForServiceLine(new RegExp(`"reqId":"${requestId}"[^\\n]*"level":50|"level":50[^\\n]*"reqId":"${requestId}"`));
        assert.match(logged, /the database is unavailable/);
      }
    } finally {
      await t.stack.startPostgres();
    }
    assert.equal((await t.admin('GET', '/apps/held')).status, 200);
  });
});

describe('bookkeeping', () => {
  it('serves Prometheus metrics and the OpenAPI document on the service port only', async () => {
    await t.provision('measured');
    const metrics = await fetch(`${t.stack.serviceUrl}/metrics`);
    assert.equal(metrics.status, 200);
    assert.ok((await metrics.text()).includes('pgprov_operations_total{operation="provision",outcome="ok"}'), 'the provision is counted');
    assert.equal((await t.get('/metrics')).status, 404, 'not through nginx');
    assert.equal((await t.get('/docs/json')).status, 404, 'not through nginx');
    // What the document holds, and every metric's name: test/app/apps-api.test.ts.
    const docs = (await request(`${t.stack.serviceUrl}/docs/json`)).body as { openapi: string };
    assert.match(docs.openapi, /^3\./);
  });

  it('serves the CA certificate the stack made through nginx, to anyone, as PEM (GET and HEAD only)', async () => {
    const served = await t.get('/tls/ca.crt');
    assert.equal(served.status, 200);
    assert.equal(served.headers.get('content-type'), 'application/x-pem-file');
    assert.equal(served.text, readFileSync(t.stack.postgres.tlsFiles().caCertificate, 'utf8'), 'the very certificate that signed the doors\'');
    assert.match(served.text, /^-----BEGIN CERTIFICATE-----\n/);
    assert.doesNotMatch(served.text, /PRIVATE KEY/);
    assert.equal((await fetch(`${t.stack.httpUrl}/tls/ca.crt`, { method: 'HEAD' })).status, 200);
    const posted = await t.post('/tls/ca.crt', {});
    assert.equal(posted.status, 405);
    assert.equal(posted.headers.get('allow'), 'GET, HEAD');
    const direct = await request(`${t.stack.serviceUrl}/tls/ca.crt`, { method: 'POST' });
    assert.equal(direct.status, 405, 'the service answers as nginx does');
    assert.equal(direct.headers.get('allow'), 'GET, HEAD');
  });
});
