// The apps' door (PgBouncer) as a test looks at it: its admin console, reached the way the service reaches it
// (over PgBouncer's socket, as pgprov_pooler_admin), the server sessions Postgres holds for an app's role, the
// service's /metrics, PgBouncer's log, and a crowd of hostile clients at its port.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as connectTcp, type Socket } from 'node:net';
import { connect as connectTls } from 'node:tls';
import pg from 'pg';
import { poolerAdminPassword } from '../../src/db/pooler/pgbouncer.js';
import { eventually } from './conditions.js';
import { request } from './service-client.js';
import type { TestStack } from './stack.js';

export type Row = Record<string, unknown>;

/** Runs admin console commands (simple query protocol: the only one the console speaks); always closes the connection. */
export async function poolerConsole<T>(t: TestStack, work: (command: (sql: string) => Promise<Row[]>) => Promise<T>): Promise<T> {
  const pgbouncer = t.stack.pgbouncer;
  if (!pgbouncer) throw new Error('the stack has no PgBouncer');
  const client = new pg.Client({
    host: pgbouncer.paths.socketDir,
    port: t.stack.settings.poolerPort,
    user: 'pgprov_pooler_admin',
    password: poolerAdminPassword(t.stack.postgresPassword),
    database: 'pgbouncer',
    connectionTimeoutMillis: 10_000,
  });
  client.on('error', () => {});
  await client.connect();
  try {
    return await work(async (sql) => (await client.query({ text: sql, queryMode: 'simple' } as pg.QueryConfig)).rows as Row[]);
  } finally {
    await client.end().catch(() => {});
  }
}

/** SHOW CONFIG, as setting name → value. */
export const poolerConfig = (t: TestStack) =>
  poolerConsole(t, async (command) => new Map((await command('SHOW CONFIG')).map((row) => [String(row.key), String(row.value)])));

/** SHOW POOLS' row for `database` (undefined while PgBouncer has no pool for it). */
export const poolOf = (t: TestStack, database: string) => poolerConsole(t, async (command) => (await command('SHOW POOLS')).find((row) => row.database === database));

/** How many client connections PgBouncer holds for `database` (SHOW CLIENTS: logged in, whatever their state). */
export const clientsOf = (t: TestStack, database: string) => poolerConsole(t, async (command) => (await command('SHOW CLIENTS')).filter((row) => row.database === database).length);

/** How many client connections PgBouncer holds that have not logged in yet (SHOW LISTS: login_clients). */
export const loginsInProgress = (t: TestStack) =>
  poolerConsole(t, async (command) => Number((await command('SHOW LISTS')).find((row) => row.list === 'login_clients')?.items));

/** How many sessions Postgres has for `role` (pg_stat_activity, as the superuser sees it). */
export const serverSessionsOf = (t: TestStack, role: string) =>
  t.superuser(async (db) => Number((await db.query('SELECT count(*) AS n FROM pg_stat_activity WHERE usename = $1', [role])).rows[0].n));

/**
 * Postgres's client backends: all of them, and those that are not the superuser's (the service's own pool and the
 * test's checks): app roles' sessions (PgBouncer's server connections, the direct door) and the service's agents.
 * The counting session itself is one of `all`.
 */
export const clientBackends = (t: TestStack) =>
  t.superuser(async (db) => {
    const { rows } = await db.query(
      `SELECT count(*) AS all, count(*) FILTER (WHERE usename IS DISTINCT FROM 'postgres') AS not_service
         FROM pg_stat_activity WHERE backend_type = 'client backend'`,
    );
    return { all: Number(rows[0].all), notService: Number(rows[0].not_service) };
  });

/** PgBouncer's log so far ($STACK_DIR/logs/pgbouncer.log: its stderr, kept across its restarts). */
export const poolerLog = (t: TestStack) => readFileSync(join(t.stack.paths.logs, 'pgbouncer.log'), 'utf8');

// --- /metrics -------------------------------------------------------------------------------------------------

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The service's /metrics (its own port: nginx does not route it), parsed into samples. */
export async function metrics(t: TestStack): Promise<Sample[]> {
  const response = await request(`${t.stack.serviceUrl}/metrics`);
  if (response.status !== 200) throw new Error(`/metrics answered ${response.status}`);
  return response.text.split('\n').flatMap((line) => {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) return [];
    const labels = Object.fromEntries([...(match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((label) => [label[1]!, label[2]!]));
    return [{ name: match[1]!, labels, value: Number(match[3]) }];
  });
}

/** The value of the sample `name` whose labels include `labels`; undefined if there is none. */
export function sampleValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((sample) => sample.name === name && Object.entries(labels).every(([key, value]) => sample.labels[key] === value))?.value;
}

// --- hostile clients ------------------------------------------------------------------------------------------

/**
 * What each hostile client does before it falls silent. Each stops at a point of the login where PgBouncer waits
 * for it (a half-sent startup packet is no such point: PgBouncer refuses it at once).
 */
export type HostileKind =
  /** Connects, sends nothing. */
  | 'idle'
  /** Asks for TLS (SSLRequest), is told yes, never starts the TLS handshake. */
  | 'sslRequest'
  /** Completes the TLS handshake, never sends a startup packet. */
  | 'tlsSilent'
  /** Over TLS, sends a startup packet for a real app's role and database, is asked for SCRAM, never answers. */
  | 'saslAsked'
  /** Goes one step further: sends SCRAM's client-first message, gets the server's challenge, never sends a proof. */
  | 'scramStarted';

export const HOSTILE_KINDS: HostileKind[] = ['idle', 'sslRequest', 'tlsSilent', 'saslAsked', 'scramStarted'];

export interface HostileCrowdOptions {
  port: number;
  /** How many clients of each kind to hold open at once. */
  counts: Record<HostileKind, number>;
  /** The role and database the clients that get that far name. */
  login: { user: string; database: string };
  /** The crowd lets go of everything by itself after this long, whatever the test does. */
  deadlineMs: number;
}

export interface HostileCrowd {
  /** How many of each kind are now at the point where they fall silent. */
  paused(): Record<HostileKind, number>;
  /** Connections PgBouncer closed by itself (its client_login_timeout), each reopened. */
  closedByServer(): number;
  /** Resolves true once every kind has all its clients at their pause at the same moment (false if not within `timeoutMs`). */
  allPaused(timeoutMs: number): Promise<boolean>;
  /** Closes every connection and stops reopening; resolves once all are closed. */
  release(): Promise<void>;
}

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/** A frontend message: type byte, int32 length (itself included), body; no type byte for the startup packet. */
function message(type: string | undefined, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  const length = Buffer.alloc(4);
  length.writeInt32BE(body.length + 4);
  return Buffer.concat([...(type ? [Buffer.from(type)] : []), length, body]);
}

const startupPacket = (user: string, database: string) => message(undefined, Buffer.from([0, 3, 0, 0]), Buffer.from(`user\0${user}\0database\0${database}\0\0`));

/** SASLInitialResponse: SCRAM-SHA-256's client-first message (no channel binding), with a nonce of our own. */
function scramClientFirst(): Buffer {
  const data = Buffer.from(`n,,n=,r=${randomBytes(18).toString('base64')}`);
  const length = Buffer.alloc(4);
  length.writeInt32BE(data.length);
  return message('p', Buffer.from('SCRAM-SHA-256\0'), length, data);
}

/** Whether `chunk` starts with an Authentication message ('R') of `code` (10: SASL asked, 11: SASL challenge). */
const isAuthentication = (chunk: Buffer, code: number) => chunk.length >= 9 && chunk[0] === 0x52 && chunk.readInt32BE(5) === code;

/**
 * Holds hostile clients open at 127.0.0.1:`port` (and nowhere else), each kind at its count: a client that
 * PgBouncer closes (client_login_timeout) is replaced, as a real flood would, until release() or the deadline.
 */
export function hostileCrowd(options: HostileCrowdOptions): HostileCrowd {
  const { port, counts, login, deadlineMs } = options;
  const open = new Set<Socket>();
  const pausedNow = Object.fromEntries(HOSTILE_KINDS.map((kind) => [kind, 0])) as Record<HostileKind, number>;
  let closedByServer = 0;
  let released = false;

  const openOne = (kind: HostileKind): void => {
    if (released) return;
    let paused = false;
    const pause = () => {
      if (paused) return;
      paused = true;
      pausedNow[kind]++;
    };
    const socket = connectTcp({ host: '127.0.0.1', port });
    open.add(socket);
    socket.on('error', () => {});
    socket.once('close', () => {
      open.delete(socket);
      if (paused) pausedNow[kind]--;
      if (released) return;
      closedByServer++;
      // Reopened as a flood would, a little later: a refused port must not spin this process.
      setTimeout(() => openOne(kind), 50).unref();
    });
    socket.once('connect', () => {
      if (kind === 'idle') {
        // Flowing, though nothing is expected: a socket nothing reads never sees the server's end, and would not be replaced.
        socket.resume();
        return pause();
      }
      socket.write(SSL_REQUEST);
      socket.once('data', (answer: Buffer) => {
        if (answer[0] !== 0x53) return void socket.destroy(); // 'S': PgBouncer offers TLS
        if (kind === 'sslRequest') {
          socket.resume();
          return pause();
        }
        // The pooler's certificate is not what is attacked here: accepted, as a careless client would.
        const tls = connectTls({ socket, rejectUnauthorized: false });
        tls.on('error', () => socket.destroy());
        tls.once('close', () => socket.destroy());
        tls.once('secureConnect', () => {
          tls.resume();
          if (kind === 'tlsSilent') return pause();
          tls.write(startupPacket(login.user, login.database));
        });
        tls.on('data', (chunk: Buffer) => {
          if (isAuthentication(chunk, 10)) {
            if (kind === 'saslAsked') return pause();
            tls.write(scramClientFirst());
          } else if (isAuthentication(chunk, 11) && kind === 'scramStarted') {
            pause();
          } else {
            socket.destroy(); // anything else (an error): not the pause this kind is for
          }
        });
      });
    });
  };

  for (const kind of HOSTILE_KINDS) for (let i = 0; i < counts[kind]; i++) openOne(kind);

  const release = async (): Promise<void> => {
    released = true;
    clearTimeout(deadline);
    const closing = [...open].map((socket) => new Promise<void>((resolve) => socket.once('close', () => resolve())));
    for (const socket of open) socket.destroy();
    await Promise.all(closing);
  };
  const deadline = setTimeout(() => void release(), deadlineMs);
  deadline.unref();

  return {
    paused: () => ({ ...pausedNow }),
    closedByServer: () => closedByServer,
    allPaused: (timeoutMs) => eventually(async () => HOSTILE_KINDS.every((kind) => pausedNow[kind] === counts[kind]), (done) => done, timeoutMs),
    release,
  };
}
