// nginx bounds how long it waits for the service, route by route, by what the route can take: /health answers
// within 5 s when the service hangs; every other route waits at least as long as the service may take to answer
// it (so nginx never cuts an answer the service would still give), and at most twice that.
// The values are read from the repo's nginx.conf (the file compose mounts as is); the frozen service is tested
// through the real local stack's nginx.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigSchema } from '../../src/shared/config.js';
import { DATABASE_DDL_TIMEOUT_MS } from '../../src/db/postgres-server/app-objects.js';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
import { eventually } from '../helpers/conditions.js';
import { request } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

// --- nginx.conf, parsed -------------------------------------------------------------------------------------

interface Directive {
  name: string;
  args: string[];
  block?: Directive[];
}

/** nginx's tokens: words, quoted strings, `{`, `}` and `;`; `#` outside quotes starts a comment. */
function tokenize(text: string): string[] {
  const tokens: string[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === '#') {
      while (i < text.length && text[i] !== '\n') i++;
    } else if (c === '{' || c === '}' || c === ';') {
      tokens.push(c);
      i++;
    } else if (c === '"' || c === "'") {
      let value = '';
      for (i++; i < text.length && text[i] !== c; i++) value += text[i] === '\\' ? text[++i] : text[i];
      tokens.push(value);
      i++;
    } else {
      let word = '';
      while (i < text.length && !/[\s{};]/.test(text[i]!)) word += text[i++];
      tokens.push(word);
    }
  }
  return tokens;
}

function parseNginx(text: string): Directive[] {
  const tokens = tokenize(text);
  let at = 0;
  const block = (): Directive[] => {
    const directives: Directive[] = [];
    while (at < tokens.length && tokens[at] !== '}') {
      const name = tokens[at++]!;
      const args: string[] = [];
      while (tokens[at] !== ';' && tokens[at] !== '{') args.push(tokens[at++]!);
      if (tokens[at++] === '{') {
        directives.push({ name, args, block: block() });
        assert.equal(tokens[at++], '}');
      } else {
        directives.push({ name, args });
      }
    }
    return directives;
  };
  return block();
}

/** nginx's time syntax (ms, s, m, h; a bare number is seconds), in milliseconds. */
function nginxTimeMs(value: string): number {
  const match = /^(\d+)(ms|s|m|h)?$/.exec(value);
  assert.ok(match, `not an nginx time: ${value}`);
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[match[2] ?? 's']!;
  return Number(match[1]) * unit;
}

const conf = parseNginx(readFileSync(join(REPO_ROOT, 'nginx.conf'), 'utf8'));
const http = conf.find((d) => d.name === 'http')!.block!;
const server = http.find((d) => d.name === 'server')!.block!;
const locations = server.filter((d) => d.name === 'location');

/** A proxy timeout as it applies in `location`: its own, else the server's, else http's, else nginx's 60 s. */
function timeoutIn(location: Directive, name: 'proxy_connect_timeout' | 'proxy_send_timeout' | 'proxy_read_timeout'): number {
  for (const scope of [location.block!, server, http]) {
    const directive = scope.find((d) => d.name === name);
    if (directive) return nginxTimeMs(directive.args[0]!);
  }
  return 60_000;
}

function location(...args: string[]): Directive {
  const found = locations.find((l) => l.args.join(' ') === args.join(' '));
  assert.ok(found, `nginx.conf has no location ${args.join(' ')}`);
  return found;
}

// --- what each route can take, from the service's own bounds (src/shared/config.ts defaults) ----------------

const config = ConfigSchema.parse({ POSTGRES_PASSWORD: 'x' });
/** One database call at its bound: a connection (from the pool or new) and one answer. */
const CALL = config.DATABASE_CONNECT_TIMEOUT_MS + config.DATABASE_STATEMENT_TIMEOUT_MS;
/** CREATE or DROP DATABASE (src/db/postgres-server/app-objects.ts). */
const DDL = DATABASE_DDL_TIMEOUT_MS;
/** Dropping a role wherever it is named (dropAppRoles of both roles, or removeAgent): database calls. */
const DROP_ROLES = 7;
/** One command to the pooler's admin console (src/db/pooler/pgbouncer.ts). */
const POOLER = config.POOLER_TIMEOUT_MS;
/** The pooler told that logins changed: the catalog read, then RELOAD (doorTakesLogins). */
const DOOR_LOGINS = CALL + POOLER;
/** The pooler told to end an app's connections: KILL, RESUME (doorEndsConnections). */
const DOOR_END = 2 * POOLER;

/**
 * The longest the service may take to answer each route when every database call takes just under its bound
 * and each retry loop runs once (src/domain/operations/, step by step).
 */
const longest = {
  health: config.HEALTH_TIMEOUT_MS,
  provision: Math.max(
    // ready(), the ready pool's look (2), the app's lock, register, roles, CREATE DATABASE, hand-over (2), ready, unlock, audit
    11 * CALL + DDL,
    // the same until the hand-over fails, then the undo: DROP DATABASE, both roles, unregister; unlock
    (1 + 2 + 1 + 1 + 1 + 2 + DROP_ROLES + 1 + 1) * CALL + 2 * DDL,
  ) + DOOR_LOGINS, // the door takes the new login before the answer
  // ready(), the summaries, the sizes (GET /apps); ready(), the incarnations (GET /backups)
  lists: 3 * CALL,
  appRoutes: Math.max(
    // restore: ready(), lock, the app, the source app, DROP + CREATE DATABASE, hand-over (2), a leftover agent
    // removed, the agent made, pg_restore, the agent removed, the swap (and its 50 retries of 100 ms),
    // DROP DATABASE of the old one, unlock, audit
    // (and the door: the app's pooled connections ended before the swap, its login taken again after)
    (1 + 1 + 1 + 1 + 2 + DROP_ROLES + 1 + DROP_ROLES + 1 + 1 + 1) * CALL + 3 * DDL + config.BACKUP_TIMEOUT_MS + 50 * 100 + DOOR_END + DOOR_LOGINS,
    // DELETE with its backup: ready(), lock, the app, the dump (agent removed, made, pg_dump, removed), deleting,
    // the app's objects, logins refused, sessions ended, DROP DATABASE, both roles, unregister, unlock, audit
    // (the door told after the logins are refused: logins, then connections ended)
    (1 + 1 + 1 + DROP_ROLES + 1 + DROP_ROLES + 1 + 1 + 1 + 1 + DROP_ROLES + 1 + 1 + 1) * CALL + DDL + config.BACKUP_TIMEOUT_MS + DOOR_LOGINS + DOOR_END,
    // rotate: ready(), a rotation slot, lock, the app, NOLOGIN, authentication_timeout, sessions ended (2),
    // password, authentication_timeout (5 s) waited out, password checked, LOGIN, unlock, audit
    // (the door: logins and connections after NOLOGIN, logins after LOGIN)
    12 * CALL + config.DATABASE_LOCK_TIMEOUT_MS + 5_000 + 250 + 50 + 2 * DOOR_LOGINS + DOOR_END,
    // a branch (POST /apps/:name/databases with copy_of): ready(), lock, the app, the companions, a leftover of the
    // name removed (login refused, door told and its pools ended, DROP DATABASE, the role), the access role, the
    // source closed, the door's RECONNECT, 5 tries of ending sessions and CREATE DATABASE … TEMPLATE (each waited
    // for by Postgres up to 5 s when a session lingers), the source opened, the hand-over (2), the login admitted,
    // the door told, the details, unlock, audit
    (1 + 1 + 1 + 1 + 1 + DROP_ROLES + 1 + 1 + 5 + 1 + 2 + 1 + 1 + 1 + 1) * CALL + 6 * DDL + POOLER + 2 * DOOR_LOGINS + DOOR_END,
  ),
  /** The CA certificate: one small file read. */
  caCertificate: 5_000,
};

describe("nginx.conf's bounds per route", () => {
  it('answers GET /health within 5 s of a hung service, and never cuts what the service answers within its health timeout', () => {
    const health = location('=', '/health');
    const read = timeoutIn(health, 'proxy_read_timeout');
    const worst = timeoutIn(health, 'proxy_connect_timeout') + timeoutIn(health, 'proxy_send_timeout') + read;
    assert.ok(worst <= 5_000, `/health may wait ${worst} ms for a hung service (connect + send + read), more than 5 s`);
    assert.ok(read >= 2 * longest.health, `/health's read timeout ${read} ms leaves no margin over HEALTH_TIMEOUT_MS ${longest.health} ms`);
  });

  const routes: Array<[string, string[], number]> = [
    ['POST /provision', ['=', '/provision'], longest.provision],
    ['GET /apps', ['=', '/apps'], longest.lists],
    ['GET /backups', ['=', '/backups'], longest.lists],
    ['GET /tls/ca.crt', ['=', '/tls/ca.crt'], longest.caCertificate],
    ['/apps/… (rotate, backups, restore, delete)', ['^~', '/apps/'], longest.appRoutes],
  ];
  for (const [route, args, needed] of routes) {
    it(`waits for ${route} as long as the service may take (${Math.ceil(needed / 1000)} s), and not more than twice that`, () => {
      const read = timeoutIn(location(...args), 'proxy_read_timeout');
      assert.ok(read >= needed, `${route}: proxy_read_timeout ${read / 1000} s would cut an answer the service may still give after ${needed / 1000} s`);
      assert.ok(read <= 2 * needed, `${route}: proxy_read_timeout ${read / 1000} s is more than twice what the route can take (${needed / 1000} s)`);
    });
  }

  it('bounds every route nginx passes to the service (a new proxied location needs its line above)', () => {
    const bounded = ['= /health', '= /provision', '= /apps', '^~ /apps/', '= /backups', '= /tls/ca.crt'];
    const proxied = locations.filter((l) => l.block!.some((d) => d.name === 'proxy_pass')).map((l) => l.args.join(' '));
    assert.deepEqual(proxied.sort(), bounded.sort());
  });
});

describe('the service frozen (SIGSTOP) behind nginx', () => {
  let t: TestStack;
  before(async () => {
    t = await startTestStack();
  });
  after(async () => {
    await t?.stop();
  });

  // No timing assertion: the bound is proven by nginx's answer arriving at all before this test's own timeout,
  // which is well below the 60 s nginx waited before.
  it('GET /health through nginx answers a JSON 504 while the service is frozen, and 200 again once it runs', { timeout: 30_000 }, async () => {
    const pid = t.stack.servicePid;
    assert.ok(pid, 'the service runs');
    assert.equal((await t.get('/health')).status, 200);
    process.kill(pid, 'SIGSTOP');
    try {
      const response = await request(`${t.stack.httpUrl}/health`, { signal: AbortSignal.timeout(25_000) });
      assert.equal(response.status, 504, response.text);
      assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
      assert.equal(response.body.statusCode, 504);
      assert.equal(response.body.error, 'Gateway Timeout');
      assert.match(String(response.body.message), /did not answer in time/);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    const recovered = await eventually(() => t.get('/health'), (r) => r.status === 200, 10_000);
    assert.equal(recovered.status, 200, recovered.text);
  });
});
