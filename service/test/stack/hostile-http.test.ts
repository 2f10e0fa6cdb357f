// Hostile HTTP input, through nginx: a table-driven fuzz suite of generated requests. Every answer must be a
// 4xx with a JSON body (the two public GETs aside), none a 5xx, and no rejected request may create anything.
// Each generated request leaves from a loopback address of its own (127.1.x.y), so that no limit kept per
// address (nginx's, the service's lockout after 10 wrong keys) hides what the service answers, however many
// cases there are and however slowly they run; the tests that are about those limits use addresses of their
// own (127.2.0.x), which no generated request ever uses.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { rawRequest, type RawRequest, type RawResponse } from '../helpers/raw-http.js';
import { catalogOf } from '../helpers/catalog.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';
import { APP_NAME_PATTERN } from '../../src/shared/object-names.js';

let t: TestStack;
before(async () => {
  t = await startTestStack();
});
after(async () => {
  await t?.stop();
});

const catalog = catalogOf(() => t);
/** Every role and database, but the ready pool's prepared sets, which come and go in the background: no hostile request may change it. */
const catalogSnapshot = () => catalog.everythingButReadySets();

/** A small deterministic PRNG (mulberry32), so every run sends the same requests. */
function prng(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

interface Case extends RawRequest {
  label: string;
  /** The two public GETs answer 200; everything else here must be refused. */
  allowed?: boolean;
}

const INVALID_NAMES: unknown[] = [
  '', 'a', 'ab', 'x'.repeat(33), 'x'.repeat(10_000), 'MyApp', 'APP', 'my-app', 'my app', 'my.app', 'my/app', 'app\\x',
  'аpp', 'ａｐｐ', 'apı', 'ﬁle', 'app\u200b', 'app\u0301', 'app\u202e', 'app🙂', 'über',
  'app\u0000', '\u0000\u0000\u0000', 'app\u0001', 'app\n', '\tapp', 'app\r\nX-Injected: 1', 'app\u007f',
  "x'; DROP ROLE postgres; --", 'x"; DROP DATABASE provisioner; --', "app' OR '1'='1", 'app$$', 'app--', 'app/*', 'a;b',
  'app%', '%_%', ' app', 'app ', '$(id)', '`id`', '../../etc', 'app\\', 'NULL',
  123, 12.5, -1, 0, true, false, null, [], ['abc'], {}, { name: 'abc' },
];

const PATHS = [
  '/', '/health', '/provision', '/provision/', '/provision?admin_key=x', '/apps', '/apps/x', '/metrics', '/docs/json',
  '/docs', '/.env', '/../../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd', '//provision', '/PROVISION', '/health/',
  '/provision%00', '/provision;x', '/index.html', `/${'x'.repeat(2000)}`, '/health?x=%ff', '/%',
];
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'PROPFIND', 'FOO', 'CONNECT'];

function buildCases(adminKey: string): Case[] {
  const cases: Case[] = [];
  const json = { 'Content-Type': 'application/json' };
  const post = (label: string, body: string | Buffer, headers: Record<string, string> = json): Case => ({ label, method: 'POST', path: '/provision', headers, body });

  // Invalid names, with the right key, in the body or as a Bearer header, with two JSON content types.
  for (const [i, name] of INVALID_NAMES.entries()) {
    for (const contentType of ['application/json', 'application/json; charset=utf-8']) {
      cases.push(post(`name #${i} (key in body, ${contentType})`, JSON.stringify({ app_name: name, admin_key: adminKey }), { 'Content-Type': contentType }));
      cases.push(post(`name #${i} (Bearer, ${contentType})`, JSON.stringify({ app_name: name }), { 'Content-Type': contentType, Authorization: `Bearer ${adminKey}` }));
    }
  }

  // The same names as a companion database's, and as what it copies (POST /apps/:name/databases).
  for (const [i, name] of INVALID_NAMES.entries()) {
    const bearer = { ...json, Authorization: `Bearer ${adminKey}` };
    cases.push({ label: `companion name #${i}`, method: 'POST', path: '/apps/fuzz_app/databases', headers: bearer, body: JSON.stringify({ name }) });
    cases.push({ label: `companion copy_of #${i}`, method: 'POST', path: '/apps/fuzz_app/databases', headers: bearer, body: JSON.stringify({ name: 'fuzz', copy_of: name }) });
  }

  // Generated names from a hostile alphabet; each is invalid (a bad character, or a bad length).
  const random = prng(20261124);
  const alphabet = "abcxyz019_-. '\"\\;%$`/\u0000\u0001\u001f\u007f\u00e9\u0430\uff41\u200b\u202e\ud83d\ude00ABZ";
  const chars = Array.from(alphabet);
  for (let i = 0; i < 600; i++) {
    let name = '';
    const length = Math.floor(random() * 40);
    for (let j = 0; j < length; j++) name += chars[Math.floor(random() * chars.length)];
    if (APP_NAME_PATTERN.test(name)) name += '-';
    cases.push(post(`random name #${i}`, JSON.stringify({ app_name: name, admin_key: adminKey })));
  }

  // Missing and extra fields, wrong key types, wrong keys.
  cases.push(
    post('empty object', '{}'),
    post('only admin_key', JSON.stringify({ admin_key: adminKey })),
    post('only app_name', JSON.stringify({ app_name: 'fuzz_nokey' })),
    post('extra field', JSON.stringify({ app_name: 'fuzz_extra', admin_key: adminKey, superuser: true })),
    post('key as number', JSON.stringify({ app_name: 'fuzz_key', admin_key: 42 })),
    post('key as array', JSON.stringify({ app_name: 'fuzz_key', admin_key: [adminKey] })),
    post('key as object', JSON.stringify({ app_name: 'fuzz_key', admin_key: { $ne: null } })),
    post('wrong key', JSON.stringify({ app_name: 'fuzz_wrong', admin_key: 'sk_wrong' })),
    post('key with a NUL', JSON.stringify({ app_name: 'fuzz_wrong', admin_key: `${adminKey}\u0000` })),
    post('key prefix', JSON.stringify({ app_name: 'fuzz_wrong', admin_key: adminKey.slice(0, 10) })),
    post('Bearer, no key', JSON.stringify({ app_name: 'fuzz_wrong' }), { ...json, Authorization: 'Bearer' }),
    post('Basic auth', JSON.stringify({ app_name: 'fuzz_wrong' }), { ...json, Authorization: `Basic ${Buffer.from(`admin:${adminKey}`).toString('base64')}` }),
    post('header wins over body key', JSON.stringify({ app_name: 'fuzz_wrong', admin_key: adminKey }), { ...json, Authorization: 'Bearer sk_wrong' }),
  );

  // Bodies that are not JSON objects, and malformed JSON.
  for (const body of ['[]', '1', '"fuzz_app"', 'null', 'true', `[${JSON.stringify({ app_name: 'fuzz_arr', admin_key: adminKey })}]`,
    '{"app_name":', "{'app_name':'fuzz_sq'}", '{"app_name":"fuzz_tc",}', '{"app_name":NaN}', '/* c */ {}', '\ufeff{}',
    '{"app_name":"fuzz\u0000nul"}', '['.repeat(5000) + ']'.repeat(5000), '{"a":'.repeat(2000) + '1' + '}'.repeat(2000), ' ', 'undefined']) {
    cases.push(post(`body ${JSON.stringify(body.slice(0, 30))}`, body));
  }
  cases.push(post('raw NUL byte', Buffer.from('{"app_name":"fuzz\u0000x","admin_key":"k"}'.replace('\\u0000', '\u0000'))));
  cases.push(post('invalid UTF-8', Buffer.concat([Buffer.from('{"app_name":"fuzz'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from(`","admin_key":"${adminKey}"}`)])));

  // Duplicate keys: the last one wins, and here the last one is always refused.
  cases.push(
    post('duplicate app_name', `{"app_name":"fuzz_dup_ok","app_name":"NOT VALID","admin_key":"${adminKey}"}`),
    post('duplicate admin_key', `{"app_name":"fuzz_dup","admin_key":"${adminKey}","admin_key":"sk_wrong"}`),
  );

  // Prototype pollution.
  cases.push(
    post('__proto__', `{"__proto__":{"admin_key":"${adminKey}"},"app_name":"fuzz_proto"}`),
    post('__proto__ polluting', `{"app_name":"fuzz_proto","admin_key":"sk_wrong","__proto__":{"isAdmin":true}}`),
    post('constructor.prototype', `{"app_name":"fuzz_ctor","admin_key":"sk_wrong","constructor":{"prototype":{"isAdmin":true}}}`),
  );

  // Wrong and missing content types (with a wrong key, so even a lenient parser could create nothing).
  const wrongKeyBody = JSON.stringify({ app_name: 'fuzz_ct', admin_key: 'sk_wrong' });
  for (const contentType of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/xml',
    'application/json-patch+json', 'application/json; charset=iso-8859-1', 'application/jsonx', 'text/json', '*/*', 'application/json, text/plain']) {
    cases.push(post(`content type ${contentType}`, wrongKeyBody, { 'Content-Type': contentType }));
  }
  cases.push(post('no content type', wrongKeyBody, {}));
  cases.push({ label: 'form body', method: 'POST', path: '/provision', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: `app_name=fuzz_form&admin_key=${adminKey}` });
  cases.push({ label: 'no body', method: 'POST', path: '/provision', headers: json });

  // Oversized bodies and headers.
  for (const size of [17 * 1024, 100 * 1024, 1024 * 1024]) {
    cases.push(post(`body of ${size} bytes`, JSON.stringify({ app_name: 'fuzz_big', admin_key: adminKey, pad: 'x'.repeat(size) })));
  }
  cases.push({ label: 'huge header', method: 'GET', path: '/health', headers: { Cookie: 'x'.repeat(10_000) } });
  cases.push({ label: 'huge Authorization', method: 'POST', path: '/provision', headers: { ...json, Authorization: `Bearer ${'k'.repeat(9000)}` }, body: '{}' });

  // Every method on every path.
  for (const method of METHODS) {
    for (const path of PATHS) {
      const allowed = (method === 'GET' || method === 'HEAD') && (path === '/' || path === '/health' || path === '/health?x=%ff');
      cases.push({ label: `${method} ${path.slice(0, 40)}`, method, path, allowed, ...(method === 'POST' ? { headers: json, body: '{}' } : {}) });
    }
  }
  return cases;
}

/** The loopback address case `index` is sent from when no source is given: one per case, in 127.1.0.0/16. */
function caseAddress(index: number): string {
  if (index >= 250 * 256) throw new Error(`case ${index}: no address of its own left in 127.1.0.0/16`);
  return `127.1.${Math.floor(index / 250)}.${1 + (index % 250)}`;
}

/** Generous: on a loaded machine a request may wait its turn for long; none of these may be lost to a timeout. */
const ANSWER_TIMEOUT_MS = 60_000;

/** Sends every case, `concurrency` at a time, from `source` or else each from an address of its own. */
async function runAll(cases: Case[], port: number, concurrency = 16, source?: string): Promise<RawResponse[]> {
  const results: RawResponse[] = new Array(cases.length);
  let next = 0;
  const worker = async () => {
    while (next < cases.length) {
      const index = next++;
      results[index] = await rawRequest(port, cases[index]!, source ?? caseAddress(index), ANSWER_TIMEOUT_MS);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return results;
}

describe('hostile HTTP input through nginx', () => {
  it('answers at least 1,000 generated hostile requests with a JSON 4xx, never a 5xx, and creates nothing', async () => {
    const before = await catalogSnapshot();
    const cases = buildCases(t.stack.adminKey);
    assert.ok(cases.length >= 1000, `only ${cases.length} cases`);
    const responses = await runAll(cases, t.stack.settings.httpPort);

    const failures: string[] = [];
    const statuses = new Map<number, number>();
    for (const [i, response] of responses.entries()) {
      const c = cases[i]!;
      statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
      const problem = checkAnswer(c, response);
      if (problem) failures.push(`${c.label}: ${problem}`);
    }
    assert.deepEqual(failures.slice(0, 20), [], `${failures.length} bad answers`);
    assert.ok(![...statuses.keys()].some((s) => s >= 500), `statuses: ${JSON.stringify([...statuses])}`);
    assert.ok(!statuses.has(429), `no limit hid what the service answers: ${JSON.stringify([...statuses])}`);
    assert.deepEqual(await catalogSnapshot(), before, 'no role or database was created');
    assert.equal((await t.get('/health')).status, 200, 'the service is still up');
  });
});

function checkAnswer(c: Case, response: RawResponse): string | undefined {
  if (c.allowed) {
    if (response.status !== 200) return `expected 200, got ${response.status}`;
  } else if (response.status < 400 || response.status > 499) {
    return `expected a 4xx, got ${response.status} ${response.body.slice(0, 120)}`;
  }
  if (!/^application\/json/.test(response.headers['content-type'] ?? '')) return `content type ${response.headers['content-type']}`;
  if (response.headers['x-content-type-options'] !== 'nosniff') return 'no nosniff';
  if (response.headers.server !== 'nginx') return `server header ${response.headers.server}`;
  if (!/^[0-9a-f]{32}$/.test(response.headers['x-request-id'] ?? '')) return `x-request-id ${response.headers['x-request-id']}`;
  // A 405 names the methods the path takes; nginx refuses TRACE and CONNECT before it looks at the path.
  if (response.status === 405 && !['TRACE', 'CONNECT'].includes(c.method) && !/^[A-Z]+(, [A-Z]+)*$/.test(response.headers.allow ?? '')) return `405 with Allow ${response.headers.allow}`;
  if (c.method === 'HEAD') return undefined;
  try {
    const body = JSON.parse(response.body);
    if (!c.allowed && body.statusCode !== response.status) return `body statusCode ${body.statusCode} for ${response.status}`;
  } catch {
    return `not JSON: ${JSON.stringify(response.body.slice(0, 120))}`;
  }
  return undefined;
}

describe('methods and paths', () => {
  // [method, path, status, Allow]: every route answers a method it does not take with 405 and the methods it
  // takes, and a path it does not have with 404, whether nginx or the service answers, and the same on both.
  const table: Array<[string, string, number, string?]> = [
    ['POST', '/health', 405, 'GET, HEAD'],
    ['DELETE', '/health', 405, 'GET, HEAD'],
    ['GET', '/provision', 405, 'POST'],
    ['PUT', '/provision', 405, 'POST'],
    ['OPTIONS', '/provision', 405, 'POST'],
    ['POST', '/apps', 405, 'GET, HEAD'],
    ['DELETE', '/apps', 405, 'GET, HEAD'],
    ['POST', '/backups', 405, 'GET, HEAD'],
    ['POST', '/apps/some_app', 405, 'DELETE, GET, HEAD'],
    ['PUT', '/apps/some_app', 405, 'DELETE, GET, HEAD'],
    ['PATCH', '/apps/some_app', 405, 'DELETE, GET, HEAD'],
    ['GET', '/apps/some_app/rotate', 405, 'POST'],
    ['HEAD', '/apps/some_app/rotate', 405, 'POST'],
    ['DELETE', '/apps/some_app/rotate', 405, 'POST'],
    ['PUT', '/apps/some_app/restore', 405, 'POST'],
    ['DELETE', '/apps/some_app/backups', 405, 'GET, HEAD, POST'],
    ['PUT', '/apps/some_app/backups', 405, 'GET, HEAD, POST'],
    ['PUT', '/apps/some_app/settings', 405, 'GET, HEAD, PATCH'],
    ['POST', '/apps/some_app/settings', 405, 'GET, HEAD, PATCH'],
    ['PUT', '/apps/some_app/credentials', 405, 'GET, HEAD, POST'],
    ['GET', '/apps/some_app/credentials/reader', 405, 'DELETE'],
    ['POST', '/apps/some_app/credentials/reader', 405, 'DELETE'],
    ['GET', '/apps/some_app/credentials/reader/rotate', 405, 'POST'],
    ['POST', '/apps/some_app/credentials//rotate', 404],
    ['PUT', '/apps/some_app/databases', 405, 'GET, HEAD, POST'],
    ['GET', '/apps/some_app/databases/some_db', 405, 'DELETE'],
    ['POST', '/apps/some_app/databases/some_db', 405, 'DELETE'],
    ['GET', '/apps/some_app/databases//x', 404],
    ['GET', '/apps/', 404],
    ['DELETE', '/apps/', 404],
    ['PUT', '/apps/', 404],
    ['GET', '/apps//rotate', 404],
    ['GET', '/apps/some_app/nothing', 404],
    ['PUT', '/apps/some_app/nothing', 404],
    ['POST', '/apps/some_app/rotate/x', 404],
    ['GET', '/provision/', 404],
    ['GET', '/nope', 404],
  ];

  it('answer a wrong method with 405 and Allow, an unknown path with 404: the same through nginx and directly', async () => {
    const problems: string[] = [];
    for (const [method, path, status, allow] of table) {
      const call = { method, path, headers: { Authorization: `Bearer ${t.stack.adminKey}` } };
      for (const [door, port] of [['nginx', t.stack.settings.httpPort], ['service', t.stack.settings.servicePort]] as const) {
        const response = await rawRequest(port, call);
        const label = `${method} ${path} (${door})`;
        if (response.status !== status) problems.push(`${label}: ${response.status} ${response.body.slice(0, 120)}`);
        if (response.headers.allow !== allow) problems.push(`${label}: Allow ${response.headers.allow}`);
        if (!response.headers['x-request-id']) problems.push(`${label}: no x-request-id`);
        if (method === 'HEAD') continue;
        const body = JSON.parse(response.body) as { statusCode?: number; message?: string };
        if (body.statusCode !== status) problems.push(`${label}: body ${response.body}`);
        if (status === 405 && body.message !== `method not allowed: use ${allow}`) problems.push(`${label}: message ${body.message}`);
      }
    }
    assert.deepEqual(problems, []);
  });
});

describe('admin key guessing', () => {
  it('locks a client out after 10 wrong keys (429, right key or not), while another client provisions 120 apps in a burst', async () => {
    const guesser = '127.2.0.77'; // outside the generated requests' 127.1.0.0/16: none of their wrong keys count here
    const attempt = (key: string, name = 'guess_target') =>
      rawRequest(t.stack.settings.httpPort, { method: 'POST', path: '/provision', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ app_name: name, admin_key: key }) }, guesser);
    const statuses: number[] = [];
    for (let i = 0; i < 14; i++) statuses.push((await attempt(`sk_guess${i}`)).status);
    assert.deepEqual(statuses, [...Array(10).fill(401), ...Array(4).fill(429)]);
    const lockedOut = await attempt(t.stack.adminKey, 'guess_lucky');
    assert.equal(lockedOut.status, 429, 'a right key is not told apart during the lockout');
    assert.match(JSON.parse(lockedOut.body).message, /too many wrong admin keys/);
    assert.ok(Number(lockedOut.headers['retry-after']) > 0);

    const operator = '127.2.0.78';
    const names = Array.from({ length: 120 }, (_, i) => `burst_${i}`);
    const responses = await runAll(
      names.map((name) => ({ label: name, method: 'POST', path: '/provision', headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${t.stack.adminKey}` }, body: JSON.stringify({ app_name: name }) })),
      t.stack.settings.httpPort,
      8,
      operator,
    );
    assert.deepEqual(responses.map((r) => r.status), Array(120).fill(201));
    const created = (await catalog.databasesLike('app\\_burst\\_%')).length;
    assert.equal(created, 120);
    const guessed = (await catalog.rolesLike('app\\_guess%')).length;
    assert.equal(guessed, 0);
  });
});
