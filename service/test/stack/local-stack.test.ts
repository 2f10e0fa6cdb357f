// The local stack as a user runs it: `npm --prefix service run stack` (or the script itself, once built) in a
// fresh STACK_DIR on free ports, stopped with the signals a user sends (Ctrl-C to the terminal's process group,
// SIGTERM to npm, SIGKILL). Checks what the user reads and what is left running afterwards.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { freePort, REPO_ROOT, SERVICE_DIR } from '../../scripts/lib/local-stack.js';
import { adminKeyInLogLine } from '../../src/shared/secrets.js';
import { readySetObjects, roleAttributes } from '../helpers/catalog.js';
import { eventually } from '../helpers/conditions.js';
import { request } from '../helpers/service-client.js';

const PASSWORD = 'local-stack-test-password-4Rk2';
const STARTUP_MS = 180_000; // a first start builds the service (npm) and runs initdb
const STOP_MS = 60_000;
const KEY = /sk_[A-Za-z0-9]{40}/;

interface Ports {
  http: number;
  pg: number;
  service: number;
  pooler: number;
}

interface UserStack {
  dir: string;
  ports: Ports;
  child: ChildProcess;
  /** stdout and stderr, line by line, in the order they arrived. */
  lines: string[];
  /** The exit code, once the process and every other holder of its output (npm's shell, tsx) are gone. */
  closed: Promise<number | null>;
}

const started: UserStack[] = [];

async function freshDir(name: string): Promise<{ dir: string; ports: Ports }> {
  const dir = mkdtempSync(join(tmpdir(), `pgprov-${name}-`));
  chmodSync(dir, 0o755); // the unprivileged Postgres user must reach it
  return { dir, ports: await freePorts() };
}

/** Every port a stack listens on, each free (none the defaults of .env, which a developer's own stack may hold). */
async function freePorts(): Promise<Ports> {
  return { http: await freePort(), pg: await freePort(), service: await freePort(), pooler: await freePort() };
}

/**
 * Starts the stack as a user would, in a process group of its own as a shell does for a job: with npm (the
 * build included) or as the built script. Does not wait for anything.
 */
function runStack(how: 'npm' | 'script', dir: string, ports: Ports, env: Record<string, string> = {}): UserStack {
  const environment: NodeJS.ProcessEnv = {
    ...process.env,
    STACK_DIR: dir,
    STACK_HTTP_PORT: String(ports.http),
    STACK_PG_PORT: String(ports.pg),
    STACK_SERVICE_PORT: String(ports.service),
    STACK_POOLER_PORT: String(ports.pooler),
    POSTGRES_PASSWORD: PASSWORD,
    DISK_RESERVE_MB: '0',
    ...env,
  };
  delete environment.NODE_TEST_CONTEXT;
  const child =
    how === 'npm'
      ? spawn('npm', ['--prefix', 'service', 'run', 'stack'], { cwd: REPO_ROOT, env: environment, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(process.execPath, ['--import', 'tsx', 'scripts/stack.ts'], { cwd: SERVICE_DIR, env: environment, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  for (const stream of [child.stdout!, child.stderr!]) createInterface({ input: stream }).on('line', (line) => lines.push(line));
  const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const stack = { dir, ports, child, lines, closed };
  started.push(stack);
  return stack;
}

async function waitForLine(stack: UserStack, pattern: RegExp, timeoutMs = STARTUP_MS): Promise<string> {
  let exited = false;
  void stack.closed.then(() => (exited = true));
  const found = await eventually(
    async () => stack.lines.find((line) => pattern.test(line)),
    (line) => line !== undefined || exited,
    timeoutMs,
  );
  if (found === undefined) assert.fail(`no line matching ${pattern}; the stack wrote:\n${stack.lines.join('\n')}`);
  return found;
}

async function startStack(how: 'npm' | 'script', name: string, env: Record<string, string> = {}): Promise<UserStack> {
  const { dir, ports } = await freshDir(name);
  const stack = runStack(how, dir, ports, env);
  await waitForLine(stack, /The local stack is up/);
  return stack;
}

/**
 * Every live process whose command line or environment names `dir` (npm, its shell, tsx, the stack script,
 * Postgres, nginx, and the service, whose DATABASE_HOST is $STACK_DIR/run), with all their descendants.
 */
function processesOf(dir: string): number[] {
  const parentOf = new Map<number, number>();
  const found = new Set<number>();
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (state === 'Z') continue; // exited, not yet reaped
      parentOf.set(pid, Number(ppid));
      const named = readFileSync(`/proc/${pid}/cmdline`, 'utf8') + readFileSync(`/proc/${pid}/environ`, 'utf8');
      if (named.includes(dir)) found.add(pid);
    } catch {
      // gone meanwhile
    }
  }
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, ppid] of parentOf) {
      if (!found.has(pid) && found.has(ppid)) {
        found.add(pid);
        grew = true;
      }
    }
  }
  return [...found];
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** What is still running of the stack in `dir`: its processes and its open ports. */
async function leftRunning(stack: UserStack): Promise<{ processes: number[]; openPorts: number[] }> {
  const openPorts: number[] = [];
  for (const port of Object.values(stack.ports)) if (await portOpen(port)) openPorts.push(port);
  return { processes: processesOf(stack.dir), openPorts };
}

async function assertNothingLeft(stack: UserStack): Promise<void> {
  const left = await eventually(() => leftRunning(stack), (l) => l.processes.length === 0 && l.openPorts.length === 0, STOP_MS);
  const described = left.processes.map((pid) => `${pid}: ${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ')}`);
  assert.deepEqual({ ...left, processes: described }, { processes: [], openPorts: [] }, 'nothing of the stack is left running');
}

/** A process's command line, its arguments joined by spaces ('' once it is gone). */
function commandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    return '';
  }
}

function adminKeyOf(stack: UserStack): string | undefined {
  return stack.lines.map(adminKeyInLogLine).find((key) => key !== undefined);
}

async function superuser<T>(stack: UserStack, work: (client: pg.Client) => Promise<T>, database = 'postgres'): Promise<T> {
  const client = new pg.Client({ host: '127.0.0.1', port: stack.ports.pg, user: 'postgres', password: PASSWORD, database });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/** JSON lines of the service's at level warn (40) or above. */
function warnings(lines: string[]): string[] {
  return lines.filter((line) => {
    try {
      return line.startsWith('{') && (JSON.parse(line) as { level?: number }).level! >= 40;
    } catch {
      return false;
    }
  });
}

after(() => {
  // Whatever happened, nothing started here outlives the tests: the process groups, then every process
  // naming a stack's directory.
  for (const stack of started) {
    try {
      process.kill(-stack.child.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
    for (const pid of processesOf(stack.dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  for (const dir of new Set(started.map((s) => s.dir))) rmSync(dir, { recursive: true, force: true });
});

describe('a first start, then a second stack beside it, then Ctrl-C', () => {
  let stack: UserStack;
  before(async () => {
    stack = await startStack('script', 'first');
  });

  it('says what it is doing while it initialises, and names every log by its path', () => {
    const upAt = stack.lines.findIndex((line) => /The local stack is up/.test(line));
    const progress = stack.lines.slice(0, upAt).filter((line) => !line.startsWith('{'));
    assert.ok(progress.some((line) => /initdb/.test(line)), `initdb is announced:\n${progress.join('\n')}`);
    for (const file of readdirSync(join(REPO_ROOT, 'init')).filter((f) => /\.(sh|sql)$/.test(f))) {
      assert.ok(progress.some((line) => line.includes(`init/${file}`)), `init/${file} is announced:\n${progress.join('\n')}`);
    }
    const ownLines = stack.lines.filter((line) => !line.startsWith('{'));
    const naming = ownLines.filter((line) => /\blogs?\b/i.test(line));
    assert.ok(naming.length > 0, 'the stack says where its logs are');
    for (const line of naming) assert.ok(line.includes(join(stack.dir, 'logs')), `a line naming a log names its path: ${line}`);
    for (const log of ['postgres.log', 'service.log', 'pgbouncer.log', 'nginx-error.log']) {
      assert.ok(ownLines.some((line) => line.includes(join(stack.dir, 'logs', log))), `${log} is named by its path`);
    }
  });

  it("makes the doors' TLS certificate on the first start, says so, and names the CA file apps need", () => {
    const upAt = stack.lines.findIndex((line) => /The local stack is up/.test(line));
    const progress = stack.lines.slice(0, upAt);
    const ca = join(stack.dir, 'tls', 'ca.crt');
    assert.ok(progress.some((line) => line.includes('certificate authority made') && line.includes(ca)), `the CA is announced:\n${progress.join('\n')}`);
    assert.match(readFileSync(ca, 'utf8'), /^-----BEGIN CERTIFICATE-----/);
    const after = stack.lines.slice(upAt);
    assert.ok(after.some((line) => /TLS CA certificate/.test(line) && line.includes(ca)), 'where the CA is, among where everything is');
    assert.ok(after.some((line) => /PgBouncer/.test(line) && line.includes(`127.0.0.1:${stack.ports.pooler}`)), "the apps' door and its port");
  });

  it('logs no warning on a first start', async () => {
    // The ready pool runs as soon as the service starts; once it has prepared a set, its first attempts are over.
    const sets = await eventually(
      () => superuser(stack, async (c) => (await readySetObjects(c)).databases.length),
      (count) => count > 0,
      STARTUP_MS,
    );
    assert.ok(sets > 0, 'the ready pool prepared a set');
    // Nor the service about its door: PgBouncer starts after the service (it reads the auth_file the service
    // writes), here and in compose, so a door not up yet at the service's start is expected, not a warning.
    assert.deepEqual(warnings(stack.lines), []);
    // PgBouncer warns of what it skips (a line of pgbouncer-hba.conf or pgbouncer.ini it cannot parse).
    const pgbouncerLog = readFileSync(join(stack.dir, 'logs', 'pgbouncer.log'), 'utf8');
    assert.match(pgbouncerLog, /process up: PgBouncer 1\.18/);
    assert.deepEqual(pgbouncerLog.split('\n').filter((line) => /\b(WARNING|ERROR|FATAL)\b/.test(line)), []);
  });

  it('keeps the service log in $STACK_DIR/logs/service.log (0600), so the admin key is never lost', () => {
    const key = adminKeyOf(stack);
    assert.ok(key, 'the admin key is printed');
    assert.equal(stack.lines.filter((line) => KEY.test(line)).length, 1, 'the key is printed once');
    const logs = join(stack.dir, 'logs');
    const file = join(logs, 'service.log');
    assert.ok(existsSync(file), `${file} exists`);
    assert.equal(statSync(logs).mode & 0o777, 0o700);
    for (const log of readdirSync(logs)) assert.equal(statSync(join(logs, log)).mode & 0o777, 0o600, `${log} is 0600`);
    const keyLines = readFileSync(file, 'utf8').split('\n').filter((line) => adminKeyInLogLine(line) !== undefined);
    assert.deepEqual(keyLines.map(adminKeyInLogLine), [key]);
  });

  it('refuses a second stack on the same STACK_DIR at once, naming what runs there, with no key', async () => {
    const second = runStack('script', stack.dir, await freePorts());
    const code = await second.closed;
    const output = second.lines.join('\n');
    assert.notEqual(code, 0, output);
    assert.doesNotMatch(output, KEY);
    assert.doesNotMatch(output, /stack is up/);
    for (const port of Object.values(stack.ports)) assert.match(output, new RegExp(`\\b${port}\\b`), `the running stack's port ${port} is named`);
    const pid = Number(/\bpid (\d+)/.exec(output)?.[1]);
    assert.ok(processesOf(stack.dir).includes(pid), `the running stack's pid is named: ${output}`);
    // The first stack is untouched: its key still provisions.
    const answer = await request(`http://127.0.0.1:${stack.ports.http}/provision`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ app_name: 'still_works', admin_key: adminKeyOf(stack) }),
    });
    assert.equal(answer.status, 201, answer.text);
  });

  it('refuses a second stack on the same ports at once, naming them, and starts nothing', async () => {
    const { dir } = await freshDir('second');
    const second = runStack('script', dir, stack.ports);
    const code = await second.closed;
    const output = second.lines.join('\n');
    assert.notEqual(code, 0, output);
    assert.doesNotMatch(output, KEY);
    assert.doesNotMatch(output, /stack is up/);
    assert.match(output, new RegExp(`\\b${stack.ports.http}\\b`), output);
    assert.equal(existsSync(join(dir, 'pgdata')), false, 'no data directory was made');
    assert.deepEqual(processesOf(dir), []);
  });

  it('stops quietly on Ctrl-C, saying what stopped', async () => {
    const from = stack.lines.length;
    process.kill(-stack.child.pid!, 'SIGINT'); // what the terminal does: the whole foreground process group
    await stack.closed;
    const printed = stack.lines.slice(from);
    assert.ok(printed.length <= 10, `a few lines after Ctrl-C, not ${printed.length}:\n${printed.join('\n')}`);
    assert.deepEqual(warnings(printed), []);
    for (const part of [/nginx/, /PgBouncer/, /service/, /Postgres/]) {
      assert.ok(printed.some((line) => part.test(line) && /stopped/.test(line)), `says that ${part.source} stopped:\n${printed.join('\n')}`);
    }
    await assertNothingLeft(stack);
  });
});

describe("settings, then SIGTERM to npm's process", () => {
  let stack: UserStack;
  before(async () => {
    stack = await startStack('npm', 'npm', { READY_POOL_SIZE: '0', APP_CONNECTION_LIMIT: '7', AUTH_MAX_FAILED_ATTEMPTS: '1' });
  });

  it('passes every service setting of the environment to the service', async () => {
    const provision = (adminKey: string | undefined) =>
      request(`http://127.0.0.1:${stack.ports.http}/provision`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ app_name: 'limited', admin_key: adminKey }),
      });
    const answer = await provision(adminKeyOf(stack));
    assert.equal(answer.status, 201, answer.text);
    const { limit, readySets } = await superuser(stack, async (c) => ({
      limit: (await roleAttributes(c, 'app_limited_user'))?.rolconnlimit,
      readySets: (await readySetObjects(c)).databases.length,
    }));
    assert.equal(limit, 7, 'APP_CONNECTION_LIMIT reached the service');
    // The pool starts preparing as soon as the service has started, before nginx: by now it would have begun.
    const poolEntries = await superuser(stack, async (c) => Number((await c.query('SELECT count(*) FROM ready_pool')).rows[0].count), 'provisioner');
    assert.deepEqual({ readySets, poolEntries }, { readySets: 0, poolEntries: 0 }, 'READY_POOL_SIZE=0 reached the service');
    // One wrong key is all this address may present: the second is refused as too many (by default, 401).
    assert.equal((await provision('sk_wrong')).status, 401);
    assert.equal((await provision('sk_wrong')).status, 429, 'AUTH_MAX_FAILED_ATTEMPTS=1 reached the service');
  });

  it("stops nginx, PgBouncer, the service and Postgres on SIGTERM to npm's process", async () => {
    const running = processesOf(stack.dir).map(commandLine);
    for (const part of [/nginx/, /pgbouncer/, /dist\/server\.js/, /postgres/]) assert.ok(running.some((line) => part.test(line)), `${part.source} is running:\n${running.join('\n')}`);
    process.kill(stack.child.pid!, 'SIGTERM');
    await assertNothingLeft(stack);
  });
});

describe('the stack script killed outright, a failed start', () => {
  it('takes nginx, PgBouncer, the service and Postgres with it when SIGKILLed, and starts again on the same STACK_DIR', async () => {
    const stack = await startStack('script', 'killed');
    assert.ok(processesOf(stack.dir).map(commandLine).some((line) => /pgbouncer/.test(line)), 'PgBouncer is running');
    const ca = readFileSync(join(stack.dir, 'tls', 'ca.crt'), 'utf8');
    process.kill(stack.child.pid!, 'SIGKILL');
    await assertNothingLeft(stack);
    const again = runStack('script', stack.dir, stack.ports);
    await waitForLine(again, /The local stack is up/);
    // Apps keep the CA they were given: the certificate is kept from one start to the next.
    assert.equal(readFileSync(join(stack.dir, 'tls', 'ca.crt'), 'utf8'), ca, 'the same CA after a restart');
    assert.ok(again.lines.some((line) => /certificate kept/.test(line)), again.lines.join('\n'));
    process.kill(again.child.pid!, 'SIGTERM');
    assert.equal(await again.closed, 0, again.lines.join('\n'));
    await assertNothingLeft(again);
  });

  // The service, and PgBouncer: without its door the stack hands out strings nobody can use.
  for (const [part, command, log] of [['service', 'dist/server.js', 'service.log'], ['pgbouncer', 'pgbouncer.ini', 'pgbouncer.log']] as const) {
    it(`stops the other parts and exits non-zero when one (${part}) dies on its own, so a supervisor can restart it`, { timeout: 120_000 }, async () => {
      const stack = await startStack('script', `${part}-dies`);
      const pid = processesOf(stack.dir).find((p) => commandLine(p).includes(command));
      assert.ok(pid, `${part} is running`);
      process.kill(pid, 'SIGKILL');
      assert.equal(await stack.closed, 1, stack.lines.join('\n'));
      const said = stack.lines.find((line) => line.includes(`${part} exited on its own`));
      assert.ok(said?.includes('killed by SIGKILL') && said.includes(join(stack.dir, 'logs', log)), stack.lines.join('\n'));
      await assertNothingLeft(stack);
    });
  }

  it('names the log to read, by its path, when a part fails to start', async () => {
    const { dir, ports } = await freshDir('failing');
    const stack = runStack('script', dir, ports, { APP_CONNECTION_LIMIT: 'many' });
    const code = await stack.closed;
    const output = stack.lines.join('\n');
    assert.notEqual(code, 0, output);
    assert.match(output, /APP_CONNECTION_LIMIT/, 'the service said which setting is wrong');
    assert.ok(output.includes(join(dir, 'logs', 'service.log')), `the service's log is named by its path:\n${output}`);
    await assertNothingLeft(stack);
  });
});
