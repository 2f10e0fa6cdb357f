// Admin authentication in process, against a real Postgres: the key is checked before any input is validated (so an
// unauthenticated caller learns nothing about the schema), the Authorization header has one shape, and failed
// attempts reach the audit log (never the key presented), each from the client address the service sees. Through
// nginx and the service's own port (X-Forwarded-For), and a pinned key file at start: test/stack/admin-auth.test.ts.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { buildApp } from '../../src/app.js';
import { loadConfig } from '../../src/shared/config.js';
import { buildTestApp, type TestApp } from '../helpers/app.js';
import { eventually } from '../helpers/conditions.js';

let t: TestApp;
before(async () => {
  t = await buildTestApp();
});
after(async () => {
  await t?.close();
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

interface JsonAnswer {
  status: number;
  headers: Headers;
  body: string;
  json: { statusCode?: number; message?: string };
}

/** One request, from a chosen client address (lockouts are per address). */
async function send({ method, path, body, headers = {} }: Call, source = '127.0.0.1'): Promise<JsonAnswer> {
  const response = await t.request(method, path, { body, headers, remoteAddress: source });
  let json = {};
  try {
    json = JSON.parse(response.text);
  } catch {
    assert.fail(`${method} ${path}: not JSON: ${response.text.slice(0, 200)}`);
  }
  return { status: response.status, headers: response.headers, body: response.text, json };
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
    { label: 'settings, bad name', call: { method: 'GET', path: '/apps/My.App/settings' }, invalid: /app_name may contain only/ },
    { label: 'change settings, bad value', call: { method: 'PATCH', path: '/apps/some_app/settings', body: { connection_limit: -1 } }, invalid: /connection_limit must be/ },
    { label: 'change settings, bad query', call: { method: 'PATCH', path: '/apps/some_app/settings?end_sessions=yes', body: {} }, invalid: /end_sessions must be true or false/ },
  ];

  it('answers /apps requests without a key, or with a wrong one, with a 401 that says nothing about the input', async () => {
    for (const [i, { label, call, invalid }] of cases.entries()) {
      const missing = await send(call);
      assert.equal(missing.status, 401, `${label}, no key: ${missing.body}`);
      assert.equal(missing.headers.get('www-authenticate'), 'Bearer', label);
      assert.equal(missing.json.message, AUTH_MESSAGES[0], label);

      // One wrong key per address, well under the lockout.
      const wrong = await send({ ...call, headers: bearer('sk_wrong_key') }, `127.0.1.${i + 1}`);
      assert.equal(wrong.status, 401, `${label}, wrong key: ${wrong.body}`);
      assert.equal(wrong.json.statusCode, 401, label);
      assert.equal(wrong.json.message, 'invalid admin key', label);

      const right = await send({ ...call, headers: bearer(t.adminKey) });
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

      for (const right of [{ body: { ...body, admin_key: t.adminKey } }, { body, headers: bearer(t.adminKey) }]) {
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
    const key = t.adminKey;
    for (const [i, header] of [`Bearer  ${key}`, `Bearer ${key} extra`, `Bearer\t${key}`, `Basic ${key}`, `Token ${key}`, key, 'Bearer', `Bearer ${key},${key}`].entries()) {
      const source = `127.0.4.${i + 1}`;
      const apps = await send({ method: 'GET', path: '/apps', headers: { Authorization: header } }, source);
      assert.equal(apps.status, 401, `GET /apps with ${JSON.stringify(header)}: ${apps.body}`);
      assert.equal(apps.json.message, MALFORMED, header);
      assert.equal(apps.headers.get('www-authenticate'), 'Bearer');
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
    const key = t.adminKey;
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
