// What every part of the local stack (Postgres, the service, nginx) is started and stopped with: finding its
// program, starting it in a session of its own tied to this process by the kernel (setpriv --pdeathsig: if this
// process dies, however it dies, the part is told to stop), waiting until it answers, stopping it, and its logs,
// readable by their owner only. Used by scripts/lib/local-postgres.ts and scripts/lib/local-stack.ts.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, createWriteStream, existsSync, type WriteStream } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

/** The service's directory (service/) and the repo's top, where the parts' configuration files are. */
export const SERVICE_DIR = resolve(fileURLToPath(import.meta.url), '../../..');
export const REPO_ROOT = resolve(SERVICE_DIR, '..');

export class StackError extends Error {
  override name = 'StackError';
}

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

export interface OsUser {
  uid: number;
  gid: number;
}

/** The ids of an OS user (Postgres refuses to run as root: it runs as this one when the stack runs as root). */
export function osUser(name: string): OsUser {
  const id = (flag: string) => spawnSync('id', [flag, name], { encoding: 'utf8' });
  const uid = id('-u');
  const gid = id('-g');
  if (uid.status !== 0 || gid.status !== 0) {
    throw new StackError(`Postgres refuses to run as root and the OS user '${name}' does not exist: create it (useradd --system ${name}) or set STACK_PG_OS_USER`);
  }
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

export function findProgram(name: string, packageName: string): string {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/usr/local/sbin', '/sbin', '/usr/bin', '/bin'])) {
    const candidate = join(dir, name);
    if (dir && existsSync(candidate)) return candidate;
  }
  throw new StackError(`${name} not found: install it (Debian/Ubuntu: apt-get install -y ${packageName})`);
}

/** Waits for `check` to resolve, retrying until `timeoutMs`; fails early if `child` exits. `log` is where it writes. */
export async function waitFor(what: string, check: () => Promise<boolean>, child: ChildProcess, log: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new StackError(`${what} exited (code ${child.exitCode ?? child.signalCode}) before it was ready; see ${log}`);
    }
    if (await check().catch(() => false)) return;
    await sleep(100);
  }
  throw new StackError(`${what} was not ready after ${timeoutMs / 1000} s; see ${log}`);
}

/** Parts asked to stop: their exit is expected (see StackSettings.onPartExit). */
const stopRequested = new WeakSet<ChildProcess>();

export function stopWasRequested(child: ChildProcess): boolean {
  return stopRequested.has(child);
}

/** Stops `child` with `signal` (SIGKILL after `timeoutMs`); false if it was not running. */
export async function stopChild(child: ChildProcess | undefined, signal: NodeJS.Signals, timeoutMs = 15_000): Promise<boolean> {
  if (child) stopRequested.add(child);
  if (!child || child.exitCode !== null || child.signalCode !== null) return false;
  const exited = once(child, 'exit');
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await exited;
  clearTimeout(timer);
  return true;
}

/** How a part is started: a command and its arguments, run in a session of its own. */
export type SpawnPart = (command: string, args: string[], options: SpawnOptions) => ChildProcess;

/**
 * Starts a part in a session of its own (detached), through util-linux's setpriv, which asks the kernel to
 * send the part `onOrphaned` when this process dies and then execs it (the part keeps setpriv's pid).
 */
export function spawnTied(onOrphaned: NodeJS.Signals, command: string, args: string[], options: SpawnOptions): ChildProcess {
  const setpriv = findProgram('setpriv', 'util-linux');
  return spawn(setpriv, ['--pdeathsig', onOrphaned, '--', command, ...args], { ...options, detached: true });
}

/** A log in `dir`, readable by its owner only (logs can name apps, roles and clients); appended to. */
export function ownerOnlyLog(dir: string, name: string): WriteStream {
  const path = join(dir, name);
  const stream = createWriteStream(path, { flags: 'a', mode: 0o600 });
  stream.once('open', () => chmodSync(path, 0o600)); // a log made by an older version may be world-readable
  return stream;
}
