// The soak: mixed traffic from 16 clients against the local stack (loopback only) for a bounded time, with every
// kind of fault injected in turn, then the checks of RELIABILITY.md (soakProblems). It stops by itself.
//   npm --prefix service run soak                         10 minutes, a fault every minute at most; writes the soak
//                                                         section of ../RELIABILITY.md; exits 1 if a check fails
//   SOAK_SECONDS=120 SOAK_FAULT_EVERY_SECONDS=10 …        shorter (too short to compare memory: that check fails);
//                                                         service/test/soak.test.ts runs a short one without it
//
// What is checked, for every request (the clients' and the hostile ones):
// - A request may fail (a 5xx, or no answer within 15 s) only if it overlaps a fault's window: from the moment the
//   fault is injected until FAULT_GRACE_MS after it has ended. Every other request must succeed, or be the
//   service's documented back-pressure (503 "too many …" with Retry-After), which is counted apart.
// - Every fault kind runs at least once (the run lasts longer than asked if needed), and after each fault's window
//   the service is seen working again (RECOVERED_ANSWERS answers 2xx) before the next fault.
// - The population is bounded: each client holds at most APPS_PER_CLIENT apps, counting the ones whose creation
//   or deletion got no clear answer (it looks them up with DELETE /apps/:name until it knows they are gone), so
//   the service never holds more than clients × APPS_PER_CLIENT apps (counted every POPULATION_SAMPLE_MS), and
//   the apps left at the end must be exactly the ones the clients were told exist.
// - The long soak compares the service's memory at the end with its memory after warm-up (MEMORY_TARGET).
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { LocalStack, REPO_ROOT, throwawayStackSettings } from './lib/local-stack.js';
import { rssBytes, signalAll } from './lib/process-stats.js';
import { rawRequest } from '../test/helpers/raw-http.js';
import { APP_SQL } from '../src/shared/object-names.js';

export interface SoakOptions {
  seconds: number;
  /** Faults start this often at most (the first after this long); each also waits for the service's recovery from the last. */
  faultEverySeconds: number;
  clients: number;
  /** Apps each client holds at most (default APPS_PER_CLIENT); the tests' short soak uses a few, to reach the cap. */
  appsPerClient?: number;
  /** The RELIABILITY.md whose soak section (between the soak markers) is replaced with this run's figures. */
  out?: string;
  log?: (line: string) => void;
}

/** The faults, in the order they are injected: the service is killed once, first; the others then take turns. */
export const FAULT_KINDS = [
  'service killed (SIGKILL) and restarted',
  'Postgres frozen (SIGSTOP) for 5 s',
  'Postgres restarted (fast shutdown)',
  "the service's backends terminated",
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/**
 * How long after a fault has ended a request that begins then may still fail because of it. Requests in flight
 * during a fault may fail whatever their length (each is bounded: the client gives up after REQUEST_TIMEOUT_MS).
 * One that begins after it meets what the fault left: pooled connections to replace, the health check's connection
 * to reopen (its first ping fails), and after a freeze a backlog of requests it held, behind which a new request
 * waits for a pool connection up to DATABASE_CONNECT_TIMEOUT_MS (3 s). The latest such failure measured began
 * 3.9 s after its fault ended (RELIABILITY.md has the recorded run's); 5 s, with room for a busy machine.
 */
export const FAULT_GRACE_MS = 5_000;
/**
 * After a fault's window, the next fault waits until the service is seen working again: RECOVERED_ANSWERS answers
 * 2xx to requests begun after the window (a condition, not a duration; at most RECOVERY_WAIT_MS, after which the
 * check "the service works again after each fault" fails).
 */
export const RECOVERED_ANSWERS = 10;
const RECOVERY_WAIT_MS = 60_000;
/** How long the client waits for an answer; no answer within it is a failure (status 0). */
const REQUEST_TIMEOUT_MS = 15_000;
const FREEZE_MS = 5_000;

/** Between two requests of one client: 16 clients then send a few hundred requests a second, like busy operators. */
const CLIENT_PAUSE_MS = 40;
/**
 * Apps each client holds at most, counting those whose creation or deletion got no clear answer (a 5xx, no
 * answer) until it knows they are gone: at the cap, a provision becomes a delete. The population grows for about
 * the first minute and a half, then holds (16 × 40 = 640 apps at most), so that memory measured from then on shows
 * what the service keeps, not how many apps there are.
 */
export const APPS_PER_CLIENT = 40;
const MEMORY_SAMPLE_MS = 5_000;
const POPULATION_SAMPLE_MS = 1_000;
/**
 * The memory target: the service's RSS at the end at most 10 % above its RSS after warm-up. Warm-up ends when both
 * the service has run MEMORY_WARMUP_MS since its restart (the first fault) and the population has reached
 * MEMORY_WARM_POPULATION of its cap (so the comparison is about what the service keeps, not how many apps there
 * are); the baseline is the highest RSS sampled in the minute after that, the end the highest in the run's last
 * minute. Compared only when those minutes do not overlap (the long soak; not the tests' short one, where the
 * service is only seconds old).
 */
export const MEMORY_TARGET = 0.1;
const MEMORY_WARMUP_MS = 60_000;
const MEMORY_WARM_POPULATION = 0.9;
const MEMORY_WINDOW_MS = 60_000;

export interface FaultRecord {
  kind: FaultKind;
  /** Seconds since the start, when injected, and how long the fault itself lasted. */
  at: number;
  lastedSeconds: number;
  /** Failed requests excused by this fault's window, and the latest start of one after the fault had ended (ms). */
  excused: number;
  latestExcusedAfterEndMs: number | null;
  /** The failures excused after the fault had ended (at most 10): what the grace is for. */
  excusedAfterEnd: string[];
  /** Failures excused by this window, by status (0: no answer). */
  excusedByStatus: Record<string, number>;
  /** Requests answered 2xx that began after this fault's window and before the next fault: the service works again. */
  succeededAfter: number;
  /** When RECOVERED_ANSWERS of those had been answered, in ms after the fault ended (the next fault waits for it). */
  recoveredAfterMs: number | null;
}

export interface SoakResult {
  /** How long the traffic ran (options.seconds, or longer for every fault kind to run once). */
  seconds: number;
  requests: number;
  byStatus: Record<string, number>;
  byOperation: Record<string, number>;
  faults: FaultRecord[];
  /** Requests outside every fault's window (each must succeed), and those answered 2xx before the first fault. */
  checked: number;
  succeededBeforeFaults: number;
  /** Failures (5xx or no answer) outside every fault's window: each is a broken promise. */
  failuresOutsideGrace: string[];
  /** 503s of the service's own back-pressure, with Retry-After: every backup slot taken (retry after 5 s). */
  busy: number;
  /** Requests with no answer within REQUEST_TIMEOUT_MS. */
  timeouts: number;
  /** Apps whose creation or deletion got no clear answer, and how they were settled by looking them up. */
  unsettledApps: { total: number; foundAndDeleted: number; foundAbsent: number; leftAtEnd: string[]; madeAfterFoundAbsent: string[] };
  /** Apps registered (every state): the cap, the highest count (every POPULATION_SAMPLE_MS, and at the end), … */
  population: { cap: number; max: number; atEnd: number; capReached: number; samples: number };
  /** After the end: apps registered that no client was told of, and apps a client was told of that are gone. */
  appsUnaccounted: string[];
  appsMissing: string[];
  appsChecked: number;
  appsNotConnecting: string[];
  halfMade: string[];
  /** The service's memory, sampled every MEMORY_SAMPLE_MS from the start. */
  memory: MemorySample[];
  memoryVerdict: MemoryVerdict;
  unexplainedErrorLogs: string[];
  /** Reconciliation after the restart at the end finished (its log line was seen). */
  reconciledAtEnd: boolean;
}

export interface MemorySample {
  /** Seconds since the start. */
  at: number;
  rss: number;
  /** V8's heap in use and its size (prom-client's default metrics, from GET /metrics on the service's port). */
  heapUsed: number;
  heapTotal: number;
  /** Apps registered (every state), counted in Postgres. */
  apps: number;
}

export interface MemoryVerdict {
  compared: boolean;
  /** Why not, when not compared. */
  reason?: string;
  /** Seconds since the start: the baseline's minute and the end's minute. */
  baselineFrom?: number;
  endFrom?: number;
  baselineRss?: number;
  endRss?: number;
  growth?: number;
  withinTarget?: boolean;
}

interface Window {
  record: FaultRecord;
  from: number;
  to: number;
}

interface Unsettled {
  name: string;
  /** No answer, or nginx's 504: the service may still be working on the provision, and finish it later. */
  mayStillBeMade: boolean;
}

async function heapBytes(serviceUrl: string): Promise<{ heapUsed: number; heapTotal: number }> {
  try {
    const text = await (await fetch(`${serviceUrl}/metrics`, { signal: AbortSignal.timeout(12_000) })).text();
    const value = (name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN);
    return { heapUsed: value('pgprov_nodejs_heap_size_used_bytes'), heapTotal: value('pgprov_nodejs_heap_size_total_bytes') };
  } catch {
    return { heapUsed: NaN, heapTotal: NaN }; // the service restarting, or Postgres frozen past the timeout
  }
}

/** Registered apps, every state, counted by the superuser; NaN when Postgres does not answer within 2 s. */
async function countApps(stack: LocalStack): Promise<number> {
  const client = new pg.Client({ ...stack.superuserConnection('provisioner'), connectionTimeoutMillis: 2_000, query_timeout: 2_000 } as pg.ClientConfig);
  client.on('error', () => {});
  try {
    await client.connect();
    return Number((await client.query('SELECT count(*) AS n FROM apps')).rows[0].n);
  } catch {
    return NaN;
  } finally {
    await client.end().catch(() => {});
  }
}

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const log = options.log ?? (() => {});
  const serviceLines: Array<{ at: number; line: string }> = [];
  const settings = await throwawayStackSettings('soak', {
    postgresPassword: 'soak-superuser-password',
    serviceEnv: { LOG_PRETTY: 'false', LOG_LEVEL: 'warn', RECONCILE_INTERVAL_MS: '15000' },
    onServiceLine: (line) => serviceLines.push({ at: Date.now(), line }),
  });
  const { stackDir } = settings;
  const stack = new LocalStack(settings);
  const appsPerClient = options.appsPerClient ?? APPS_PER_CLIENT;
  const cap = options.clients * appsPerClient;
  const result: SoakResult = {
    seconds: options.seconds,
    requests: 0,
    byStatus: {},
    byOperation: {},
    faults: [],
    checked: 0,
    succeededBeforeFaults: 0,
    failuresOutsideGrace: [],
    busy: 0,
    timeouts: 0,
    unsettledApps: { total: 0, foundAndDeleted: 0, foundAbsent: 0, leftAtEnd: [], madeAfterFoundAbsent: [] },
    population: { cap, max: 0, atEnd: NaN, capReached: 0, samples: 0 },
    appsUnaccounted: [],
    appsMissing: [],
    appsChecked: 0,
    appsNotConnecting: [],
    halfMade: [],
    memory: [],
    memoryVerdict: { compared: false },
    unexplainedErrorLogs: [],
    reconciledAtEnd: false,
  };
  const windows: Window[] = [];
  /** The ids (X-Request-Id) of failed requests excused by a fault's window: their error lines are explained. */
  const excusedRequestIds = new Set<string>();
  /** The fault window a moment falls in (a fault, and FAULT_GRACE_MS after it), if any. */
  const windowOf = (at: number) => windows.find((w) => at >= w.from && at <= w.to + FAULT_GRACE_MS);
  /** Apps the clients were told exist, with their current connection strings. */
  const known = new Map<string, string>();
  /** Apps whose password is unknown (a rotation got no clear answer): they exist, but cannot be connected to. */
  const passwordUnknown = new Set<string>();
  const clientApps: Array<{ mine: string[]; unsettled: Unsettled[] }> = [];
  /** Apps a lookup found absent (404) after their provision got a 5xx: a statement cut by a timeout may still commit. */
  const foundAbsent = new Set<string>();
  let started = Date.now();

  try {
    const startingAt = Date.now();
    await stack.start();
    log(`stack up in ${((Date.now() - startingAt) / 1000).toFixed(1)} s`);
    started = Date.now();
    // Traffic runs for options.seconds, longer if needed for every fault kind to have run once with its checked
    // stretch after it (each fault is bounded: a restart by the stack's own timeouts, a freeze by FREEZE_MS).
    let deadline = started + options.seconds * 1000;
    let counter = 0;

    /** Counts one answer; a failure is excused only inside a fault's window. */
    const record = (operation: string, describe: string, start: number, status: number, headers: Record<string, string>, json: Record<string, unknown>) => {
      const end = Date.now();
      result.requests++;
      result.byStatus[String(status)] = (result.byStatus[String(status)] ?? 0) + 1;
      result.byOperation[operation] = (result.byOperation[operation] ?? 0) + 1;
      // A 503 that says every backup slot is taken, with Retry-After, is the service's own back-pressure, as
      // documented, not a failure: 16 clients back up far more at once than BACKUP_MAX_CONCURRENT allows.
      const busy = status === 503 && headers['retry-after'] !== undefined && typeof json.message === 'string' && json.message.startsWith('too many ');
      if (busy) result.busy++;
      const failed = (status >= 500 || status === 0) && !busy;
      // Which fault, if any, explains it: the latest whose window (the fault, and FAULT_GRACE_MS after) it overlaps.
      const window = windows.filter((w) => end >= w.from && start <= w.to + FAULT_GRACE_MS).at(-1);
      if (window && failed) {
        const f = window.record;
        f.excused++;
        f.excusedByStatus[String(status)] = (f.excusedByStatus[String(status)] ?? 0) + 1;
        if (headers['x-request-id']) excusedRequestIds.add(headers['x-request-id']);
        const afterEnd = start - window.to;
        if (afterEnd > (f.latestExcusedAfterEndMs ?? -Infinity)) f.latestExcusedAfterEndMs = afterEnd;
        if ((afterEnd > 0 || status === 500 || status === 0) && f.excusedAfterEnd.length < 10) {
          const message = typeof json.message === 'string' ? ` (${json.message})` : '';
          const reqId = headers['x-request-id'];
          f.excusedAfterEnd.push(`${afterEnd >= 0 ? '+' : ''}${(afterEnd / 1000).toFixed(1)} s ${describe} → ${status || 'no answer'}${message}${reqId ? ` [${reqId}]` : ''}`);
        }
      }
      if (!window) {
        result.checked++;
        if (failed) {
          const message = typeof json.message === 'string' ? ` (${json.message})` : '';
          result.failuresOutsideGrace.push(`${((start - started) / 1000).toFixed(1)} s ${describe} → ${status || 'no answer'}${message}`);
        }
      }
      // Recovery: answers 2xx to requests begun after the latest fault's window (and before the next fault).
      if (status >= 200 && status < 300) {
        const latest = windows.filter((w) => w.from <= start).at(-1);
        if (!latest) result.succeededBeforeFaults++;
        else if (start > latest.to + FAULT_GRACE_MS) latest.record.succeededAfter++;
      }
    };

    /** One request from loopback address `source` (rate limits are per address, as for real clients). */
    const send = async (operation: string, source: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
      const start = Date.now();
      let status = 0;
      let responseHeaders: Record<string, string> = {};
      let json: Record<string, unknown> = {};
      try {
        const response = await rawRequest(
          stack.settings.httpPort,
          { method, path, headers: { ...headers, ...(body ? { 'Content-Type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) },
          source,
          REQUEST_TIMEOUT_MS,
        );
        status = response.status;
        responseHeaders = response.headers;
        try {
          json = JSON.parse(response.body) as Record<string, unknown>;
        } catch {
          json = {};
        }
      } catch {
        result.timeouts++;
      }
      record(operation, `${operation} ${method} ${path}`, start, status, responseHeaders, json);
      return { status, json };
    };
    const call = (id: number, operation: string, method: string, path: string, body?: unknown) =>
      send(operation, `127.0.0.${10 + id}`, method, path, body, { Authorization: `Bearer ${stack.adminKey}` });

    /** No clear answer: the service may or may not have done it (a 5xx, nginx's 503 or 504, or no answer). */
    const unclear = (status: number) => status >= 500 || status === 0;

    /** Looks an unsettled app up by deleting it: gone (200 or 404) settles it, unless it may still be made. */
    const settle = async (id: number, app: Unsettled): Promise<boolean> => {
      const { status } = await call(id, 'settle', 'DELETE', `/apps/${app.name}?backup=false`);
      if (status === 200) result.unsettledApps.foundAndDeleted++;
      if (status === 404) {
        result.unsettledApps.foundAbsent++;
        foundAbsent.add(app.name);
      }
      return status === 200 || (status === 404 && !app.mayStillBeMade);
    };

    const client = async (id: number) => {
      const mine: string[] = [];
      const unsettled: Unsettled[] = [];
      clientApps[id] = { mine, unsettled };
      const pick = () => mine[Math.floor(Math.random() * mine.length)]!;
      // Clients arrive over the first second, not all in the same millisecond.
      await sleep((id * 1_000) / options.clients);
      while (Date.now() < deadline) {
        const canProvision = mine.length + unsettled.length < appsPerClient;
        if (!canProvision) result.population.capReached++;
        let roll = Math.random();
        if (unsettled.length > 0 && (roll < 0.25 || (!canProvision && mine.length === 0))) {
          const app = unsettled.shift()!;
          if (!(await settle(id, app))) unsettled.push(app);
        } else if (mine.length === 0 && !canProvision) {
          await call(id, 'health', 'GET', '/health');
        } else {
          roll = Math.random();
          if (roll < 0.22 && !canProvision) roll = 0.6; // at the cap: delete instead
          if (roll < 0.22 || mine.length === 0) {
            const name = `soak_${id}_${(counter++).toString(36)}`;
            const { status, json } = await call(id, 'provision', 'POST', '/provision', { app_name: name });
            if (status === 201) {
              known.set(name, String(json.connection_string));
              mine.push(name);
            } else if (unclear(status)) {
              unsettled.push({ name, mayStillBeMade: status === 0 || status === 504 });
              result.unsettledApps.total++;
            }
          } else if (roll < 0.35) {
            await call(id, 'list', 'GET', '/apps');
          } else if (roll < 0.45) {
            await call(id, 'get', 'GET', `/apps/${pick()}`);
          } else if (roll < 0.55) {
            const name = pick();
            const { status, json } = await call(id, 'rotate', 'POST', `/apps/${name}/rotate`);
            if (status === 200) {
              known.set(name, String(json.connection_string));
              passwordUnknown.delete(name);
            } else if (unclear(status)) {
              passwordUnknown.add(name);
            }
          } else if (roll < 0.6) {
            await call(id, 'backup', 'POST', `/apps/${pick()}/backups`);
          } else if (roll < 0.68) {
            const name = mine.splice(Math.floor(Math.random() * mine.length), 1)[0]!;
            const { status } = await call(id, 'delete', 'DELETE', `/apps/${name}?backup=false`);
            if (status === 200 || unclear(status)) known.delete(name);
            if (unclear(status)) {
              unsettled.push({ name, mayStillBeMade: false }); // a delete finished later only removes it
              result.unsettledApps.total++;
            } else if (status !== 200) {
              mine.push(name); // 409 (busy), 401 (the key changed with a restart): it is still there
            }
          } else if (roll < 0.85) {
            await call(id, 'health', 'GET', '/health');
          } else {
            // Hostile: a wrong key or a bad body, from other loopback addresses (so lockouts hit only them).
            const source = `127.0.0.${100 + Math.floor(Math.random() * 150)}`;
            const bad = Math.random() < 0.5 ? { app_name: 'BAD NAME', admin_key: stack.adminKey } : { app_name: 'valid_name', admin_key: 'sk_wrong' };
            await send('hostile', source, 'POST', '/provision', bad);
          }
        }
        await sleep(CLIENT_PAUSE_MS);
      }
    };

    const inject: Record<FaultKind, () => Promise<void>> = {
      'service killed (SIGKILL) and restarted': async () => {
        await stack.stopService('SIGKILL');
        await stack.startService();
      },
      'Postgres frozen (SIGSTOP) for 5 s': async () => {
        const pids = stack.postgresProcessIds();
        signalAll(pids, 'SIGSTOP');
        await sleep(FREEZE_MS);
        signalAll(pids, 'SIGCONT');
      },
      'Postgres restarted (fast shutdown)': async () => {
        await stack.stopPostgres();
        await stack.startPostgres();
      },
      "the service's backends terminated": async () => {
        const admin = new pg.Client(stack.superuserConnection());
        await admin.connect();
        await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pg-provisioner'");
        await admin.end();
      },
    };
    const faultLoop = async () => {
      const end = started + options.seconds * 1000;
      deadline = Infinity; // until every kind has run, and the service has been seen working again after the last
      try {
        let next = started + options.faultEverySeconds * 1000;
        for (let index = 0; ; index++) {
          const everyKindRan = FAULT_KINDS.every((kind) => result.faults.some((f) => f.kind === kind));
          // Past the time asked for, a fault starts only while a kind has yet to run (at most one round more).
          if (next > end - FREEZE_MS - FAULT_GRACE_MS && (everyKindRan || index >= FAULT_KINDS.length)) break;
          await sleep(Math.max(0, next - Date.now()));
          const kind = index === 0 ? FAULT_KINDS[0] : FAULT_KINDS[1 + ((index - 1) % (FAULT_KINDS.length - 1))]!;
          const record: FaultRecord = { kind, at: 0, lastedSeconds: 0, excused: 0, excusedByStatus: {}, latestExcusedAfterEndMs: null, excusedAfterEnd: [], succeededAfter: 0, recoveredAfterMs: null };
          const window: Window = { record, from: Date.now(), to: Infinity };
          record.at = Math.round((window.from - started) / 1000);
          windows.push(window);
          result.faults.push(record);
          log(`${record.at} s fault: ${kind}`);
          await inject[kind]();
          window.to = Date.now();
          record.lastedSeconds = Math.round((window.to - window.from) / 100) / 10;
          // The next fault waits until the service is seen working again after this one.
          while (record.succeededAfter < RECOVERED_ANSWERS && Date.now() < window.to + FAULT_GRACE_MS + RECOVERY_WAIT_MS) await sleep(100);
          record.recoveredAfterMs = Date.now() - window.to;
          next = Math.max(started + (index + 2) * options.faultEverySeconds * 1000, Date.now());
        }
      } finally {
        deadline = Math.max(end, Date.now());
      }
    };
    const sampler = async () => {
      for (let next = started; next < Math.min(deadline, Date.now() + 3_600_000); next += MEMORY_SAMPLE_MS) {
        await sleep(Math.max(0, next - Date.now()));
        const rss = rssBytes(stack.servicePid);
        const [heap, apps] = await Promise.all([heapBytes(stack.serviceUrl), countApps(stack)]);
        result.memory.push({ at: Math.round((next - started) / 1000), rss, ...heap, apps });
      }
    };

    // The population, counted every POPULATION_SAMPLE_MS (its highest is checked against the cap).
    const populationSampler = async () => {
      for (let next = started; next < Math.min(deadline, Date.now() + 3_600_000); next += POPULATION_SAMPLE_MS) {
        await sleep(Math.max(0, next - Date.now()));
        const apps = await countApps(stack);
        if (Number.isFinite(apps)) {
          result.population.samples++;
          result.population.max = Math.max(result.population.max, apps);
        }
      }
    };

    await Promise.all([...Array.from({ length: options.clients }, (_, i) => client(i)), faultLoop(), sampler(), populationSampler()]);
    result.seconds = Math.round((deadline - started) / 1000);
    log(`traffic done after ${((Date.now() - started) / 1000).toFixed(1)} s; checking`);

    // The end: restart the service (its start runs the reconciler, logged at info), wait for the reconciler, settle
    // what is still unsettled, then check every app the clients were told of, and the catalogs.
    const from = serviceLines.length;
    await stack.stopService();
    await stack.startService({ LOG_LEVEL: 'info' });
    for (let i = 0; i < 600 && !result.reconciledAtEnd; i++) {
      result.reconciledAtEnd = serviceLines.slice(from).some((l) => l.line.includes('reconcile finished'));
      if (!result.reconciledAtEnd) await sleep(100);
    }
    log(`restarted and reconciled after ${((Date.now() - started) / 1000).toFixed(1)} s`);
    await Promise.all(clientApps.map(async ({ unsettled }, id) => {
      for (const app of unsettled) {
        const path = `/apps/${app.name}?backup=false`;
        const headers = { Authorization: `Bearer ${stack.adminKey}` };
        const { status } = await rawRequest(stack.settings.httpPort, { method: 'DELETE', path, headers }, `127.0.0.${10 + id}`, REQUEST_TIMEOUT_MS).catch(() => ({ status: 0 }));
        if (status === 200) result.unsettledApps.foundAndDeleted++;
        else if (status === 404) result.unsettledApps.foundAbsent++;
        else result.unsettledApps.leftAtEnd.push(`${app.name} (${status || 'no answer'})`);
      }
    }));
    log(`settled after ${((Date.now() - started) / 1000).toFixed(1)} s`);
    const expected = new Set(clientApps.flatMap(({ mine }) => mine));
    for (const name of expected) {
      if (passwordUnknown.has(name)) continue;
      result.appsChecked++;
      const app = new pg.Client({ connectionString: known.get(name), connectionTimeoutMillis: 5_000 });
      app.on('error', () => {});
      try {
        await app.connect();
        await app.query('SELECT 1');
      } catch {
        result.appsNotConnecting.push(name);
      } finally {
        await app.end().catch(() => {});
      }
    }
    const admin = new pg.Client(stack.superuserConnection('provisioner'));
    await admin.connect();
    try {
      const { rows } = await admin.query(
        `SELECT a.app_name || ' (' || a.state || ')' AS problem FROM apps a WHERE a.state <> 'ready'
         UNION ALL
         SELECT a.app_name || ' (ready, missing objects)' FROM apps a
          WHERE a.state = 'ready' AND (NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = ${APP_SQL.databaseOf('a.app_name')})
             OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ${APP_SQL.loginRoleOf('a.app_name')})
             OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ${APP_SQL.databaseOf('a.app_name')}))
         UNION ALL
         SELECT d.datname || ' (database without registry row)' FROM pg_database d
          WHERE d.datname LIKE '${APP_SQL.like}' AND NOT EXISTS (SELECT 1 FROM apps a WHERE ${APP_SQL.databaseOf('a.app_name')} = d.datname)
         UNION ALL
         SELECT r.rolname || ' (login role without registry row)' FROM pg_roles r
          WHERE r.rolname ~ '${APP_SQL.loginRolePattern}' AND r.rolcanlogin AND NOT EXISTS (SELECT 1 FROM apps a WHERE ${APP_SQL.loginRoleOf('a.app_name')} = r.rolname)`,
      );
      result.halfMade = rows.map((r) => r.problem);
      const registered = new Set((await admin.query<{ app_name: string }>('SELECT app_name FROM apps')).rows.map((r) => r.app_name));
      result.population.atEnd = registered.size;
      // An app a lookup found absent may have been made after (its statement, cut by the service's timeout, still
      // committed): reported, and removed, not a leak. Any other app no client was told of is one.
      const extra = [...registered].filter((name) => !expected.has(name));
      result.unsettledApps.madeAfterFoundAbsent = extra.filter((name) => foundAbsent.has(name));
      result.appsUnaccounted = extra.filter((name) => !foundAbsent.has(name));
      for (const name of result.unsettledApps.madeAfterFoundAbsent) {
        await rawRequest(stack.settings.httpPort, { method: 'DELETE', path: `/apps/${name}?backup=false`, headers: { Authorization: `Bearer ${stack.adminKey}` } }).catch(() => undefined);
      }
      result.appsMissing = [...expected].filter((name) => !registered.has(name));
    } finally {
      await admin.end();
    }
    result.population.max = Math.max(result.population.max, result.population.atEnd);
    result.memoryVerdict = memoryVerdict(result, windows[0]?.record);
    // What the service logged for each failure excused after its fault had ended (the error's own message).
    for (const f of result.faults) {
      f.excusedAfterEnd = f.excusedAfterEnd.map((entry) => {
        const reqId = /\[([^\]]+)\]$/.exec(entry)?.[1];
        const logged = reqId ? serviceLines.find(({ line }) => line.includes(reqId) && /"level":(50|60)/.test(line))?.line : undefined;
        const error = logged ? /"err":\{"type":"[^"]*","message":"([^"]*)"/.exec(logged)?.[1] : undefined;
        return error ? entry.replace(/\[[^\]]+\]$/, `[logged: ${error}]`) : entry;
      });
    }
    // An error line is explained if its request's failure was excused, or, with no request (background work),
    // if it was written inside a fault's window.
    for (const { at, line } of serviceLines) {
      if (!/"level":(50|60)/.test(line)) continue;
      const reqId = /"reqId":"([^"]+)"/.exec(line)?.[1];
      if (reqId ? excusedRequestIds.has(reqId) : windowOf(at)) continue;
      result.unexplainedErrorLogs.push(`${((at - started) / 1000).toFixed(1)} s ${summarizeLogLine(line)}`);
    }
    log(`checks done after ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    await stack.stop().catch(() => {});
    rmSync(stackDir, { recursive: true, force: true });
  }
  if (options.out) writeReliability(options.out, result, options);
  return result;
}

/** A JSON log line in short: its message, its error's message, and its request id. */
function summarizeLogLine(line: string): string {
  try {
    const parsed = JSON.parse(line) as { msg?: string; reqId?: string; err?: { message?: string } };
    return `"${parsed.msg ?? ''}"${parsed.err?.message ? `: ${parsed.err.message}` : ''}${parsed.reqId ? ` [${parsed.reqId}]` : ''}`;
  } catch {
    return line.slice(0, 300);
  }
}

/** Baseline: the highest RSS in the minute after warm-up (after the first fault's restart); end: in the last minute. */
export function memoryVerdict(
  r: Pick<SoakResult, 'memory' | 'seconds'> & { population: Pick<SoakResult['population'], 'cap'> },
  firstFault: Pick<FaultRecord, 'kind' | 'at' | 'lastedSeconds'> | undefined,
): MemoryVerdict {
  const restartedAt = firstFault?.kind === FAULT_KINDS[0] ? firstFault.at + firstFault.lastedSeconds : 0;
  const filled = r.memory.find((s) => s.apps >= MEMORY_WARM_POPULATION * r.population.cap)?.at;
  if (filled === undefined) return { compared: false, reason: `the population never reached ${MEMORY_WARM_POPULATION * 100} % of its cap` };
  const baselineFrom = Math.ceil(Math.max(restartedAt + MEMORY_WARMUP_MS / 1000, filled));
  const baselineTo = baselineFrom + MEMORY_WINDOW_MS / 1000;
  const endFrom = r.seconds - MEMORY_WINDOW_MS / 1000;
  if (endFrom < baselineTo) {
    return { compared: false, reason: `the run is too short: the baseline's minute (from ${baselineFrom} s) and the last minute overlap` };
  }
  const highest = (from: number, to: number) => Math.max(...r.memory.filter((s) => s.at >= from && s.at < to && Number.isFinite(s.rss)).map((s) => s.rss));
  const baselineRss = highest(baselineFrom, baselineTo);
  const endRss = highest(endFrom, r.seconds + 1);
  if (!Number.isFinite(baselineRss) || !Number.isFinite(endRss)) return { compared: false, reason: 'no memory samples in the baseline or last minute' };
  const growth = endRss / baselineRss - 1;
  return { compared: true, baselineFrom, endFrom, baselineRss, endRss, growth, withinTarget: growth < MEMORY_TARGET };
}

/** Every check of the soak that failed, in words; empty when the run kept every promise. */
export function soakProblems(r: SoakResult, { compareMemory }: { compareMemory: boolean }): string[] {
  const problems: string[] = [];
  const say = (ok: boolean, problem: string) => {
    if (!ok) problems.push(problem);
  };
  say(r.requests > 100, `only ${r.requests} requests`);
  for (const kind of FAULT_KINDS) say(r.faults.some((f) => f.kind === kind), `fault never injected: ${kind}`);
  for (const f of r.faults) {
    say(f.succeededAfter >= RECOVERED_ANSWERS, `the service was not seen working again after the fault at ${f.at} s (${f.kind}): ${f.succeededAfter} answers 2xx after its window`);
  }
  say(r.succeededBeforeFaults > 0, 'no request succeeded before the first fault');
  say(r.failuresOutsideGrace.length === 0, `failures outside the fault windows: ${r.failuresOutsideGrace.slice(0, 10).join('; ')}`);
  say(r.population.capReached > 0, `no client reached its cap of apps: the bound on the population was not exercised`);
  say(r.population.max <= r.population.cap, `the service held ${r.population.max} apps, above the cap of ${r.population.cap}`);
  say(r.unsettledApps.leftAtEnd.length === 0, `apps still unsettled at the end: ${r.unsettledApps.leftAtEnd.join(', ')}`);
  say(r.appsUnaccounted.length === 0, `apps registered that no client was told of: ${r.appsUnaccounted.slice(0, 10).join(', ')}`);
  say(r.appsMissing.length === 0, `apps a client was told of that are gone: ${r.appsMissing.slice(0, 10).join(', ')}`);
  say(r.appsChecked > 0, 'no app was checked at the end');
  say(r.appsNotConnecting.length === 0, `apps not connecting: ${r.appsNotConnecting.slice(0, 10).join(', ')}`);
  say(r.halfMade.length === 0, `half-made objects: ${r.halfMade.slice(0, 10).join(', ')}`);
  say(r.reconciledAtEnd, 'the reconciler did not finish after the restart at the end');
  say(r.unexplainedErrorLogs.length === 0, `error lines outside the fault windows: ${r.unexplainedErrorLogs.slice(0, 3).join(' | ')}`);
  say(r.memory.some((s) => s.rss > 0 && s.heapUsed > 0) && r.population.samples > 0, 'memory or the population was never sampled');
  if (compareMemory) {
    const v = r.memoryVerdict;
    say(v.compared, `memory not compared: ${v.reason}`);
    if (v.compared) say(v.withinTarget === true, `memory grew ${((v.growth ?? 0) * 100).toFixed(1)} % (target < ${MEMORY_TARGET * 100} %)`);
  }
  return problems;
}

const SOAK_BEGIN = '<!-- soak:begin (written by npm --prefix service run soak) -->';
const SOAK_END = '<!-- soak:end -->';

/** Replaces the soak section of RELIABILITY.md (between its markers); the rest of the file is written by hand. */
function writeReliability(path: string, r: SoakResult, o: SoakOptions): void {
  const text = readFileSync(path, 'utf8');
  const begin = text.indexOf(SOAK_BEGIN);
  const end = text.indexOf(SOAK_END);
  if (begin === -1 || end < begin) throw new Error(`${path} has no soak section (${SOAK_BEGIN} … ${SOAK_END})`);
  writeFileSync(path, `${text.slice(0, begin + SOAK_BEGIN.length)}\n${renderSoak(r, o)}\n${text.slice(end)}`);
}

export function renderSoak(r: SoakResult, o: SoakOptions): string {
  const mb = (bytes: number | undefined) => (bytes !== undefined && Number.isFinite(bytes) ? `${(bytes / 2 ** 20).toFixed(1)} MB` : 'n/a');
  const problems = soakProblems(r, { compareMemory: true });
  const v = r.memoryVerdict;
  const kinds = FAULT_KINDS.map((kind) => `${kind} ×${r.faults.filter((f) => f.kind === kind).length}`).join(', ');
  const excused = r.faults.reduce((n, f) => n + f.excused, 0);
  const excusedByStatus: Record<string, number> = {};
  for (const f of r.faults) for (const [k, v] of Object.entries(f.excusedByStatus)) excusedByStatus[k] = (excusedByStatus[k] ?? 0) + v;
  const latest = Math.max(...r.faults.map((f) => f.latestExcusedAfterEndMs ?? -Infinity));
  return [
    `## Soak: ${r.seconds} s (${(r.seconds / 60).toFixed(1)} minutes), ${o.clients} clients, a fault every ${o.faultEverySeconds} s`,
    '',
    `Run on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, local stack, loopback only, \`npm --prefix service run soak\` (this section is its output).`,
    `Checks (\`soakProblems\` in service/scripts/soak.ts): **${problems.length === 0 ? 'all passed' : `${problems.length} failed`}**${problems.length === 0 ? '' : ` (${problems.map((p) => p.split(':')[0]).join('; ')}: the lines below give each)`}.`,
    '',
    `- Requests: ${r.requests} (${Object.entries(r.byOperation).map(([k, v]) => `${k} ${v}`).join(', ')})`,
    `- Answers by status: ${Object.entries(r.byStatus).sort().map(([k, v]) => `${k === '0' ? 'no answer' : k} ${v}`).join(', ')}`,
    `- Faults, each kind at least once: ${kinds}. At: ${r.faults.map((f) => `${f.at} s`).join(', ')}`,
    `- Fault windows (a fault, and ${FAULT_GRACE_MS / 1000} s after it ends): failures excused in them ${excused} (by status: ${Object.entries(excusedByStatus).map(([k, v]) => `${k === '0' ? 'no answer' : k} ${v}`).join(', ')}); the latest began ${Number.isFinite(latest) ? `${(latest / 1000).toFixed(1)} s after its fault ended` : '(none after a fault ended)'}. The service was seen working again (${RECOVERED_ANSWERS} answers 2xx) ${r.faults.map((f) => (f.recoveredAfterMs === null ? '?' : (f.recoveredAfterMs / 1000).toFixed(1))).join(', ')} s after each fault ended`,
    `- The latest failure excused after its fault had ended, per fault: ${r.faults.map((f) => `${f.at} s: ${latestAfterEnd(f) ?? 'none'}`).join('; ')}`,
    `- Requests outside every window, each required to succeed: ${r.checked}; failures among them (5xx or no answer): **${r.failuresOutsideGrace.length}**${r.failuresOutsideGrace.length ? ` (${r.failuresOutsideGrace.slice(0, 10).join('; ')})` : ''}. Answered 2xx before the first fault: ${r.succeededBeforeFaults}; after each fault's window, before the next fault: ${r.faults.map((f) => f.succeededAfter).join(', ')}`,
    `- 503 "too many backups and restores are running at once" with Retry-After (back-pressure, counted apart, not as failures): ${r.busy}`,
    `- Apps: each client holds at most ${o.appsPerClient ?? APPS_PER_CLIENT} (reached ${r.population.capReached} times), counting those whose creation or deletion got no clear answer (${r.unsettledApps.total}; looked up later: ${r.unsettledApps.foundAndDeleted} existed and were deleted, ${r.unsettledApps.foundAbsent} lookups found none, of which ${r.unsettledApps.madeAfterFoundAbsent.length} were made after all); the service held at most **${r.population.max}** (counted every ${POPULATION_SAMPLE_MS / 1000} s, ${r.population.samples} times; cap ${r.population.cap}), ${r.population.atEnd} at the end`,
    `- At the end, apps registered that no client was told of: **${r.appsUnaccounted.length}**; apps a client was told of that are gone: **${r.appsMissing.length}**; checked with their current connection strings: ${r.appsChecked}, not connecting: **${r.appsNotConnecting.length}**`,
    `- Half-made or half-removed objects after reconciliation: **${r.halfMade.length}**${r.halfMade.length ? ` (${r.halfMade.slice(0, 5).join('; ')})` : ''}`,
    v.compared
      ? `- Service RSS: ${mb(v.baselineRss)} after warm-up (highest from ${v.baselineFrom} s to ${(v.baselineFrom ?? 0) + 60} s), ${mb(v.endRss)} in the last minute (highest): **${(v.growth ?? 0) >= 0 ? '+' : ''}${((v.growth ?? 0) * 100).toFixed(1)}%** (target < ${MEMORY_TARGET * 100}%, compared: ${v.withinTarget ? 'met' : 'MISSED'})`
      : `- Service RSS: not compared (${v.reason})`,
    `- Error lines logged outside the fault windows: **${r.unexplainedErrorLogs.length}**${r.unexplainedErrorLogs.length ? ` (${r.unexplainedErrorLogs.slice(0, 5).join('; ')})` : ''}`,
    '',
    ...memoryReport(r),
  ].join('\n');
}

/** Of the failures a fault's window excused after the fault had ended, the one that began latest. */
function latestAfterEnd(f: FaultRecord): string | undefined {
  const after = f.excusedAfterEnd.filter((entry) => entry.startsWith('+'));
  return after.sort((a, b) => Number.parseFloat(b.slice(1)) - Number.parseFloat(a.slice(1)))[0];
}

/** The service's memory minute by minute: whether RSS growth is the heap settling or something kept. */
function memoryReport(r: SoakResult): string[] {
  if (r.memory.length === 0) return [];
  const mb = (bytes: number) => (Number.isFinite(bytes) ? `${(bytes / 2 ** 20).toFixed(1)} MB` : 'n/a');
  const byMinute = new Map<number, MemorySample[]>();
  for (const sample of r.memory) {
    const minute = Math.floor(sample.at / 60);
    byMinute.set(minute, [...(byMinute.get(minute) ?? []), sample]);
  }
  const finite = (values: number[]) => values.filter(Number.isFinite);
  const rows = [...byMinute.entries()].map(([minute, samples]) => ({
    minute,
    rss: Math.max(...finite(samples.map((x) => x.rss))),
    // The lowest heap in use seen in a minute is close to what survives a collection: its trend is the leak test.
    heapFloor: Math.min(...finite(samples.map((x) => x.heapUsed))),
    heapTotal: Math.max(...finite(samples.map((x) => x.heapTotal))),
    apps: Math.max(...finite(samples.map((x) => x.apps))),
  }));
  const baselineMinute = Math.floor((r.memoryVerdict.baselineFrom ?? 60) / 60);
  const first = rows.find((row) => row.minute >= baselineMinute) ?? rows[0]!; // the minute after warm-up
  const last = rows.at(-1)!;
  const change = (a: number, b: number) => `${b >= a ? '+' : ''}${((b / a - 1) * 100).toFixed(1)}%`;
  const measured = rows.filter((row) => row.minute >= first.minute);
  const floors = measured.map((row) => row.heapFloor);
  // Least-squares slope, in MB per minute: a leak shows as a steady rise, collections' noise does not.
  const slope = (values: number[]) => {
    const n = values.length;
    const meanX = (n - 1) / 2;
    const meanY = values.reduce((a, b) => a + b, 0) / n;
    const num = values.reduce((sum, y, x) => sum + (x - meanX) * (y - meanY), 0);
    const den = values.reduce((sum, _y, x) => sum + (x - meanX) ** 2, 0);
    return den === 0 ? 0 : num / den / 2 ** 20;
  };
  const signed = (value: number) => `${value >= 0 ? '+' : ''}${value.toFixed(2)}`;
  return [
    '### Memory and population, minute by minute',
    '',
    `Sampled every ${MEMORY_SAMPLE_MS / 1000} s: RSS from /proc, V8's heap from the service's /metrics, apps counted in Postgres (every state). The service runs with \`--max-old-space-size=96\`, as in its image; it was killed and restarted at the first fault, so minute 1 and the first fault's minute are a fresh process.`,
    '',
    '| minute | RSS (highest) | heap in use (lowest) | heap size (highest) | apps (highest) |',
    '| --- | --- | --- | --- | --- |',
    ...rows.map((row) => `| ${row.minute + 1} | ${mb(row.rss)} | ${mb(row.heapFloor)} | ${mb(row.heapTotal)} | ${Number.isFinite(row.apps) ? row.apps : 'n/a'} |`),
    '',
    `From minute ${first.minute + 1} to minute ${last.minute + 1}: RSS ${change(first.rss, last.rss)} (trend ${signed(slope(measured.map((row) => row.rss)))} MB per minute), heap size ${change(first.heapTotal, last.heapTotal)}. The lowest heap in use of each minute, close to what survives a collection, stayed between ${mb(Math.min(...floors))} and ${mb(Math.max(...floors))} (trend ${signed(slope(floors))} MB per minute).`,
    '',
  ];
}

// CLI
if (process.argv[1]?.endsWith('soak.ts')) {
  const seconds = Number(process.env.SOAK_SECONDS ?? 600);
  const faultEverySeconds = Number(process.env.SOAK_FAULT_EVERY_SECONDS ?? 60);
  const options: SoakOptions = { seconds, faultEverySeconds, clients: 16, out: join(REPO_ROOT, 'RELIABILITY.md'), log: (line) => process.stderr.write(`${line}\n`) };
  const result = await runSoak(options);
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  const problems = soakProblems(result, { compareMemory: true });
  for (const problem of problems) process.stderr.write(`FAILED: ${problem}\n`);
  process.exitCode = problems.length === 0 ? 0 : 1;
}
