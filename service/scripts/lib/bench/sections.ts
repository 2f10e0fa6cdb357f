// The benchmark's sections, one function each: each takes the run's context (and what it needs from another
// section), measures, and returns its figures; none renders anything (scripts/lib/bench/report.ts does). The
// numbers are BENCHMARKS.md's sections; scripts/lib/bench/run.ts runs them in the order they share the stack best.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { compareProfiles, profileMinimalServer, profileServiceHealth } from '../cpu-profile.js';
import { HealthCeiling } from '../minimal-health-server.js';
import { cpuTime, pssBytes, rssBytes, signalAll } from '../process-stats.js';
import { wrk, type WrkResult } from '../wrk.js';
import { appIdentifiers } from '../../../src/shared/object-names.js';
import { CHECKPOINT, type BenchContext } from './context.js';
import { floorHandOver } from './floor.js';
import { summarize, timed, timedQueue, type Summary } from './statistics.js';

/** Apps made by both sides (the floor's statements, and the service through nginx), for a later section to use. */
export interface MadeApps {
  floor: string[];
  service: string[];
}

// --- 1. Sequential provisioning, on demand, against the floor ------------------------------------------------------

export interface SequentialResults {
  floor: Summary;
  service: Summary;
}

/** Provisions one app at a time, floor and service interleaved; the apps are left for the deprovisioning section. */
export async function sequential(ctx: BenchContext): Promise<{ results: SequentialResults; apps: MadeApps }> {
  ctx.log('1. sequential provisioning (on demand) against the floor');
  // Interleaved (floor, service, floor, …) so that both see the same server state: cache, catalog size, checkpoints.
  const apps: MadeApps = { floor: [], service: [] };
  const floorTimes: number[] = [];
  const serviceTimes: number[] = [];
  for (const credential of await ctx.credentials(ctx.sizes.sequential)) {
    const floorName = ctx.nextName('floor');
    apps.floor.push(floorName);
    floorTimes.push(await ctx.floorProvisionTimed(floorName, credential));
    const serviceName = ctx.nextName('seq');
    apps.service.push(serviceName);
    serviceTimes.push(await ctx.provisionHttp(serviceName));
  }
  return { results: { floor: summarize(floorTimes), service: summarize(serviceTimes) }, apps };
}

/** The floor alone, as section 1 measures it: the reference of the ready pool and scale sections when 1 does not run. */
export async function floorReference(ctx: BenchContext): Promise<Summary> {
  ctx.log('   the floor (on demand), the reference of the sections to come');
  const names: string[] = [];
  const times: number[] = [];
  for (const credential of await ctx.credentials(ctx.sizes.sequential)) {
    const name = ctx.nextName('floor');
    names.push(name);
    times.push(await ctx.floorProvisionTimed(name, credential));
  }
  await ctx.floorDeleteAll(names);
  return summarize(times);
}

/** `n` apps per side, untimed: what the deprovisioning section deletes when section 1 has not made them. */
export async function makeApps(ctx: BenchContext, n: number): Promise<MadeApps> {
  const apps: MadeApps = { floor: [], service: [] };
  for (const credential of await ctx.credentials(n)) {
    const floorName = ctx.nextName('floor');
    apps.floor.push(floorName);
    await ctx.floorProvisionTimed(floorName, credential);
    const serviceName = ctx.nextName('seq');
    apps.service.push(serviceName);
    await ctx.provisionHttp(serviceName);
  }
  return apps;
}

/** Deletes apps both sides made (the floor's way: fast, and the same whoever made them). */
export async function removeApps(ctx: BenchContext, apps: MadeApps): Promise<void> {
  await ctx.floorDeleteAll(apps.floor.splice(0));
  for (const name of apps.service.splice(0)) await ctx.deleteHttp(name);
}

// --- 6. Deprovisioning against its floor, and whether drops stall another tenant ----------------------------------

export interface DeprovisionResults {
  floor: Summary;
  service: Summary;
  tenantIdle: Summary;
  tenantDuringDrops: Summary;
  checkpointsDuring: number;
  tenantErrors: number;
}

/** Deletes `apps` (the floor's with its statements, the service's through nginx), a tenant writing throughout; all of them are gone after. */
export async function deprovision(ctx: BenchContext, apps: MadeApps): Promise<DeprovisionResults> {
  ctx.log('6. deprovisioning against the floor, and a tenant during the drops');
  const tenantString = await ctx.provisionForConnection(ctx.nextName('tenant'));
  const tenantConnect = async () => {
    const client = new pg.Client({ connectionString: tenantString });
    client.on('error', () => {});
    await client.connect();
    return client;
  };
  let tenant = await tenantConnect();
  await tenant.query('CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g');
  ctx.defer(() => tenant.end());
  let tenantErrors = 0;
  const tenantLoop = async (stop: { done: boolean }) => {
    const times: number[] = [];
    while (!stop.done && times.length < 200_000) {
      try {
        times.push((await timed(() => tenant.query('UPDATE t SET v = md5(random()::text) WHERE id = $1', [1 + (times.length % 1000)])))[0]);
      } catch {
        // A lost session is counted and reported, then the tenant reconnects, as an app would.
        tenantErrors++;
        await tenant.end().catch(() => {});
        try {
          tenant = await tenantConnect();
        } catch {
          break; // Postgres is going away: the run is failing, and says why
        }
      }
    }
    return times;
  };
  const idleStop = { done: false };
  const idleRun = tenantLoop(idleStop);
  await sleep(ctx.tiny ? 200 : 3000);
  idleStop.done = true;
  const tenantIdle = summarize(await idleRun);
  const checkpoints = async () => Number((await ctx.floorClient.query('SELECT checkpoints_req FROM pg_stat_bgwriter')).rows[0].checkpoints_req);
  const deleteCount = Math.min(ctx.sizes.deletes, apps.service.length, apps.floor.length);
  const floorTimes: number[] = [];
  const serviceTimes: number[] = [];
  const checkpointsBefore = await checkpoints();
  const busyStop = { done: false };
  const busyRun = tenantLoop(busyStop);
  const floorVictims = apps.floor.splice(0, deleteCount);
  const serviceVictims = apps.service.splice(0, deleteCount);
  for (let i = 0; i < deleteCount; i++) {
    floorTimes.push(await ctx.floorDeleteTimed(floorVictims[i]!));
    serviceTimes.push(await ctx.deleteHttp(serviceVictims[i]!));
  }
  busyStop.done = true;
  const tenantDuringDrops = summarize(await busyRun);
  const checkpointsDuring = ((await checkpoints()) - checkpointsBefore) / 2; // per side: floor and service deleted alike
  await removeApps(ctx, apps);
  return { floor: summarize(floorTimes), service: summarize(serviceTimes), tenantIdle, tenantDuringDrops, checkpointsDuring, tenantErrors };
}

// --- 7. Rotation ------------------------------------------------------------------------------------------------

export interface RotationResults {
  authTimeoutMs: number;
  sequential: Summary;
  concurrentMs: number;
  concurrent: number;
  healthDuringMs: number;
}

/**
 * Rotation waits out the server's authentication_timeout, so that no login begun with the old password can finish
 * (SECURITY.md, promise 9). Reference: that timeout, read from the server.
 */
export async function rotation(ctx: BenchContext): Promise<RotationResults> {
  ctx.log('7. rotation');
  const authTimeoutMs = Number((await ctx.floorClient.query("SELECT setting::int * 1000 AS ms FROM pg_settings WHERE name = 'authentication_timeout'")).rows[0].ms);
  const rotated: string[] = [];
  for (let i = 0; i < ctx.sizes.rotations; i++) {
    rotated.push(ctx.nextName('rotate'));
    await ctx.provisionHttp(rotated[i]!);
  }
  const rotationTimes: number[] = [];
  for (const name of rotated) rotationTimes.push(await ctx.rotateHttp(name));
  // While rotations wait, other requests must not: a GET /health while rotations started together run.
  const concurrentStart = performance.now();
  const together = Promise.all(rotated.map((name) => ctx.rotateHttp(name)));
  await sleep(500);
  const healthDuring = (await timed(async () => (await fetch(`${ctx.stack.httpUrl}/health`)).arrayBuffer()))[0];
  await together;
  const concurrentMs = performance.now() - concurrentStart;
  for (const name of rotated) await ctx.deleteHttp(name);
  return { authTimeoutMs, sequential: summarize(rotationTimes), concurrentMs, concurrent: rotated.length, healthDuringMs: healthDuring };
}

// --- 2. The ready pool, warm and dry ----------------------------------------------------------------------------------

export interface PoolResults {
  warm: Summary;
  dry: Summary;
  /** The on-demand floor (section 1's), the reference. */
  floor: Summary;
}

/** Waits (at most a minute) until the pool holds `size` ready sets. */
async function poolFull(ctx: BenchContext, size: number): Promise<void> {
  for (let i = 0; i < 600 && (await ctx.readyCount()) < size; i++) await sleep(100);
}

/** Provisions from a warm pool of sizes.poolWarm sets, then as many again while it runs dry; the apps are left (removeAfterPool). */
export async function readyPool(ctx: BenchContext, floor: Summary): Promise<{ results: PoolResults; apps: string[] }> {
  ctx.log('2. the ready pool, warm and dry');
  const { poolWarm, poolDry } = ctx.sizes;
  await ctx.restartService({ READY_POOL_SIZE: String(poolWarm), READY_POOL_REFILL_PER_SECOND: '50' });
  await poolFull(ctx, poolWarm);
  const apps: string[] = [];
  const warmTimes: number[] = [];
  for (let i = 0; i < poolWarm; i++) {
    const name = ctx.nextName('warm');
    apps.push(name);
    warmTimes.push(await ctx.provisionHttp(name));
  }
  const dryTimes: number[] = [];
  for (let i = 0; i < poolDry; i++) {
    const name = ctx.nextName('dry');
    apps.push(name);
    dryTimes.push(await ctx.provisionHttp(name));
  }
  return { results: { warm: summarize(warmTimes), dry: summarize(dryTimes), floor }, apps };
}

// --- 2b. As users meet it: the default pool; bursts, and /health while it refills -------------------------------------

export interface BurstResults {
  /** The hand-over's own steps straight to Postgres, 4 clients at once: the floor of a burst. */
  floor: Summary;
  provision: Summary;
  /** GET /health with the pool full and idle; while it refills; and the ceiling (a minimal Node server behind the same nginx) while it refills. */
  healthIdle: WrkResult;
  healthRefilling: WrkResult;
  ceilingRefilling: WrkResult;
  seconds: number;
}

/** Empties the pool of the default 5 sets through the service (the apps are added to `apps`). */
async function emptyPool(ctx: BenchContext, apps: string[]): Promise<void> {
  const names = Array.from({ length: 5 }, () => ctx.nextName('burst'));
  apps.push(...names);
  await Promise.all(names.map((name) => ctx.provisionHttp(name)));
}

/**
 * The default pool (5 sets, refilled in the background at the default pace), as users meet it; each figure beside
 * its reference from the same run. Bursts of 4 provisions with the pool refilling between them, alternating with
 * the floor's bursts (the hand-over's steps from 4 clients at once, on the sets the pool prepared). Then GET
 * /health under 60 connections: with the pool full and idle; while it refills after 5 provisions emptied it; and,
 * as the reference, the minimal server behind the same nginx while it refills. The apps are left (removeAfterPool).
 */
export async function bursts(ctx: BenchContext): Promise<{ results: BurstResults; apps: string[] }> {
  ctx.log('2b. default pool: bursts of 4 against the floor; /health while the pool refills against the ceiling');
  await ctx.restartService({ READY_POOL_SIZE: '5' });
  await poolFull(ctx, 5);
  const apps: string[] = [];
  const floorClients = await Promise.all(Array.from({ length: 4 }, () => ctx.store.connections.connect()));
  ctx.defer(async () => void (await Promise.all(floorClients.map((c) => c.end().catch(() => {})))));
  const floorTimes: number[] = [];
  const burstTimes: number[] = [];
  const burstsStart = performance.now();
  for (let burst = 0; burst < ctx.sizes.bursts; burst++) {
    const ids = (await ctx.floorClient.query<{ id: string }>(`SELECT id FROM ready_pool WHERE state = 'ready' ORDER BY created_at`)).rows.map((r) => r.id);
    const floorNames = Array.from({ length: 4 }, () => ctx.nextName('fburst'));
    apps.push(...floorNames);
    floorTimes.push(
      ...(await Promise.all(
        floorNames.map(async (name, i) => {
          const [elapsed, handed] = await timed(() => floorHandOver(floorClients[i]!, appIdentifiers(name), ids));
          if (!handed) throw new Error('floor: the pool had no set for a burst');
          return elapsed;
        }),
      )),
    );
    await poolFull(ctx, 5);
    const names = Array.from({ length: 4 }, () => ctx.nextName('burst'));
    apps.push(...names);
    burstTimes.push(...(await Promise.all(names.map((name) => ctx.provisionHttp(name)))));
    await poolFull(ctx, 5); // the pool refills between bursts
  }
  const seconds = (performance.now() - burstsStart) / 1000;
  const healthSeconds = ctx.tiny ? 2 : 5;
  // 60 connections: under the 64 nginx allows one client address (limit_conn per_client).
  const healthIdle = await wrk(`${ctx.stack.httpUrl}/health`, healthSeconds, 60);
  const ceiling = await HealthCeiling.start();
  ctx.defer(() => ceiling.stop());
  await emptyPool(ctx, apps);
  const ceilingRefilling = await wrk(ceiling.url, healthSeconds, 60);
  await poolFull(ctx, 5);
  await emptyPool(ctx, apps);
  const healthRefilling = await wrk(`${ctx.stack.httpUrl}/health`, healthSeconds, 60);
  await poolFull(ctx, 5);
  return { results: { floor: summarize(floorTimes), provision: summarize(burstTimes), healthIdle, healthRefilling, ceilingRefilling, seconds }, apps };
}

/** After the pool's sections: the service without a pool again, and their apps deleted. */
export async function removeAfterPool(ctx: BenchContext, apps: string[]): Promise<void> {
  await ctx.restartService({ READY_POOL_SIZE: '0' });
  for (const name of apps) await ctx.deleteHttp(name);
  await ctx.floorClient.query('SELECT 1'); // the restarted service's reconciler removes the leftover ready sets
}

// --- 3. Concurrent provisioning against the floor at the same concurrency ---------------------------------------------

/** Apps per second, by number of clients. */
export type ConcurrencyResults = Record<number, { floor: number; service: number }>;

export async function concurrent(ctx: BenchContext): Promise<ConcurrencyResults> {
  ctx.log('3. concurrent provisioning against the floor');
  const results: ConcurrencyResults = {};
  // Alternating rounds (floor, service, floor, service), each after a checkpoint: a round's WAL (CREATE
  // DATABASE copies template1 through it) then never triggers a checkpoint inside one side's run.
  const rounds = 2;
  for (const clients of [8, 32]) {
    const perRound = Math.max(1, Math.round(ctx.sizes.concurrentApps / rounds));
    let floorMs = 0;
    let serviceMs = 0;
    for (let round = 0; round < rounds; round++) {
      await ctx.floorClient.query(CHECKPOINT);
      const floorBatch = Array.from({ length: perRound }, () => ctx.nextName('cfloor'));
      const floorCredentials = await ctx.credentials(perRound);
      const connections = await Promise.all(Array.from({ length: clients }, () => ctx.store.connections.connect()));
      floorMs += await timedQueue(connections, perRound, (client, i) => ctx.floorProvisionTimed(floorBatch[i]!, floorCredentials[i]!, client));
      await Promise.all(connections.map((c) => c.end()));
      await ctx.floorClient.query(CHECKPOINT);
      const serviceBatch = Array.from({ length: perRound }, () => ctx.nextName('csvc'));
      serviceMs += await timedQueue(Array.from({ length: clients }), perRound, (_client, i) => ctx.provisionHttp(serviceBatch[i]!));
      await ctx.floorDeleteAll(floorBatch);
      await ctx.floorDeleteAll(serviceBatch);
    }
    results[clients] = { floor: (perRound * rounds) / (floorMs / 1000), service: (perRound * rounds) / (serviceMs / 1000) };
  }
  return results;
}

// --- 4. GET /health through nginx against the ceiling ---------------------------------------------------------------

export interface LoadRound extends WrkResult {
  /** CPU time the answering Node process used per request, in microseconds. */
  userUsPerRequest: number;
  systemUsPerRequest: number;
}

async function wrkWithCpu(url: string, seconds: number, pid: number | undefined): Promise<LoadRound> {
  const before = cpuTime(pid);
  const result = await wrk(url, seconds);
  const after = cpuTime(pid);
  const requests = result.rps * seconds;
  return { ...result, userUsPerRequest: (after.userUs - before.userUs) / requests, systemUsPerRequest: (after.systemUs - before.systemUs) / requests };
}

export interface HealthResults {
  nginxAlone: WrkResult;
  ceilingRounds: LoadRound[];
  healthRounds: LoadRound[];
  detectMs: number;
  profiles: string[];
}

/** GET /health through nginx against the ceiling: the same nginx settings before a minimal Node server. */
export async function health(ctx: BenchContext): Promise<HealthResults> {
  ctx.log('4. /health through nginx against the ceiling');
  const { stack, sizes } = ctx;
  // Let the writes of the sections before reach the disk first, so that their writeback does not land in one side.
  await ctx.floorClient.query(CHECKPOINT);
  const ceiling = await HealthCeiling.start();
  ctx.defer(() => ceiling.stop());
  const ceilingUrl = ceiling.url;
  const healthUrl = `${stack.httpUrl}/health`;
  const nginxAlone = await wrk(`${stack.httpUrl}/`, sizes.healthSeconds);
  // Warm both up (JIT, connections) unmeasured, then alternate rounds so that both see the same noise.
  await wrk(ceilingUrl, sizes.healthWarmupSeconds);
  await wrk(healthUrl, sizes.healthWarmupSeconds);
  const ceilingRounds: LoadRound[] = [];
  const healthRounds: LoadRound[] = [];
  for (let round = 0; round < sizes.healthRounds; round++) {
    ceilingRounds.push(await wrkWithCpu(ceilingUrl, sizes.healthSeconds, ceiling.serverPid));
    healthRounds.push(await wrkWithCpu(healthUrl, sizes.healthSeconds, stack.servicePid));
  }
  // How fast /health notices a frozen database (SIGSTOP on the postmaster and every backend).
  const pids = stack.postgresProcessIds();
  await sleep(300);
  signalAll(pids, 'SIGSTOP');
  const frozenAt = Date.now();
  let detectMs = NaN;
  try {
    while (Date.now() - frozenAt < 10_000) {
      const response = await fetch(`${stack.httpUrl}/health`);
      await response.arrayBuffer();
      if (response.status === 503) {
        detectMs = Date.now() - frozenAt;
        break;
      }
      await sleep(20);
    }
  } finally {
    signalAll(pids, 'SIGCONT');
  }
  // Where each spends its time per request: both under `node --cpu-prof`, with the same load.
  const minimalProfile = await profileMinimalServer(ceiling, sizes.healthSeconds);
  const serviceProfile = await profileServiceHealth(stack, sizes.healthSeconds);
  return { nginxAlone, ceilingRounds, healthRounds, detectMs, profiles: compareProfiles(minimalProfile, serviceProfile) };
}

// --- 5. Scale: many apps (on demand, so every one pays the catalogs' growth), then reads and memory ----------------

export interface ScaleResults {
  first: Summary;
  last: Summary;
  floorAtStart: Summary;
  floorAtScale: Summary;
  walBytes: number;
  checkpointsDuringScale: number;
  firstListMs: number;
  list: Summary;
  listed: number;
  get: Summary;
  serviceRss: number;
  postgresPss: number;
  diskBytes: number;
  archiving: ArchivingResults;
}

/** WAL archiving (postgres.conf's archive_command: pgBackRest) while the scale phase writes its WAL. */
export interface ArchivingResults {
  /** Whether the server archives at all (archive_mode). */
  enabled: boolean;
  segmentsArchived: number;
  failures: number;
  /** The most segments waiting for archiving (pg_wal/archive_status/*.ready), sampled every second. */
  maxBacklogSegments: number;
  /** Seconds from the last provision until every segment written by then was archived. */
  drainSeconds: number;
  /** pgBackRest's repository on disk at the end. */
  repositoryBytes: number;
}

/**
 * Samples the archiver while `work` runs: segments archived and failed, the backlog each second; then forces the
 * last segment out and waits (at most 10 minutes) until every segment written by then is archived.
 */
async function whileArchiving(ctx: BenchContext, work: () => Promise<void>): Promise<ArchivingResults> {
  const db = ctx.floorClient;
  const archiver = async () =>
    (await db.query<{ archived: string; failed: string; backlog: number; mode: string }>(
      `SELECT archived_count AS archived, failed_count AS failed, current_setting('archive_mode') AS mode,
              (SELECT count(*)::int FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') AS backlog
         FROM pg_stat_archiver`,
    )).rows[0]!;
  const before = await archiver();
  let maxBacklog = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      maxBacklog = Math.max(maxBacklog, (await archiver()).backlog);
      await sleep(1000);
    }
  })();
  try {
    await work();
  } finally {
    sampling = false;
    await sampler;
  }
  const drainStart = Date.now();
  const enabled = before.mode !== 'off';
  if (enabled) {
    const { rows } = await db.query<{ segment: string }>('SELECT pg_walfile_name(pg_switch_wal()) AS segment');
    const last = rows[0]!.segment;
    for (let waited = 0; waited < 600_000; waited = Date.now() - drainStart) {
      const { rows: archived } = await db.query<{ done: boolean }>('SELECT coalesce(last_archived_wal >= $1, false) AS done FROM pg_stat_archiver', [last]);
      if (archived[0]!.done) break;
      await sleep(250);
    }
  }
  const drainSeconds = (Date.now() - drainStart) / 1000;
  const after = await archiver();
  const repository = join(ctx.stack.settings.stackDir, 'pgbackrest');
  let repositoryBytes = 0;
  try {
    repositoryBytes = Number(execFileSync('du', ['-sb', repository], { encoding: 'utf8' }).split('\t')[0]);
  } catch {
    // no repository (archiving off)
  }
  return {
    enabled,
    segmentsArchived: Number(after.archived) - Number(before.archived),
    failures: Number(after.failed) - Number(before.failed),
    maxBacklogSegments: maxBacklog,
    drainSeconds,
    repositoryBytes,
  };
}

/** sizes.scale apps through the service, the floor again among them, then lists, reads and memory; the apps are left. */
export async function scale(ctx: BenchContext, floorAtStart: Summary): Promise<ScaleResults> {
  const { stack, sizes } = ctx;
  ctx.log(`5. scale: ${sizes.scale} apps`);
  await ctx.restartService({ READY_POOL_SIZE: '0' });
  const walAndCheckpoints = async () => {
    const { rows } = await ctx.floorClient.query('SELECT pg_current_wal_lsn() AS lsn, checkpoints_timed + checkpoints_req AS checkpoints FROM pg_stat_bgwriter');
    return rows[0] as { lsn: string; checkpoints: string };
  };
  const scaleStart = await walAndCheckpoints();
  const scaleTimes: number[] = [];
  let scaleEnd = scaleStart;
  const archiving = await whileArchiving(ctx, async () => {
    for (let i = 0; i < sizes.scale; i++) {
      scaleTimes.push(await ctx.provisionHttp(`scale_${i}`));
      if (!ctx.tiny && i % 250 === 249) ctx.log(`   ${i + 1} apps`);
    }
    scaleEnd = await walAndCheckpoints();
  });
  const walBytes = Number((await ctx.floorClient.query('SELECT pg_wal_lsn_diff($1, $2)::float8 AS bytes', [scaleEnd.lsn, scaleStart.lsn])).rows[0].bytes);
  const checkpointsDuringScale = Number(scaleEnd.checkpoints) - Number(scaleStart.checkpoints);
  // The floor again, with all those apps in the catalogs: is any growth Postgres's own?
  const floorAtScaleTimes: number[] = [];
  for (const credential of await ctx.credentials(Math.min(sizes.sequential, 50))) floorAtScaleTimes.push(await ctx.floorProvisionTimed(ctx.nextName('floorscale'), credential));
  const window = Math.min(100, Math.floor(sizes.scale / 2));
  const listTimes: number[] = [];
  let listed = 0;
  // The first list after many new apps measures their sizes; later ones use the sizes refreshed each minute.
  const [firstListMs] = await timed(async () => (await ctx.getHttp('/apps'))[1].arrayBuffer());
  for (let i = 0; i < (ctx.tiny ? 2 : 20); i++) {
    const [elapsed, response] = await ctx.getHttp('/apps');
    listed = ((await response.json()) as { apps: unknown[] }).apps.length;
    listTimes.push(elapsed);
  }
  const getTimes: number[] = [];
  for (let i = 0; i < (ctx.tiny ? 2 : 100); i++) {
    const [elapsed, response] = await ctx.getHttp(`/apps/scale_${i % sizes.scale}`);
    await response.arrayBuffer();
    getTimes.push(elapsed);
  }
  return {
    first: summarize(scaleTimes.slice(0, window)),
    last: summarize(scaleTimes.slice(-window)),
    floorAtStart,
    floorAtScale: summarize(floorAtScaleTimes),
    walBytes,
    checkpointsDuringScale,
    firstListMs,
    list: summarize(listTimes),
    listed,
    get: summarize(getTimes),
    serviceRss: rssBytes(stack.servicePid),
    postgresPss: pssBytes(stack.postgresProcessIds()),
    diskBytes: Number(execFileSync('du', ['-sb', join(stack.settings.stackDir, 'pgdata')], { encoding: 'utf8' }).split('\t')[0]),
    archiving,
  };
}
