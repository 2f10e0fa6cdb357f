// Admin authentication where it needs the running stack: a pinned admin key (ADMIN_KEY_FILE) read as the service
// starts, and refused at start when unusable; X-Forwarded-For believed only from nginx's own address (so a client
// reaching the service's port directly cannot dodge the lockout by claiming a new address each time). The key
// checked before the input, the header's shape and the audit of failures, in process: test/app/admin-auth.test.ts.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { rawRequest, type RawResponse } from '../helpers/raw-http.js';
import { request } from '../helpers/service-client.js';
import { freePort, startTestStack, type TestStack } from '../helpers/stack.js';
import { SERVICE_DIR } from '../../scripts/lib/local-stack.js';
import { adminKeyInLogLine } from '../../src/shared/secrets.js';

let t: TestStack;
before(async () => {
  t = await startTestStack();
});
after(async () => {
  await t?.stop();
});

const MAX_FAILED_ATTEMPTS = 10; // the default AUTH_MAX_FAILED_ATTEMPTS

interface Call {
  method: string;
  path: string;
  body?: unknown;
  headers?: Record<string, string>;
}

interface JsonAnswer extends RawResponse {
  json: { statusCode?: number; message?: string };
}

/** One request through nginx (or straight to the service with `direct`), from a chosen loopback address. */
async function send({ method, path, body, headers = {} }: Call, source = '127.0.0.1', direct = false): Promise<JsonAnswer> {
  const port = direct ? t.stack.settings.servicePort : t.stack.settings.httpPort;
  const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  const response = await rawRequest(port, { method, path, headers: { ...(payload !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers }, body: payload }, source);
  let json = {};
  try {
    json = JSON.parse(response.body);
  } catch {
    assert.fail(`${method} ${path}: not JSON: ${response.body.slice(0, 200)}`);
  }
  return { ...response, json };
}

const bearer = (key: string) => ({ Authorization: `Bearer ${key}` });

/** The hexadecimal SHA-256 of a key, as `sha256sum` prints it. */
const sha256Hex = (text: string) => createHash('sha256').update(text).digest('hex');

describe('a pinned admin key (ADMIN_KEY_FILE)', () => {
  let p: TestStack;
  let keyDir: string;
  let keyFile: string;
  const key = `sk_${randomBytes(24).toString('hex')}`;
  const hash = sha256Hex(key);

  before(async () => {
    keyDir = mkdtempSync(join(tmpdir(), 'pgprov-admin-key-'));
    keyFile = join(keyDir, 'admin-key.sha256');
    writeFileSync(keyFile, `sha256:${hash}\n`);
    // A pinned key is never written: the stack calls the service started once /health answers (scripts/lib/local-stack.ts).
    p = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', LOG_LEVEL: 'info', ADMIN_KEY_FILE: keyFile } });
  });
  after(async () => {
    await p?.stop();
    rmSync(keyDir, { recursive: true, force: true });
  });

  const provisionWith = (adminKey: string, name: string) =>
    request(`${p.stack.httpUrl}/provision`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ app_name: name, admin_key: adminKey }) });
  const listWith = (adminKey: string) => request(`${p.stack.httpUrl}/apps`, { headers: { authorization: `Bearer ${adminKey}` } });

  it('accepts the key whose hash the file holds, refuses any other, and logs neither key nor hash', async () => {
    assert.equal((await provisionWith(key, 'pinned_one')).status, 201);
    assert.equal((await listWith(key)).status, 200);
    for (const wrong of ['sk_wrong', hash, `sha256:${hash}`, `${key}x`]) {
      const provision = await provisionWith(wrong, 'pinned_intruder');
      assert.equal(provision.status, 401, wrong);
      assert.equal(provision.body.message, 'invalid admin key');
      assert.equal((await listWith(wrong)).status, 401, wrong);
    }

    assert.deepEqual(p.serviceLines.filter((line) => adminKeyInLogLine(line) !== undefined), [], 'no key was generated, nor printed');
    assert.ok(!p.serviceLines.some((line) => line.includes('ADMIN KEY')), 'no admin-key line at all');
    const pinnedLine = p.serviceLines.find((line) => line.includes('pinned'));
    assert.ok(pinnedLine?.includes(keyFile), `a line says the key is pinned, and by which file: ${pinnedLine}`);
    const logs = p.allLogs();
    for (const secret of [key, hash, hash.toUpperCase()]) assert.ok(!logs.includes(secret), 'neither the key nor its hash is in any log');
  });

  it('takes a new file at the next start (rotation): the old key stops working, the new one works; a plain key works too', async () => {
    const newKey = `sk_${randomBytes(24).toString('hex')}`;
    writeFileSync(keyFile, `${newKey}\n`, { mode: 0o600 }); // the key itself this time, not its hash
    await p.stack.stopService();
    await p.stack.startService();
    assert.equal((await listWith(key)).status, 401, 'the old key is refused');
    assert.equal((await listWith(newKey)).status, 200);
    assert.equal((await provisionWith(newKey, 'pinned_two')).status, 201);
    const logs = p.allLogs();
    assert.ok(!logs.includes(newKey), 'the new key is in no log');
    assert.ok(!logs.includes(sha256Hex(newKey)), 'nor its hash');
    assert.ok(!p.serviceLines.some((line) => line.includes('ADMIN KEY')), 'still no admin-key line');
  });

  it('refuses to start on a file it cannot use, and says which file and why', async () => {
    const file = (name: string, content: string) => {
      const path = join(keyDir, name);
      writeFileSync(path, content);
      return path;
    };
    const cases: Array<[string, string, RegExp]> = [
      ['missing', join(keyDir, 'no-such-file'), /cannot be read \(ENOENT\)/],
      ['a directory', keyDir, /cannot be read \(EISDIR\)/],
      ['empty', file('empty', ''), /is empty/],
      ['blank', file('blank', ' \n\n'), /is empty/],
      ['short hash', file('short-hash', `sha256:${hash.slice(1)}\n`), /sha256: followed by exactly 64 hexadecimal digits/],
      ['bare hash', file('bare-hash', `${hash}\n`), /neither sha256:<64 hex digits> nor a key sk_/],
      ['sha256sum output', file('sha256sum', `${hash}  -\n`), /neither sha256:<64 hex digits> nor a key sk_/],
      ['short key', file('short-key', 'sk_short\n'), /neither sha256:<64 hex digits> nor a key sk_/],
      ['two lines', file('two-lines', `sha256:${hash}\nsha256:${hash}\n`), /sha256: followed by exactly 64 hexadecimal digits, on one line/],
    ];
    const results = await Promise.all(
      cases.map(async ([label, path, reason]) => {
        const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', POSTGRES_PASSWORD: 'unused', DATABASE_HOST: '127.0.0.1', DATABASE_PORT: '1', HOST: '127.0.0.1', PORT: String(await freePort()), LOG_PRETTY: 'false', ADMIN_KEY_FILE: path };
        const child = spawn(process.execPath, ['dist/server.js'], { cwd: SERVICE_DIR, env, stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (chunk) => (stdout += chunk));
        child.stderr.on('data', (chunk) => (stderr += chunk));
        // A service that does not refuse the file keeps running: stop it once it has said it is listening.
        const listening = setInterval(() => /Server listening/.test(stdout) && child.kill('SIGKILL'), 50);
        const [code] = (await once(child, 'exit')) as [number | null];
        clearInterval(listening);
        return { label, path, reason, code, stdout, stderr };
      }),
    );
    for (const { label, path, reason, code, stdout, stderr } of results) {
      assert.equal(code, 1, `${label}: exits 1 (stdout ${stdout.slice(0, 300)})`);
      assert.ok(stderr.includes(`ADMIN_KEY_FILE=${path}`), `${label}: names the file: ${stderr}`);
      assert.match(stderr, reason, label);
      assert.ok(!stderr.includes(hash.slice(1)) && !/sk_short/.test(stderr), `${label}: never quotes the file`);
      assert.ok(!stdout.includes('ADMIN KEY'), `${label}: no key made`);
    }
  });
});

describe('X-Forwarded-For is believed only from nginx', () => {
  it('locks out a client that reaches the service port directly and claims a new address with each wrong key', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < MAX_FAILED_ATTEMPTS + 3; i++) {
      const call: Call = { method: 'POST', path: '/provision', body: { app_name: 'direct_target', admin_key: `sk_direct_${i}` }, headers: { 'X-Forwarded-For': `198.51.100.${i + 1}` } };
      statuses.push((await send(call, '127.0.0.2', true)).status);
    }
    assert.deepEqual(statuses, [...Array(MAX_FAILED_ATTEMPTS).fill(401), ...Array(3).fill(429)]);
    const rightKey = await send({ method: 'GET', path: '/apps', headers: { ...bearer(t.stack.adminKey), 'X-Forwarded-For': '198.51.100.200' } }, '127.0.0.2', true);
    assert.equal(rightKey.status, 429, 'locked out, right key or not, whatever address it claims');
  });

  it('still locks out clients one by one through nginx, whatever X-Forwarded-For they send', async () => {
    const guesser = '127.0.3.1';
    const statuses: number[] = [];
    for (let i = 0; i < MAX_FAILED_ATTEMPTS + 2; i++) {
      const call: Call = { method: 'GET', path: '/apps', headers: { ...bearer(`sk_via_nginx_${i}`), 'X-Forwarded-For': `203.0.113.${i + 1}` } };
      statuses.push((await send(call, guesser)).status);
    }
    assert.deepEqual(statuses, [...Array(MAX_FAILED_ATTEMPTS).fill(401), ...Array(2).fill(429)]);

    // Another client through nginx is not affected, even one claiming the guesser's address.
    assert.equal((await send({ method: 'GET', path: '/apps', headers: bearer(t.stack.adminKey) }, '127.0.3.2')).status, 200);
    assert.equal((await send({ method: 'GET', path: '/apps', headers: { ...bearer(t.stack.adminKey), 'X-Forwarded-For': guesser } }, '127.0.3.3')).status, 200);
    assert.equal((await send({ method: 'GET', path: '/apps', headers: bearer('sk_one_wrong') }, '127.0.3.4')).status, 401);
  });
});
