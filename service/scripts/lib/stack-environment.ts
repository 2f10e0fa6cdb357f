// What `npm run stack` (scripts/stack.ts) reads and watches: the stack's settings from the environment and the repo's
// .env (the environment wins), and the npm that started it, whose exit must stop the stack (npm passes a SIGTERM
// only to its shell, which dies without passing it on).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseEnv } from 'node:util';
import { ConfigSchema } from '../../src/shared/config.js';
import { REPO_ROOT, StackError } from './local-stack.js';
import { processStat } from './stack-lock.js';

/** Service settings the stack sets itself so that its parts find each other (README: Without Docker). */
export const SET_BY_THE_STACK = ['HOST', 'PORT', 'DATABASE_HOST', 'DATABASE_PORT', 'POSTGRES_USER', 'POSTGRES_PASSWORD', 'SYSTEM_DATABASE', 'PUBLIC_DB_HOST', 'PUBLIC_DB_PORT', 'DIRECT_DB_HOST', 'DIRECT_DB_PORT', 'POOLER_AUTH_FILE', 'POOLER_HBA_TEMPLATE', 'POOLER_HBA_FILE', 'POOLER_DATABASES_FILE', 'POOLER_SERVER_HOST', 'POOLER_SERVER_PORT', 'POOLER_ADMIN_HOST', 'POOLER_ADMIN_PORT', 'TLS_CA_FILE'];

export function settingsFromEnvironment(): Record<string, string | undefined> {
  const envFile = join(REPO_ROOT, '.env');
  const fromFile = existsSync(envFile) ? parseEnv(readFileSync(envFile, 'utf8')) : {};
  return { ...fromFile, ...process.env };
}

export function port(env: Record<string, string | undefined>, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1 || value > 65535) throw new StackError(`${name} must be a port number, got ${JSON.stringify(raw)}`);
  return value;
}

/** Every setting of the service's schema that env holds, but those the stack sets itself. */
export function serviceSettings(env: Record<string, string | undefined>): Record<string, string> {
  const names = Object.keys(ConfigSchema.shape).filter((name) => !SET_BY_THE_STACK.includes(name));
  return Object.fromEntries(names.filter((name) => env[name] !== undefined).map((name) => [name, env[name]!]));
}

export interface Starter {
  pid: number;
  started: string;
  name: string;
}

function commandName(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return 'npm';
  }
}

function startedByNpmFor(pid: number, event: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(`npm_lifecycle_event=${event}`);
  } catch {
    return false;
  }
}

/**
 * The processes npm put between itself and this script (its shell, tsx: they carry this script's
 * npm_lifecycle_event in their environment), and npm itself. Empty when npm did not start the script.
 */
export function npmAndItsLayers(): Starter[] {
  const event = process.env.npm_lifecycle_event;
  const chain: Starter[] = [];
  for (let pid = process.ppid; event && pid > 1; ) {
    const stat = processStat(pid);
    if (!stat) break;
    chain.push({ pid, started: stat.started, name: commandName(pid) });
    if (!startedByNpmFor(pid, event)) break; // npm itself
    pid = stat.ppid;
  }
  return chain;
}

/** Calls `onGone` once, when one of `starters` has exited. */
export function watchStarters(starters: Starter[], onGone: (starter: Starter) => void): void {
  if (starters.length === 0) return;
  const timer = setInterval(() => {
    const gone = starters.find(({ pid, started }) => processStat(pid)?.started !== started);
    if (!gone) return;
    clearInterval(timer);
    onGone(gone);
  }, 250);
  timer.unref();
}
