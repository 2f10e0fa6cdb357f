// The benchmark's section 8: the apps' door, PgBouncer (pgbouncer.ini: transaction pooling, 2 server connections
// per app), against Postgres's own port (the direct door), side by side in the same run, with pgbench
// (scripts/lib/pgbench.ts). It runs on a stack of its own with the repo's postgres.conf and pgbouncer.ini unchanged
// (max_connections = 50, 3 of them reserved): the 1 GB settings the pooler is sized for, which the other sections'
// 100 connections would hide. Three figures:
//   a. many clients: apps × clients each through the pooler, running pgbench's TPC-B-like script, against the
//      same script straight to Postgres with only as many clients as Postgres admits;
//   b. connection setup: a new connection (TLS, SCRAM) per transaction, both ways, and whose CPU it costs;
//   c. PgBouncer's memory with every client of (a) connected, against compose's mem_limit for it.
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { parse as parseYaml } from 'yaml';
import { poolerAdminPassword } from '../../../src/db/pooler/pgbouncer.js';
import { POOLER_ADMIN_USER } from '../../../src/shared/object-names.js';
import { REPO_ROOT, type LocalStack } from '../local-stack.js';
import { pgbenchInit, pgbenchRun, type PgbenchResult, type PgbenchTarget } from '../pgbench.js';
import { cpuTime, rssBytes } from '../process-stats.js';
import type { BenchContext } from './context.js';
import { summarize, type Summary } from './statistics.js';

/** pgbench's protocol on both doors: extended, with unnamed statements, as drivers send parameters (named prepared statements do not survive transaction pooling in PgBouncer 1.18). */
export const PGBENCH_PROTOCOL = 'extended';

/**
 * Where the CPU went during a run's measured stretch, per transaction, in microseconds: the clients (every app's
 * pgbench), PgBouncer, Postgres (all its processes), the kernel's interrupt work (irq and softirq: loopback
 * networking among it), and the rest of the machine's busy time (other processes: the service, and whatever else
 * this shared machine runs); and how busy its cores were (1 = all of them).
 */
export interface TransactionCpu {
  clients: number;
  pgbouncer: number;
  postgres: number;
  interrupts: number;
  rest: number;
  machineBusy: number;
}

/** One door's run of (a): every app's pgbench at once. */
export interface DoorRun {
  apps: number;
  clientsPerApp: number;
  /** From the start until every app's clients were all connected and running (each app had finished a transaction), in seconds. */
  connectedAfterSeconds: number;
  /** The stretch from then until the first app's pgbench stopped, in seconds. */
  windowSeconds: number;
  /** Transactions that ended in that stretch, per second, all apps together. */
  tps: number;
  /** Latency of those transactions, in ms. */
  latency: Summary;
  /** Clients refused a connection or that lost their session (pgbench's own reports). */
  refused: number;
  /** Clients that finished at least one transaction. */
  served: number;
  failedTransactions: number;
  /** What pgbench said when an app's run failed. */
  errors: string[];
  cpu: TransactionCpu;
}

/** CPU time per connection, in microseconds: the client's (pgbench), PgBouncer's, Postgres's (its processes, those that ended included). */
export interface ConnectionCpu {
  client: number;
  pgbouncer: number;
  postgres: number;
}

/** One door's run of (b): pgbench -C -S. */
export interface ConnectRun {
  clients: number;
  connections: number;
  /** Transactions per second, each with its own connection (pgbench's figure, including reconnection times). */
  tps: number;
  connectionMs: number;
  latencyAverageMs: number;
  refused: number;
  cpu: ConnectionCpu;
}

export interface PoolerResults {
  protocol: string;
  apps: number;
  clientsPerApp: number;
  seconds: number;
  rampSeconds: number;
  /** Postgres's slots, read from the server before the direct runs: who may have how many. */
  admission: { maxConnections: number; reserved: number; superuserOpen: number; connectionLimit: number; perApp: number };
  /** Rounds of (a), each the direct door then the pooler. */
  rounds: Array<{ direct: DoorRun; pooler: DoorRun }>;
  connect: { clients: number; seconds: number; rounds: Array<{ direct: ConnectRun; pooler: ConnectRun }> };
  memory: {
    /** PgBouncer's resident set before any app connected, and its highest during the pooler's runs, with its clients then (SHOW POOLS). */
    idleRss: number;
    peakRss: number;
    clientsAtPeak: number;
    mostClients: number;
    /** The open-files limit of PgBouncer's process (its clients, its server connections). */
    openFilesLimit: number;
    /** docker-compose.yml's mem_limit of each service, in bytes, and PgBouncer's open-files limit there. */
    composeLimits: Record<string, number>;
    composeOpenFiles: number;
    maxClientConn: number;
  };
}

/** pgbouncer.ini's value of `name`. */
function poolerSetting(name: string): number {
  return Number(new RegExp(`^${name} = (\\d+)`, 'm').exec(readFileSync(join(REPO_ROOT, 'pgbouncer.ini'), 'utf8'))?.[1] ?? NaN);
}

/** docker-compose.yml's mem_limit of each service that has one, in bytes, and the open-files limit it gives PgBouncer. */
export function composeLimits(): { memory: Record<string, number>; pgbouncerOpenFiles: number } {
  type Service = { mem_limit?: string | number; ulimits?: { nofile?: number | { soft?: number } } };
  const compose = parseYaml(readFileSync(join(REPO_ROOT, 'docker-compose.yml'), 'utf8')) as { services: Record<string, Service> };
  const units: Record<string, number> = { b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30 };
  const memory: Record<string, number> = {};
  for (const [name, service] of Object.entries(compose.services)) {
    const match = /^(\d+)([bkmg]?)$/i.exec(String(service.mem_limit ?? ''));
    if (match) memory[name] = Number(match[1]) * units[(match[2] || 'b').toLowerCase()]!;
  }
  const nofile = compose.services.pgbouncer?.ulimits?.nofile;
  return { memory, pgbouncerOpenFiles: Number(typeof nofile === 'object' ? nofile.soft : nofile) };
}

/** The soft limit on open files of process `pid` (/proc/<pid>/limits). */
function openFilesLimit(pid: number | undefined): number {
  if (!pid) return NaN;
  try {
    return Number(/^Max open files\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))?.[1] ?? NaN);
  } catch {
    return NaN;
  }
}

/** CPU time (user + system, µs) of Postgres's processes now, and of those its postmaster has reaped (backends that ended: cutime, cstime). */
function postgresCpuUs(stack: LocalStack): number {
  let total = 0;
  for (const pid of stack.postgresProcessIds()) {
    const own = cpuTime(pid);
    if (Number.isFinite(own.userUs)) total += own.userUs + own.systemUs;
  }
  try {
    const fields = readFileSync(`/proc/${stack.postgresPid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    total += ((Number(fields[13]) + Number(fields[14])) * 1_000_000) / 100; // USER_HZ
  } catch {
    return NaN;
  }
  return total;
}

/** The machine's CPU time, busy, in interrupts, and in all (every core), in microseconds (/proc/stat). */
function machineCpuUs(): { busy: number; interrupts: number; total: number } {
  // user nice system idle iowait irq softirq steal
  const ticks = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = ticks.reduce((sum, x) => sum + x, 0);
  const idle = ticks[3]! + ticks[4]!;
  const us = (n: number) => (n * 1_000_000) / 100; // USER_HZ
  return { busy: us(total - idle), interrupts: us(ticks[5]! + ticks[6]!), total: us(total) };
}

interface CpuSample {
  atUs: number;
  clients: number;
  pgbouncer: number;
  postgres: number;
  machine: { busy: number; interrupts: number; total: number };
}

/** The CPU used so far by the pgbench processes `pids`, PgBouncer, Postgres and the machine. */
function cpuSample(stack: LocalStack, pids: number[]): CpuSample {
  const total = (pid: number | undefined) => {
    const t = cpuTime(pid);
    return t.userUs + t.systemUs;
  };
  return { atUs: Date.now() * 1000, clients: pids.reduce((sum, pid) => sum + total(pid), 0), pgbouncer: total(stack.pgbouncer?.pid), postgres: postgresCpuUs(stack), machine: machineCpuUs() };
}

/** PgBouncer's admin console, as the service opens it (its socket, the admin user, the password derived from the superuser's). */
async function adminConsole(stack: LocalStack): Promise<pg.Client> {
  const client = new pg.Client({
    host: stack.pgbouncer!.paths.socketDir,
    port: stack.settings.poolerPort,
    user: POOLER_ADMIN_USER,
    password: poolerAdminPassword(stack.postgresPassword),
    database: 'pgbouncer',
    connectionTimeoutMillis: 5_000,
  });
  client.on('error', () => {});
  await client.connect();
  return client;
}

/** Clients logged in to the apps' databases (SHOW POOLS: active and waiting; the console's own excluded). */
async function appClients(admin: pg.Client): Promise<number> {
  const { rows } = await admin.query<{ database: string; cl_active: string; cl_waiting: string }>('SHOW POOLS');
  return rows.filter((row) => row.database !== 'pgbouncer').reduce((sum, row) => sum + Number(row.cl_active) + Number(row.cl_waiting), 0);
}

/** Runs `work` over `items`, `concurrency` at a time. */
async function eachLimited<T>(items: T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) await work(items[next++]!);
    }),
  );
}

// Reduced, not spread: a run logs far more transactions than a call takes arguments.
const lowest = (values: number[]) => values.reduce((a, b) => Math.min(a, b), Infinity);
const highest = (values: number[]) => values.reduce((a, b) => Math.max(a, b), -Infinity);

/** Every app's pgbench at once, through one door, for seconds + rampSeconds; the figures over the stretch when all of them ran. */
async function doorRun(stack: LocalStack, targets: PgbenchTarget[], clientsPerApp: number, seconds: number, logDir: string, label: string): Promise<DoorRun> {
  mkdirSync(logDir, { recursive: true });
  const startedUs = Date.now() * 1000;
  // The CPU of each part, sampled while the run lasts (every pgbench process's, read while it runs).
  const pids: number[] = [];
  const samples: CpuSample[] = [];
  const sampling = { done: false };
  const sampler = (async () => {
    while (!sampling.done) {
      samples.push(cpuSample(stack, pids));
      await sleep(250);
    }
  })();
  let runs: PgbenchResult[];
  try {
    runs = await Promise.all(
      targets.map((target, i) =>
        pgbenchRun(target, { script: 'tpcb-like', clients: clientsPerApp, seconds, protocol: PGBENCH_PROTOCOL, logPrefix: join(logDir, `${label}_${i}`), onStart: (pid) => pids.push(pid) }),
      ),
    );
  } finally {
    sampling.done = true;
    await sampler;
  }
  // From the moment every app's pgbench had finished a transaction (one thread connects all of an app's clients
  // before any of them runs, so all were connected by then) to the moment the first of them stopped.
  const ran = runs.map((run) => run.transactions.map((t) => t.endUs)).filter((ends) => ends.length > 0);
  let from = ran.length === runs.length ? highest(ran.map(lowest)) : NaN;
  let to = lowest(ran.map(highest));
  const connectedAfterSeconds = (from - startedUs) / 1e6;
  if (!(to > from)) {
    // No stretch when all ran (an app never got going, or the run was too short): the whole of it instead.
    from = lowest(ran.map(lowest));
    to = highest(ran.map(highest));
  }
  const inWindow = runs.flatMap((run) => run.transactions.filter((t) => t.latencyUs !== null && t.endUs >= from && t.endUs <= to));
  const windowSeconds = (to - from) / 1e6;
  // CPU per transaction between the first and the last sample inside the stretch (while every pgbench still ran).
  const inside = samples.filter((x) => x.atUs >= from && x.atUs <= to);
  const first = inside[0];
  const last = inside.at(-1);
  const between = first && last ? inWindow.filter((t) => t.endUs > first.atUs && t.endUs <= last.atUs).length : 0;
  const per = (value: (x: CpuSample) => number) => (first && last && between > 0 ? (value(last) - value(first)) / between : NaN);
  const pgbouncer = per((x) => x.pgbouncer);
  const postgres = per((x) => x.postgres);
  const clients = per((x) => x.clients);
  const interrupts = per((x) => x.machine.interrupts);
  const cpu: TransactionCpu = {
    clients,
    pgbouncer,
    postgres,
    interrupts,
    rest: per((x) => x.machine.busy) - clients - pgbouncer - postgres - interrupts,
    machineBusy: first && last ? (last.machine.busy - first.machine.busy) / (last.machine.total - first.machine.total) : NaN,
  };
  return {
    apps: targets.length,
    clientsPerApp,
    connectedAfterSeconds,
    windowSeconds,
    tps: windowSeconds > 0 ? inWindow.length / windowSeconds : NaN,
    latency: summarize(inWindow.map((t) => t.latencyUs! / 1000)),
    refused: runs.reduce((sum, run) => sum + run.refused, 0),
    served: runs.reduce((sum, run) => sum + new Set(run.transactions.filter((t) => t.latencyUs !== null).map((t) => t.client)).size, 0),
    failedTransactions: runs.reduce((sum, run) => sum + (Number.isFinite(run.failedTransactions) ? run.failedTransactions : 0), 0),
    errors: runs.flatMap((run, i) => run.errors.map((line) => `app ${i}: ${line}`)).slice(0, 5),
    cpu,
  };
}

/** pgbench -C -S: a new connection per transaction; the rate, and the CPU each connection cost each process. */
async function connectRun(stack: LocalStack, target: PgbenchTarget, clients: number, seconds: number): Promise<ConnectRun> {
  const pgbouncerBefore = cpuTime(stack.pgbouncer?.pid);
  const postgresBefore = postgresCpuUs(stack);
  const run = await pgbenchRun(target, { script: 'select-only', clients, seconds, protocol: PGBENCH_PROTOCOL, connectPerTransaction: true });
  const pgbouncerAfter = cpuTime(stack.pgbouncer?.pid);
  const postgresAfter = postgresCpuUs(stack);
  if (run.exitCode !== 0) throw new Error(`pgbench -C failed (exit ${run.exitCode}): ${run.errors.join(' / ')}`);
  const connections = run.processed;
  return {
    clients,
    connections,
    tps: run.tps,
    connectionMs: run.connectionMs,
    latencyAverageMs: run.latencyAverageMs,
    refused: run.refused,
    cpu: {
      client: run.cpuUs / connections,
      pgbouncer: (pgbouncerAfter.userUs + pgbouncerAfter.systemUs - pgbouncerBefore.userUs - pgbouncerBefore.systemUs) / connections,
      postgres: (postgresAfter - postgresBefore) / connections,
    },
  };
}

/** Ends the server connections PgBouncer keeps for the apps (idle after its runs), so that the direct door finds Postgres's slots free. */
async function freeAppSlots(ctx: BenchContext): Promise<void> {
  const appSessions = `SELECT a.pid FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid WHERE a.backend_type = 'client backend' AND NOT r.rolsuper`;
  await ctx.floorClient.query(`SELECT pg_terminate_backend(pid) FROM (${appSessions}) s`);
  for (let i = 0; i < 50 && (await ctx.floorClient.query(appSessions)).rows.length > 0; i++) await sleep(100);
}

/** Section 8, on `ctx` (a stack with the repo's postgres.conf and pgbouncer.ini unchanged). */
export async function pooler(ctx: BenchContext): Promise<PoolerResults> {
  const { sizes, stack } = ctx;
  const apps = sizes.poolerApps;
  const clientsPerApp = sizes.poolerClientsPerApp;
  const runSeconds = sizes.poolerSeconds + sizes.poolerRampSeconds;
  ctx.log(`8. the apps' door: ${apps} apps × ${clientsPerApp} clients through PgBouncer, against Postgres direct`);
  const pgbouncerPid = stack.pgbouncer?.pid;
  const maxClientConn = poolerSetting('max_client_conn');
  const openFiles = openFilesLimit(pgbouncerPid);
  // Each client is a file descriptor of PgBouncer's (and each server connection one more).
  if (!(openFiles > apps * clientsPerApp + apps * 2 + 20)) throw new Error(`PgBouncer may open ${openFiles} files, fewer than its ${apps * clientsPerApp} clients need: raise ulimit -n`);
  const idleRss = rssBytes(pgbouncerPid);
  const admin = await adminConsole(stack);
  ctx.defer(() => admin.end());

  // The apps, each with pgbench's tables (scale 1) made through the direct door.
  const pooled: PgbenchTarget[] = [];
  const direct: PgbenchTarget[] = [];
  for (let i = 0; i < apps; i++) {
    const strings = await ctx.provisionForStrings(ctx.nextName('door'));
    pooled.push({ connectionString: strings.connection_string, caFile: ctx.caFile });
    direct.push({ connectionString: strings.direct_connection_string, caFile: ctx.caFile });
  }
  ctx.log(`   pgbench -i -s 1 in ${apps} databases`);
  await eachLimited(direct, 2, (target) => pgbenchInit(target, 1));

  // How many clients Postgres admits straight to its port: max_connections less the superuser's reserved slots
  // less the superuser connections open now (the service's own, and this benchmark's one), shared evenly by the
  // apps, within each app role's CONNECTION LIMIT (and no more than the pooler's clients per app).
  const { rows } = await ctx.floorClient.query<{ max: number; reserved: number; superuser: number }>(
    `SELECT current_setting('max_connections')::int AS max, current_setting('superuser_reserved_connections')::int AS reserved,
            (SELECT count(*)::int FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid WHERE a.backend_type = 'client backend' AND r.rolsuper) AS superuser`,
  );
  const { max, reserved, superuser } = rows[0]!;
  const perApp = Math.min(ctx.limits.connectionLimit, clientsPerApp, Math.floor((max - reserved - superuser) / apps));
  if (perApp < 1) throw new Error(`Postgres admits no direct client per app (${max} - ${reserved} - ${superuser} over ${apps} apps)`);

  const logDir = join(stack.settings.stackDir, 'pgbench-logs');
  const memory = { peakRss: 0, clientsAtPeak: 0, mostClients: 0 };
  const rounds: PoolerResults['rounds'] = [];
  for (let round = 0; round < sizes.poolerRounds; round++) {
    await freeAppSlots(ctx);
    ctx.log(`   round ${round + 1}: direct, ${apps} × ${perApp} clients, ${runSeconds} s`);
    const directRun = await doorRun(stack, direct, perApp, runSeconds, logDir, `direct_${round}`);
    ctx.log(`   round ${round + 1}: pooler, ${apps} × ${clientsPerApp} clients, ${runSeconds} s`);
    // PgBouncer's memory and its clients, sampled while the pooler's run lasts.
    const sampling = { done: false };
    const sampler = (async () => {
      while (!sampling.done) {
        const clients = await appClients(admin);
        const rss = rssBytes(pgbouncerPid);
        memory.mostClients = Math.max(memory.mostClients, clients);
        if (rss > memory.peakRss) Object.assign(memory, { peakRss: rss, clientsAtPeak: clients });
        await sleep(250);
      }
    })();
    try {
      rounds.push({ direct: directRun, pooler: await doorRun(stack, pooled, clientsPerApp, runSeconds, logDir, `pooler_${round}`) });
    } finally {
      sampling.done = true;
      await sampler;
    }
  }

  // (b) Connection setup: one app, a few clients, a new connection per transaction, the doors alternating.
  const connectRounds: PoolerResults['connect']['rounds'] = [];
  for (let round = 0; round < sizes.connectRounds; round++) {
    ctx.log(`   connection setup, round ${round + 1}`);
    await freeAppSlots(ctx);
    const directConnect = await connectRun(stack, direct[0]!, sizes.connectClients, sizes.connectSeconds);
    connectRounds.push({ direct: directConnect, pooler: await connectRun(stack, pooled[0]!, sizes.connectClients, sizes.connectSeconds) });
  }
  const compose = composeLimits();
  return {
    protocol: PGBENCH_PROTOCOL,
    apps,
    clientsPerApp,
    seconds: sizes.poolerSeconds,
    rampSeconds: sizes.poolerRampSeconds,
    admission: { maxConnections: max, reserved, superuserOpen: superuser, connectionLimit: ctx.limits.connectionLimit, perApp },
    rounds,
    connect: { clients: sizes.connectClients, seconds: sizes.connectSeconds, rounds: connectRounds },
    memory: { idleRss, ...memory, openFilesLimit: openFiles, composeLimits: compose.memory, composeOpenFiles: compose.pgbouncerOpenFiles, maxClientConn },
  };
}
