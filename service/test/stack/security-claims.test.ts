// SECURITY.md's promises about the edge and the admin key, each tested so that it fails if the promise is
// broken: the key is compared with crypto.timingSafeEqual on two SHA-256 digests, so a key of any length is
// refused (never an error); nginx replaces a client's X-Forwarded-For with the address it sees; every answer
// through nginx carries the security headers, errors included; and nginx limits each address's admin requests.
import assert from 'node:assert/strict';
import { rmSync, readFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LocalStack, throwawayStackSettings } from '../../scripts/lib/local-stack.js';
import { adminKeyDigest, matchesAdminKey, newAdminKey } from '../../src/shared/secrets.js';
import { encodeRequest, parseResponse, type RawRequest } from '../helpers/raw-http.js';
import { eventually } from '../helpers/conditions.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

/** An answer with every header line as sent (a header sent twice shows twice). */
interface Answer {
  status: number;
  body: string;
  /** Lower-cased header name → every value sent under it. */
  headers: Map<string, string[]>;
}

/** Sends one request on a fresh connection from `source` (a loopback address) and reads the whole answer. */
function send(port: number, request: RawRequest, source = '127.0.0.1'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = connect({ host: '127.0.0.1', port, localAddress: source });
    socket.setTimeout(30_000, () => socket.destroy(new Error(`no answer within 30 s to ${request.method} ${request.path}`)));
    socket.on('connect', () => socket.write(encodeRequest(request, `127.0.0.1:${port}`)));
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('close', () => {
      const raw = Buffer.concat(chunks);
      const { status, body } = parseResponse(raw);
      const head = raw.toString('latin1').split('\r\n\r\n')[0] ?? '';
      const headers = new Map<string, string[]>();
      for (const line of head.split('\r\n').slice(1)) {
        const colon = line.indexOf(':');
        if (colon <= 0) continue;
        const name = line.slice(0, colon).trim().toLowerCase();
        headers.set(name, [...(headers.get(name) ?? []), line.slice(colon + 1).trim()]);
      }
      resolve({ status, body, headers });
    });
  });
}

/** SECURITY.md, promise 7 ("Response headers"): on every answer through nginx, each exactly once. */
const SECURITY_HEADERS: Record<string, string> = {
  server: 'nginx',
  'x-content-type-options': 'nosniff',
  'cache-control': 'no-store',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

/** What is wrong with an answer's headers, by SECURITY.md's list; empty when nothing is. */
function headerProblems(label: string, answer: Answer, method = 'GET'): string[] {
  const problems: string[] = [];
  const values = (name: string) => answer.headers.get(name) ?? [];
  for (const [name, value] of Object.entries(SECURITY_HEADERS)) {
    if (values(name).join(' | ') !== value) problems.push(`${label}: ${name} is ${JSON.stringify(values(name))}, not once ${JSON.stringify(value)}`);
  }
  if (values('x-powered-by').length > 0) problems.push(`${label}: x-powered-by ${values('x-powered-by')}`);
  const contentType = values('content-type');
  if (contentType.length !== 1 || !/^application\/json/.test(contentType[0]!)) problems.push(`${label}: content-type ${JSON.stringify(contentType)}`);
  const requestId = values('x-request-id');
  if (requestId.length !== 1 || !/^[0-9a-f]{32}$/.test(requestId[0]!)) problems.push(`${label}: x-request-id ${JSON.stringify(requestId)}`);
  const allow = values('allow');
  if (answer.status === 405 ? allow.length !== 1 || !/^[A-Z]+(, [A-Z]+)*$/.test(allow[0]!) : allow.length !== 0) problems.push(`${label}: allow ${JSON.stringify(allow)}`);
  if (method !== 'HEAD') {
    let body: { statusCode?: number; request_id?: string } | undefined;
    try {
      body = JSON.parse(answer.body);
    } catch {
      problems.push(`${label}: body is not JSON: ${answer.body.slice(0, 100)}`);
    }
    if (body && answer.status >= 500 && body.request_id !== requestId[0]) problems.push(`${label}: 5xx body request_id ${body.request_id}, header ${requestId[0]}`);
  }
  return problems;
}

describe('the admin key is compared in constant time (unit)', () => {
  it('compares with crypto.timingSafeEqual, always on two SHA-256 digests of the same length', () => {
    const key = newAdminKey();
    const digest = { digest: adminKeyDigest(key) };
    assert.equal(digest.digest.length, 32, 'the service keeps the SHA-256 digest of the key');
    assert.equal(matchesAdminKey(key, digest), true);
    // A presented key of any length, or of any characters, is hashed first: never a length mismatch, never an
    // early "no" from comparing lengths.
    for (const presented of ['', 'x', key.slice(0, -1), `${key}x`, key.toUpperCase(), 'k'.repeat(100_000), 'ключ🔑\u0000', adminKeyDigest(key).toString('hex')]) {
      assert.equal(matchesAdminKey(presented, digest), false, `${presented.slice(0, 20)}… (${presented.length} characters)`);
    }
    // What compares them is crypto.timingSafeEqual: only it refuses buffers of different lengths, with this code.
    // (A plain comparison, Buffer.equals or ===, would answer false here instead of throwing.)
    const truncated = { digest: adminKeyDigest(key).subarray(0, 31) };
    assert.throws(() => matchesAdminKey(key, truncated), (err: NodeJS.ErrnoException) => err.code === 'ERR_CRYPTO_TIMING_SAFE_EQUAL_LENGTH');
  });
});

describe('nginx, the edge, in front of an upstream that records what it receives', () => {
  // The repo's nginx.conf as the local stack runs it (scripts/lib/local-stack.ts changes only the upstream address,
  // the listen address and the file paths), with a recording server where the service would be: what nginx
  // passes on is seen exactly as the service would receive it.
  let edge: LocalStack;
  let upstream: Server;
  const received: Array<{ url: string; headers: IncomingHttpHeaders; rawHeaders: string[] }> = [];

  before(async () => {
    upstream = createServer((req, res) => {
      received.push({ url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders });
      req.resume();
      req.on('end', () => {
        const failing = req.url === '/apps/upstream_fails';
        res.writeHead(failing ? 500 : 200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(failing ? { statusCode: 500, error: 'Internal Server Error', message: 'x', request_id: req.headers['x-request-id'] } : { ok: true }));
      });
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const address = upstream.address();
    assert.ok(address && typeof address === 'object');
    const settings = await throwawayStackSettings('edge', { postgresPassword: 'unused', serviceEnv: {}, onServiceLine: () => {} });
    edge = new LocalStack({ ...settings, servicePort: address.port });
    await edge.startNginx();
  });
  after(async () => {
    await edge?.stop();
    if (upstream?.listening) {
      const closed = new Promise((resolve) => upstream.close(resolve));
      upstream.closeAllConnections();
      await closed;
    }
    if (edge) rmSync(edge.settings.stackDir, { recursive: true, force: true });
  });

  it("replaces any X-Forwarded-For a client sends with the address it sees, and sets X-Forwarded-Proto and X-Request-Id itself", async () => {
    const client = '127.0.0.23';
    const forged = {
      'X-Forwarded-For': '203.0.113.9',
      'x-forwarded-for': '198.51.100.7, 10.0.0.1',
      'X-Forwarded-Proto': 'https',
      'X-Request-Id': 'chosen-by-the-client',
    };
    for (const request of [
      { method: 'GET', path: '/apps', headers: forged },
      { method: 'POST', path: '/provision', headers: { ...forged, 'Content-Type': 'application/json' }, body: '{}' },
      { method: 'GET', path: '/health', headers: forged },
    ]) {
      received.length = 0;
      const answer = await send(edge.settings.httpPort, request, client);
      assert.equal(answer.status, 200, `${request.method} ${request.path}`);
      assert.equal(received.length, 1, 'the upstream got the request');
      const [seen] = received;
      const sent = (name: string) => seen!.rawHeaders.filter((_, i) => i % 2 === 0 && seen!.rawHeaders[i]!.toLowerCase() === name).length;
      assert.equal(sent('x-forwarded-for'), 1, 'one X-Forwarded-For line');
      assert.equal(seen!.headers['x-forwarded-for'], client, `${request.path}: X-Forwarded-For is the address nginx saw, nothing the client sent`);
      assert.equal(sent('x-forwarded-proto'), 1);
      assert.equal(seen!.headers['x-forwarded-proto'], 'http');
      assert.equal(sent('x-request-id'), 1);
      assert.equal(seen!.headers['x-request-id'], answer.headers.get('x-request-id')?.[0], "nginx's own request id, the one it answers with");
      assert.match(String(seen!.headers['x-request-id']), /^[0-9a-f]{32}$/);
    }
  });

  it('answers with the security headers whatever the upstream answers, and when it is down', async () => {
    const problems: string[] = [];
    const failing = await send(edge.settings.httpPort, { method: 'GET', path: '/apps/upstream_fails' });
    assert.equal(failing.status, 500);
    problems.push(...headerProblems("the upstream's 500", failing));
    // nginx keeps idle connections to its upstream: close them too, or the server never stops.
    const closed = new Promise((resolve) => upstream.close(resolve));
    upstream.closeAllConnections();
    await closed;
    const down = await send(edge.settings.httpPort, { method: 'GET', path: '/apps' });
    assert.equal(down.status, 503);
    problems.push(...headerProblems('upstream down: 503', down));
    assert.deepEqual(problems, []);
  });
});

describe('through the whole stack', () => {
  let t: TestStack;
  before(async () => {
    t = await startTestStack();
  });
  after(async () => {
    await t?.stop();
  });

  it('the service logs and audits the address nginx saw, not a forged X-Forwarded-For', async () => {
    const client = '127.0.8.1';
    const answer = await send(t.stack.settings.httpPort, { method: 'GET', path: '/apps', headers: { Authorization: 'Bearer sk_wrong_forwarded', 'X-Forwarded-For': '203.0.113.50' } }, client);
    assert.equal(answer.status, 401);
    const requestId = answer.headers.get('x-request-id')?.[0];
    const line = await t.waitForServiceLine(new RegExp(`"reqId":"${requestId}"[^\\n]*"msg":"request"`));
    assert.match(line, new RegExp(`"client":"${client.replaceAll('.', '\\.')}"`), line);
    // The audit log records the same address for the wrong key.
    const rows = await eventually(
      () => t.superuser(async (db) => (await db.query('SELECT client FROM audit_log WHERE request_id = $1', [requestId])).rows, 'provisioner'),
      (found) => found.length > 0,
      30_000,
    );
    assert.deepEqual(rows, [{ client }]);
  });

  it('refuses admin keys of any length or content with a 401, never an error', async () => {
    const key = t.stack.adminKey;
    const keys = ['', 'x', key.slice(0, -1), `${key}x`, key.toUpperCase(), `${key}\u0000`, 'ключ🔑', 'k'.repeat(12_000)];
    const problems: string[] = [];
    for (const [i, presented] of keys.entries()) {
      // Each from its own address: wrong keys from one address are locked out after 10.
      const body = JSON.stringify({ app_name: 'any_length', admin_key: presented });
      const answer = await send(t.stack.settings.httpPort, { method: 'POST', path: '/provision', headers: { 'Content-Type': 'application/json' }, body }, `127.0.8.${10 + i}`);
      if (answer.status !== 401 || JSON.parse(answer.body).message !== 'invalid admin key') problems.push(`a key of ${presented.length} characters: ${answer.status} ${answer.body}`);
    }
    assert.deepEqual(problems, []);
    const right = await send(t.stack.settings.httpPort, { method: 'GET', path: '/apps', headers: { Authorization: `Bearer ${key}` } }, '127.0.8.30');
    assert.equal(right.status, 200);
  });

  it('refuses a body over 16 KB with a JSON 413 at both doors, nginx and the service itself, and takes one of 16 KB', async () => {
    /** A JSON body of exactly `size` bytes, without a key: a body the service reads is answered 400 (no key). */
    const body = (size: number) => {
      const empty = JSON.stringify({ app_name: 'big_body', pad: '' });
      return JSON.stringify({ app_name: 'big_body', pad: 'x'.repeat(size - empty.length) });
    };
    const problems: string[] = [];
    for (const [door, port] of [['nginx', t.stack.settings.httpPort], ['the service', t.stack.settings.servicePort]] as const) {
      for (const [size, status] of [[16 * 1024, 400], [16 * 1024 + 1, 413]] as const) {
        const payload = body(size);
        assert.equal(Buffer.byteLength(payload), size);
        const answer = await send(port, { method: 'POST', path: '/provision', headers: { 'Content-Type': 'application/json' }, body: payload });
        if (answer.status !== status || JSON.parse(answer.body).statusCode !== status) problems.push(`${door}, ${size} bytes: ${answer.status} ${answer.body.slice(0, 100)}`);
      }
    }
    assert.deepEqual(problems, []);
  });

  it('puts the security headers on every answer through nginx, its own and the service\'s, errors included', async () => {
    const port = t.stack.settings.httpPort;
    const key = t.stack.adminKey;
    const json = { 'Content-Type': 'application/json' };
    const cases: Array<[string, number, RawRequest]> = [
      ['nginx 200', 200, { method: 'GET', path: '/' }],
      ['nginx 200 HEAD', 200, { method: 'HEAD', path: '/' }],
      ['service 200', 200, { method: 'GET', path: '/health' }],
      ['service 201', 201, { method: 'POST', path: '/provision', headers: { ...json, Authorization: `Bearer ${key}` }, body: '{"app_name":"headers_ok"}' }],
      ['service 400', 400, { method: 'POST', path: '/provision', headers: { ...json, Authorization: `Bearer ${key}` }, body: '{}' }],
      ['service 401', 401, { method: 'GET', path: '/apps' }],
      ['service 404', 404, { method: 'GET', path: '/apps/no_such_app', headers: { Authorization: `Bearer ${key}` } }],
      ['service 409', 409, { method: 'POST', path: '/provision', headers: { ...json, Authorization: `Bearer ${key}` }, body: '{"app_name":"headers_ok"}' }],
      ['service 415', 415, { method: 'POST', path: '/provision', headers: { 'Content-Type': 'text/plain', Authorization: `Bearer ${key}` }, body: 'x' }],
      ['nginx 404', 404, { method: 'GET', path: '/nope' }],
      ['nginx 405', 405, { method: 'DELETE', path: '/health' }],
      ['nginx 405 under /apps/', 405, { method: 'PUT', path: '/apps/headers_ok' }],
      ['nginx 413', 413, { method: 'POST', path: '/provision', headers: json, body: JSON.stringify({ pad: 'x'.repeat(20_000) }) }],
      ['nginx 414', 414, { method: 'GET', path: `/${'x'.repeat(10_000)}` }],
      ['nginx 431', 431, { method: 'GET', path: '/health', headers: { Cookie: 'x'.repeat(10_000) } }],
    ];
    const problems: string[] = [];
    for (const [label, status, request] of cases) {
      const answer = await send(port, request);
      if (answer.status !== status) problems.push(`${label}: status ${answer.status} ${answer.body.slice(0, 100)}`);
      problems.push(...headerProblems(label, answer, request.method));
    }
    assert.deepEqual(problems, []);
  });

  it("limits each address's admin requests: a burst of 200 passes, then 429 in JSON, from nginx; other addresses are not held back", async () => {
    const port = t.stack.settings.httpPort;
    const flooder = '127.0.9.1';
    const statuses: number[] = [];
    let limited: Answer | undefined;
    // Requests without a key: the service answers 401 and counts nothing; nginx counts every one. Sent 8 at a
    // time until nginx refuses one, and never more than 2,000 (20 a second refill the burst: a machine that
    // sent fewer than that would never be refused, and the test says so instead of running on).
    const worker = async () => {
      while (!limited && statuses.length < 2_000) {
        const answer = await send(port, { method: 'GET', path: '/apps' }, flooder);
        statuses.push(answer.status);
        if (answer.status === 429) limited ??= answer;
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    assert.ok(limited, `no 429 in ${statuses.length} requests from one address`);
    const passed = statuses.filter((status) => status === 401).length;
    assert.deepEqual(new Set(statuses), new Set([401, 429]), 'the service answered 401, nginx 429');
    assert.ok(passed >= 200, `the burst of 200 passed before the limit (${passed} did)`);
    assert.deepEqual(JSON.parse(limited.body), { statusCode: 429, error: 'Too Many Requests', message: 'slow down and retry' });
    assert.deepEqual(headerProblems('nginx 429', limited), []);
    // nginx's limit_req said so, for this zone and this address (not the per-connection limit, not the service).
    const errorLog = join(t.stack.paths.logs, 'nginx-error.log');
    const logged = await eventually(async () => readFileSync(errorLog, 'utf8'), (text) => text.includes(`by zone "admin_api", client: ${flooder}`), 30_000);
    assert.match(logged, new RegExp(`limiting requests, excess: [0-9.]+ by zone "admin_api", client: ${flooder.replaceAll('.', '\\.')}`));
    // Another address is not held back by the flooder's limit.
    const other = await send(port, { method: 'GET', path: '/apps', headers: { Authorization: `Bearer ${t.stack.adminKey}` } }, '127.0.9.2');
    assert.equal(other.status, 200);
  });
});
