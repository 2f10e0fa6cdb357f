// Admin authentication against the real stack: the key is checked before any input is validated (so an
// unauthenticated caller learns nothing about the schema), failed attempts reach the audit log (never the key
// presented), and X-Forwarded-For is believed only from nginx's own address (so a client reaching the
// service's port directly cannot dodge the lockout by claiming a new address each time).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { rawRequest, type RawResponse } from '../helpers/raw-http.js';
import { eventually } from '../helpers/conditions.js';
import { request } from '../helpers/service-client.js';
import { freePort, startTestStack, type TestStack } from '../helpers/stack.js';
import { LocalStack, SERVICE_DIR } from '../../scripts/lib/local-stack.js';
import { buildApp } from '../../src/app.js';
import { loadConfig } from '../../src/shared/config.js';
import { adminKeyInLogLine } from '../../src/shared/secrets.js';
import { TrustedProxies } from '../../src/http/trusted-proxy.js';

let t: TestStack;
before(async () => {
  t = await startTestStack();
});
after(async () => {
  await t?.stop();
});

const MAX_FAILED_ATTEMPTS = 10; // the default AUTH_MAX_FAILED_ATTEMPTS

/** Every message an authentication failure may carry: none of them says anything about the rest of the input. */
const AUTH_MESSAGES = [
  'send the admin key as "Authorization: Bearer <key>"',
  'invalid admin key',
  'admin_key is required (in the JSON body, or as "Authorization: Bearer <key>")',
];

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

const auditRows = (where: string, params: unknown[]) =>
  t.superuser(async (db) => (await db.query(`SELECT action, outcome, client, request_id, detail FROM audit_log WHERE ${where} ORDER BY id`, params)).rows, 'provisioner');

describe('the admin key is checked before the input is validated', () => {
  // Each request is invalid in its params, query or body; with the right key it gets the 400 shown.
  const cases: Array<{ label: string; call: Call; invalid: RegExp }> = [
    { label: 'rotate, bad name', call: { method: 'POST', path: '/apps/BAD-NAME/rotate' }, invalid: /app_name may contain only/ },
    { label: 'get, short name', call: { method: 'GET', path: '/apps/ab' }, invalid: /at least 3/ },
    { label: 'list backups, bad name', call: { method: 'GET', path: '/apps/BAD-NAME/backups' }, invalid: /app_name may contain only/ },
    { label: 'back up, long name', call: { method: 'POST', path: `/apps/${'x'.repeat(40)}/backups` }, invalid: /at most 32/ },
    { label: 'restore, bad file', call: { method: 'POST', path: '/apps/some_app/restore', body: { file: '../../etc/passwd' } }, invalid: /file must be a backup file name/ },
    { label: 'restore, no file', call: { method: 'POST', path: '/apps/some_app/restore', body: {} }, invalid: /file is required/ },
    { label: 'restore, extra field', call: { method: 'POST', path: '/apps/some_app/restore', body: { file: 'x.dump', owner: 'me' } }, invalid: /owner|file must be/ },
    { label: 'restore, array body', call: { method: 'POST', path: '/apps/some_app/restore', body: [] }, invalid: /JSON object/ },
    { label: 'delete, bad query', call: { method: 'DELETE', path: '/apps/some_app?backup=maybe' }, invalid: /backup must be true or false/ },
    { label: 'delete, unknown query', call: { method: 'DELETE', path: '/apps/some_app?force=1' }, invalid: /force/ },
    { label: 'delete, bad name', call: { method: 'DELETE', path: '/apps/My.App' }, invalid: /app_name may contain only/ },
  ];

  it('answers /apps requests without a key, or with a wrong one, with a 401 that says nothing about the input', async () => {
    for (const [i, { label, call, invalid }] of cases.entries()) {
      const missing = await send(call);
      assert.equal(missing.status, 401, `${label}, no key: ${missing.body}`);
      assert.equal(missing.headers['www-authenticate'], 'Bearer', label);
      assert.equal(missing.json.message, AUTH_MESSAGES[0], label);

      // One wrong key per address, well under the lockout.
      const wrong = await send({ ...call, headers: bearer('sk_wrong_key') }, `127.0.1.${i + 1}`);
      assert.equal(wrong.status, 401, `${label}, wrong key: ${wrong.body}`);
      assert.equal(wrong.json.statusCode, 401, label);
      assert.equal(wrong.json.message, 'invalid admin key', label);

      const right = await send({ ...call, headers: bearer(t.stack.adminKey) });
      assert.equal(right.status, 400, `${label}, right key: ${right.body}`);
      assert.equal(right.json.statusCode, 400, label);
      assert.match(String(right.json.message), invalid, label);
    }
  });

  it('answers POST /provision without a key, or with a wrong one, before looking at app_name or unknown fields', async () => {
    const source = '127.0.1.100';
    const bodies: Array<[string, Record<string, unknown>, RegExp]> = [
      ['bad name', { app_name: 'BAD-NAME' }, /app_name may contain only/],
      ['short name', { app_name: 'ab' }, /at least 3/],
      ['name not a string', { app_name: 42 }, /app_name must be a string/],
      ['unknown field', { app_name: 'fine_name', owner: 'me' }, /owner/],
    ];
    for (const [label, body, invalid] of bodies) {
      const missing = await send({ method: 'POST', path: '/provision', body });
      assert.equal(missing.status, 400, `${label}, no key: ${missing.body}`);
      assert.equal(missing.json.message, AUTH_MESSAGES[2], `${label}: the documented "admin_key is required", nothing about the body`);

      const wrongInBody = await send({ method: 'POST', path: '/provision', body: { ...body, admin_key: 'sk_wrong_key' } }, source);
      assert.equal(wrongInBody.status, 401, `${label}, wrong key in the body: ${wrongInBody.body}`);
      assert.equal(wrongInBody.json.message, 'invalid admin key', label);

      const wrongBearer = await send({ method: 'POST', path: '/provision', body, headers: bearer('sk_wrong_key') }, source);
      assert.equal(wrongBearer.status, 401, `${label}, wrong Bearer key: ${wrongBearer.body}`);
      assert.equal(wrongBearer.json.message, 'invalid admin key', label);

      for (const right of [{ body: { ...body, admin_key: t.stack.adminKey } }, { body, headers: bearer(t.stack.adminKey) }]) {
        const answer = await send({ method: 'POST', path: '/provision', ...right });
        assert.equal(answer.status, 400, `${label}, right key: ${answer.body}`);
        assert.match(String(answer.json.message), invalid, label);
      }
    }
  });
});

describe('the shape of the Authorization header', () => {
  const MALFORMED = 'malformed Authorization header: send exactly "Authorization: Bearer <key>"';

  it('takes only "Bearer <key>": any other scheme or shape is a 401 that says the expected form, even with the right key', async () => {
    const key = t.stack.adminKey;
    for (const [i, header] of [`Bearer  ${key}`, `Bearer ${key} extra`, `Bearer\t${key}`, `Basic ${key}`, `Token ${key}`, key, 'Bearer', `Bearer ${key},${key}`].entries()) {
      const source = `127.0.4.${i + 1}`;
      const apps = await send({ method: 'GET', path: '/apps', headers: { Authorization: header } }, source);
      assert.equal(apps.status, 401, `GET /apps with ${JSON.stringify(header)}: ${apps.body}`);
      assert.equal(apps.json.message, MALFORMED, header);
      assert.equal(apps.headers['www-authenticate'], 'Bearer');
      // On POST /provision a malformed header is not excused by a right key in the body.
      const provision = await send({ method: 'POST', path: '/provision', body: { app_name: 'BAD-NAME', admin_key: key }, headers: { Authorization: header } }, source);
      assert.equal(provision.status, 401, `POST /provision with ${JSON.stringify(header)}: ${provision.body}`);
      assert.equal(provision.json.message, MALFORMED, header);
    }
    assert.equal((await send({ method: 'GET', path: '/apps', headers: bearer(key) })).status, 200, 'the one right shape');
    // Audited like a missing key: one row per address and window (two refusals from 127.0.4.1 above), never the key.
    const rows = await eventually(() => auditRows(`action = 'admin_auth' AND client = $1`, ['127.0.4.1']), (found) => found.length > 0);
    assert.deepEqual(rows.map((row) => row.outcome), ['malformed_authorization']);
    assert.ok(!JSON.stringify(rows).includes(key));
  });

  it('answers a POST /provision whose body key and header key disagree with a 401, whichever one is right', async () => {
    const key = t.stack.adminKey;
    const DISAGREE = 'the admin key in the Authorization header and admin_key in the body differ: send the key once';
    const cases: Array<[string, string, string]> = [
      ['right header, wrong body', key, 'sk_wrong_in_body'],
      ['wrong header, right body', 'sk_wrong_in_header', key],
      ['two wrong keys', 'sk_wrong_one', 'sk_wrong_two'],
    ];
    for (const [i, [label, header, body]] of cases.entries()) {
      const answer = await send({ method: 'POST', path: '/provision', body: { app_name: 'BAD-NAME', admin_key: body }, headers: bearer(header) }, `127.0.5.${i + 1}`);
      assert.equal(answer.status, 401, `${label}: ${answer.body}`);
      assert.equal(answer.json.message, DISAGREE, label);
    }
    const rows = await eventually(() => auditRows(`action = 'admin_auth' AND client = $1`, ['127.0.5.1']), (found) => found.length > 0);
    assert.deepEqual(rows.map((row) => row.outcome), ['conflicting_keys']);
    const agree = await send({ method: 'POST', path: '/provision', body: { app_name: 'BAD-NAME', admin_key: key }, headers: bearer(key) });
    assert.equal(agree.status, 400, `the same key twice is the key: ${agree.body}`);
    assert.match(String(agree.json.message), /app_name may contain only/);
  });
});

/** The hexadecimal SHA-256 of a key, as `sha256sum` prints it. */
const sha256Hex = (text: string) => createHash('sha256').update(text).digest('hex');

/**
 * Starts (or restarts) a service that uses ADMIN_KEY_FILE. scripts/lib/local-stack.ts waits for the generated key's
 * log line before it calls the service started, and a pinned key writes no such line. It is not ours to change,
 * so until it learns about ADMIN_KEY_FILE the stack is told the key (which the test knows) right after
 * startService has cleared it: its wait then ends when /health answers, and its helpers send this key.
 */
async function startingWithPinnedKey<T>(key: string, start: () => Promise<T>): Promise<T> {
  const startService = LocalStack.prototype.startService;
  LocalStack.prototype.startService = function (this: LocalStack, ...args: Parameters<typeof startService>) {
    const started = startService.apply(this, args);
    this.adminKey = key; // startService cleared it synchronously; it reads it again only after /health answers
    return started;
  };
  try {
    return await start();
  } finally {
    LocalStack.prototype.startService = startService;
  }
}

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
    p = await startingWithPinnedKey(key, () => startTestStack({ serviceEnv: { LOG_PRETTY: 'false', LOG_LEVEL: 'info', ADMIN_KEY_FILE: keyFile } }));
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
    await startingWithPinnedKey(newKey, async () => {
      await p.stack.stopService();
      await p.stack.startService();
    });
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

describe('failed admin keys in the audit log', () => {
  it('records wrong and missing keys with client and request id, one row when a lockout starts, and never the key', async () => {
    const guesser = '127.0.2.1';
    const wrongKey = `sk_audit_probe_${randomBytes(12).toString('hex')}`;

    // A missing key (twice: one row per address and window is enough), then wrong keys until locked out.
    for (let i = 0; i < 2; i++) assert.equal((await send({ method: 'GET', path: '/apps' }, guesser)).status, 401);
    const statuses: number[] = [];
    for (let i = 0; i < MAX_FAILED_ATTEMPTS + 4; i++) {
      const call: Call = i % 2 === 0
        ? { method: 'POST', path: '/provision', body: { app_name: 'audit_target', admin_key: wrongKey } }
        : { method: 'POST', path: '/apps/audit_target/rotate', headers: bearer(wrongKey) };
      statuses.push((await send(call, guesser)).status);
    }
    assert.deepEqual(statuses, [...Array(MAX_FAILED_ATTEMPTS).fill(401), ...Array(4).fill(429)]);

    // A later failure from another address; once its row is in, so are the guesser's (or they never will be).
    assert.equal((await send({ method: 'GET', path: '/apps', headers: bearer('sk_marker') }, '127.0.2.2')).status, 401);
    const marker = await eventually(() => auditRows(`action = 'admin_auth' AND client = $1`, ['127.0.2.2']), (rows) => rows.length > 0);
    assert.equal(marker.length, 1, 'the later failure was recorded');
    const rows = await eventually(
      () => auditRows(`action = 'admin_auth' AND client = $1`, [guesser]),
      (found) => found.length >= MAX_FAILED_ATTEMPTS + 2,
    );
    const outcomes = rows.map((row) => row.outcome).sort();
    assert.deepEqual(outcomes, ['invalid_key', ...Array(MAX_FAILED_ATTEMPTS - 1).fill('invalid_key'), 'locked_out', 'missing_key'].sort(), 'no row per request refused during the lockout');
    for (const row of rows) {
      assert.equal(row.client, guesser);
      assert.ok(typeof row.request_id === 'string' && row.request_id.length >= 8, `request id ${row.request_id}`);
    }

    const leaked = await t.superuser(async (db) => (await db.query(`SELECT count(*)::int AS n FROM audit_log a WHERE a::text LIKE '%' || $1 || '%'`, [wrongKey])).rows[0].n, 'provisioner');
    assert.equal(leaked, 0, 'the presented key is nowhere in audit_log');
    assert.ok(!t.allLogs().includes(wrongKey), 'nor in any log');
  });
});

describe('failed admin keys never wait for the audit log', () => {
  it('answers a wrong key while Postgres hangs, and logs the row it could not write once Postgres fails', { timeout: 60_000 }, async () => {
    // A "Postgres" that accepts connections and never answers, until it is told to drop them.
    const sockets = new Set<Socket>();
    let dropping = false;
    const frozen = createServer((socket) => (dropping ? socket.destroy() : sockets.add(socket)));
    await new Promise<void>((resolve) => frozen.listen(0, '127.0.0.1', resolve));
    const port = (frozen.address() as { port: number }).port;
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _encoding, done) {
        lines.push(String(chunk));
        done();
      },
    });
    const adminKey = 'sk_unit0000000000000000000000000000000000';
    const config = loadConfig({
      POSTGRES_PASSWORD: 'unused', DATABASE_HOST: '127.0.0.1', DATABASE_PORT: String(port), DATABASE_CONNECT_TIMEOUT_MS: '600000',
      LOG_PRETTY: 'false', READY_POOL_SIZE: '0', RECONCILE_INTERVAL_MS: '3600000',
    });
    const app = await buildApp(config, { adminKey, logStream: sink });
    try {
      const response = await app.inject({ method: 'POST', url: '/provision', payload: { app_name: 'frozen', admin_key: 'sk_wrong_while_frozen' } });
      assert.equal(response.statusCode, 401);
      assert.equal(response.json().message, 'invalid admin key');
      assert.ok(!lines.join('').includes('could not write the audit log'), 'answered while the write still waits');

      dropping = true;
      for (const socket of sockets) socket.destroy();
      const warned = await eventually(async () => lines.join(''), (text) => text.includes('could not write the audit log'));
      assert.match(warned, /"outcome":"invalid_key"[^\n]*could not write the audit log|could not write the audit log[^\n]*"outcome":"invalid_key"/);
      assert.ok(!warned.includes('sk_wrong_while_frozen'), 'the key is not in the log either');
    } finally {
      dropping = true;
      for (const socket of sockets) socket.destroy();
      await app.close();
      await new Promise((resolve) => frozen.close(resolve));
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

describe('TrustedProxies: whose X-Forwarded-For is believed (unit)', () => {
  const quiet = { info: () => {}, warn: () => {} };
  /** Lets every answer already given by a stand-in lookup be applied (one turn of the event loop, not a duration). */
  const settled = () => new Promise((resolve) => setImmediate(resolve));

  it('trusts only the immediate peer, and only a listed address, in IPv4 or IPv4-mapped IPv6 form', () => {
    const proxies = new TrustedProxies(['127.0.0.1', '::1', '10.1.2.3']);
    for (const address of ['127.0.0.1', '::ffff:127.0.0.1', '::FFFF:127.0.0.1', '::1', '10.1.2.3', '::ffff:10.1.2.3']) {
      assert.equal(proxies.trusts(address, 0), true, address);
    }
    assert.equal(proxies.trusts('127.0.0.1', 1), false, 'never an address beyond the peer');
    for (const address of ['127.0.0.2', '::ffff:127.0.0.2', '10.1.2.4', '192.168.1.1', 'fe80::1', 'nginx', '', undefined]) {
      assert.equal(proxies.trusts(address, 0), false, String(address));
    }
    assert.equal(new TrustedProxies([]).trusts('127.0.0.1', 0), false, 'an empty list trusts nobody');
  });

  it('resolves host names at start, and again (at most once a second) when an unknown peer sends X-Forwarded-For', async () => {
    let addresses = ['172.18.0.5'];
    let lookups = 0;
    let clock = 0;
    const lookup = async () => {
      lookups++;
      return addresses.map((address) => ({ address }));
    };
    const proxies = new TrustedProxies(['nginx'], { lookup, now: () => clock });
    assert.equal(proxies.trusts('172.18.0.5', 0), false, 'nothing before start');
    assert.equal(lookups, 0, 'and no lookup before start');
    proxies.start(quiet);
    try {
      assert.equal(await eventually(async () => proxies.trusts('172.18.0.5', 0), Boolean), true, 'resolved at start');

      clock += 60_000;
      addresses = ['172.18.0.9']; // nginx recreated with a new address
      const before = lookups;
      for (let i = 0; i < 50; i++) assert.equal(proxies.trusts('172.18.0.9', 0), false);
      await settled();
      assert.equal(lookups, before + 1, 'one lookup for a burst of requests');
      assert.equal(proxies.trusts('172.18.0.9', 0), true, 'the new address, once resolved');
      assert.equal(proxies.trusts('172.18.0.5', 0), false, 'and no longer the old one');

      clock += 1_000;
      proxies.trusts('10.9.9.9', 0);
      await settled();
      assert.equal(lookups, before + 2, 'a second later, another');
    } finally {
      proxies.stop();
    }
    const stopped = lookups;
    clock += 60_000;
    proxies.trusts('10.9.9.9', 0);
    await settled();
    assert.equal(lookups, stopped, 'no lookup once stopped');
  });

  it('trusts nothing for a name until it resolves, lets the newest answer win, and forgets a name that is gone', async () => {
    const calls: Array<{ resolve: (found: Array<{ address: string }>) => void; reject: (err: Error) => void }> = [];
    const lookup = () => new Promise<Array<{ address: string }>>((resolve, reject) => calls.push({ resolve, reject }));
    const warnings: string[] = [];
    let clock = 0;
    const proxies = new TrustedProxies(['127.0.0.1', 'nginx'], { lookup, now: () => clock });
    proxies.start({ info: () => {}, warn: (_fields: unknown, message?: string) => void warnings.push(String(message)) });
    try {
      assert.equal(calls.length, 1, 'looked up at start; this lookup never answers');
      assert.equal(proxies.trusts('127.0.0.1', 0), true, 'listed addresses are trusted meanwhile');
      assert.equal(proxies.trusts('172.18.0.5', 0), false);

      clock += 1_000;
      proxies.trusts('172.18.0.6', 0);
      assert.equal(calls.length, 3, 'an unknown peer asks again, although the first lookup hangs');
      calls[2]!.resolve([{ address: '172.18.0.6' }]);
      await settled();
      assert.equal(proxies.trusts('172.18.0.6', 0), true);
      calls[1]!.resolve([{ address: '172.18.0.5' }]); // an older lookup answering late
      await settled();
      assert.equal(proxies.trusts('172.18.0.5', 0), false, 'an older answer does not replace a newer one');
      assert.equal(proxies.trusts('172.18.0.6', 0), true);

      clock += 1_000;
      proxies.trusts('10.9.9.9', 0);
      calls.at(-1)!.reject(Object.assign(new Error('temporary failure'), { code: 'EAI_AGAIN' }));
      await settled();
      assert.equal(proxies.trusts('172.18.0.6', 0), true, 'a temporary failure keeps the last answer');
      assert.deepEqual(warnings, ['could not resolve a TRUSTED_PROXY host name']);

      clock += 1_000;
      proxies.trusts('10.9.9.9', 0);
      calls.at(-1)!.reject(Object.assign(new Error('no such name'), { code: 'ENOTFOUND' }));
      await settled();
      assert.equal(proxies.trusts('172.18.0.6', 0), false, 'a name that no longer exists is trusted with no address');
    } finally {
      proxies.stop();
    }
  });
});
