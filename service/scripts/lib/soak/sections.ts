// The soak's sections, one function each, all working on one SoakRun (the stack, the figures, and what the clients
// know): the traffic (clients, faults, samplers, at once), then at the end the restart and reconcile, the settling
// of apps whose fate no client knows, the apps checked with their connection strings, the catalogs checked, and the
// error lines explained. scripts/lib/soak/run.ts runs them in order.
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { halfMadeObjects } from '../../../test/helpers/catalog.js';
import { rawRequest } from '../../../test/helpers/raw-http.js';
import type { LocalStack } from '../local-stack.js';
import { rssBytes, signalAll } from '../process-stats.js';
import {
  APPS_PER_CLIENT,
  CLIENT_PAUSE_MS,
  FAULT_GRACE_MS,
  FAULT_KINDS,
  FREEZE_MS,
  MEMORY_SAMPLE_MS,
  POPULATION_SAMPLE_MS,
  RECOVERED_ANSWERS,
  RECOVERY_WAIT_MS,
  REQUEST_TIMEOUT_MS,
  type FaultKind,
  type FaultRecord,
  type SoakOptions,
  type SoakResult,
  type Unsettled,
  type Window,
} from './model.js';
import { summarizeLogLine } from './report.js';

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

async function heapBytes(serviceUrl: string): Promise<{ heapUsed: number; heapTotal: number }> {
  try {
    const text = await (await fetch(`${serviceUrl}/metrics`, { signal: AbortSignal.timeout(12_000) })).text();
    const value = (name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN);
    return { heapUsed: value('pgprov_nodejs_heap_size_used_bytes'), heapTotal: value('pgprov_nodejs_heap_size_total_bytes') };
  } catch {
    return { heapUsed: NaN, heapTotal: NaN }; // the service restarting, or Postgres frozen past the timeout
  }
}

/** No clear answer: the service may or may not have done it (a 5xx, nginx's 503 or 504, or no answer). */
const unclear = (status: number) => status >= 500 || status === 0;

/** One soak: its stack, its figures, and what the clients were told; every section works on it. */
export class SoakRun {
  readonly options: SoakOptions;
  readonly stack: LocalStack;
  readonly serviceLines: Array<{ at: number; line: string }>;
  readonly log: (line: string) => void;
  readonly appsPerClient: number;
  readonly result: SoakResult;
  readonly windows: Window[] = [];
  /** The ids (X-Request-Id) of failed requests excused by a fault's window: their error lines are explained. */
  readonly excusedRequestIds = new Set<string>();
  /** Apps the clients were told exist, with their current connection strings. */
  readonly known = new Map<string, string>();
  /** Apps whose password is unknown (a rotation got no clear answer): they exist, but cannot be connected to. */
  readonly passwordUnknown = new Set<string>();
  readonly clientApps: Array<{ mine: string[]; unsettled: Unsettled[] }> = [];
  /** Apps a lookup found absent (404) after their provision got a 5xx: a statement cut by a timeout may still commit. */
  readonly foundAbsent = new Set<string>();
  started = Date.now();
  /** Until when the clients send requests (moved by the fault loop until every fault kind has run). */
  deadline = Infinity;
  private counter = 0;

  constructor(options: SoakOptions, stack: LocalStack, serviceLines: Array<{ at: number; line: string }>) {
    this.options = options;
    this.stack = stack;
    this.serviceLines = serviceLines;
    this.log = options.log ?? (() => {});
    this.appsPerClient = options.appsPerClient ?? APPS_PER_CLIENT;
    const cap = options.clients * this.appsPerClient;
    this.result = {
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
  }

  /** Seconds since the traffic started, as the figures give them. */
  secondsSinceStart(at = Date.now()): string {
    return ((at - this.started) / 1000).toFixed(1);
  }

  /** The fault window a moment falls in (a fault, and FAULT_GRACE_MS after it), if any. */
  windowOf(at: number): Window | undefined {
    return this.windows.find((w) => at >= w.from && at <= w.to + FAULT_GRACE_MS);
  }

  /** A new app name for client `id`. */
  nextName(id: number): string {
    return `soak_${id}_${(this.counter++).toString(36)}`;
  }

  /** Counts one answer; a failure is excused only inside a fault's window. */
  record(operation: string, describe: string, start: number, status: number, headers: Record<string, string>, json: Record<string, unknown>): void {
    const { result } = this;
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
    const window = this.windows.filter((w) => end >= w.from && start <= w.to + FAULT_GRACE_MS).at(-1);
    if (window && failed) {
      const f = window.record;
      f.excused++;
      f.excusedByStatus[String(status)] = (f.excusedByStatus[String(status)] ?? 0) + 1;
      if (headers['x-request-id']) this.excusedRequestIds.add(headers['x-request-id']);
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
        result.failuresOutsideGrace.push(`${this.secondsSinceStart(start)} s ${describe} → ${status || 'no answer'}${message}`);
      }
    }
    // Recovery: answers 2xx to requests begun after the latest fault's window (and before the next fault).
    if (status >= 200 && status < 300) {
      const latest = this.windows.filter((w) => w.from <= start).at(-1);
      if (!latest) result.succeededBeforeFaults++;
      else if (start > latest.to + FAULT_GRACE_MS) latest.record.succeededAfter++;
    }
  }

  /** One request from loopback address `source` (rate limits are per address, as for real clients). */
  async send(operation: string, source: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, unknown> }> {
    const start = Date.now();
    let status = 0;
    let responseHeaders: Record<string, string> = {};
    let json: Record<string, unknown> = {};
    try {
      const response = await rawRequest(
        this.stack.settings.httpPort,
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
      this.result.timeouts++;
    }
    this.record(operation, `${operation} ${method} ${path}`, start, status, responseHeaders, json);
    return { status, json };
  }

  /** An admin request from client `id`'s own address. */
  call(id: number, operation: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
    return this.send(operation, `127.0.0.${10 + id}`, method, path, body, { Authorization: `Bearer ${this.stack.adminKey}` });
  }
}

// --- the traffic: clients, faults and samplers, at once ----------------------------------------------------------

/** Looks an unsettled app up by deleting it: gone (200 or 404) settles it, unless it may still be made. */
async function settle(run: SoakRun, id: number, app: Unsettled): Promise<boolean> {
  const { status } = await run.call(id, 'settle', 'DELETE', `/apps/${app.name}?backup=false`);
  if (status === 200) run.result.unsettledApps.foundAndDeleted++;
  if (status === 404) {
    run.result.unsettledApps.foundAbsent++;
    run.foundAbsent.add(app.name);
  }
  return status === 200 || (status === 404 && !app.mayStillBeMade);
}

/** One client's mixed traffic until the deadline, holding at most appsPerClient apps (the unsettled counted). */
async function client(run: SoakRun, id: number): Promise<void> {
  const { result, known } = run;
  const mine: string[] = [];
  const unsettled: Unsettled[] = [];
  run.clientApps[id] = { mine, unsettled };
  const pick = () => mine[Math.floor(Math.random() * mine.length)]!;
  // Clients arrive over the first second, not all in the same millisecond.
  await sleep((id * 1_000) / run.options.clients);
  while (Date.now() < run.deadline) {
    const canProvision = mine.length + unsettled.length < run.appsPerClient;
    if (!canProvision) result.population.capReached++;
    let roll = Math.random();
    if (unsettled.length > 0 && (roll < 0.25 || (!canProvision && mine.length === 0))) {
      const app = unsettled.shift()!;
      if (!(await settle(run, id, app))) unsettled.push(app);
    } else if (mine.length === 0 && !canProvision) {
      await run.call(id, 'health', 'GET', '/health');
    } else {
      roll = Math.random();
      if (roll < 0.22 && !canProvision) roll = 0.6; // at the cap: delete instead
      if (roll < 0.22 || mine.length === 0) {
        const name = run.nextName(id);
        const { status, json } = await run.call(id, 'provision', 'POST', '/provision', { app_name: name });
        if (status === 201) {
          known.set(name, String(json.connection_string));
          mine.push(name);
        } else if (unclear(status)) {
          unsettled.push({ name, mayStillBeMade: status === 0 || status === 504 });
          result.unsettledApps.total++;
        }
      } else if (roll < 0.35) {
        await run.call(id, 'list', 'GET', '/apps');
      } else if (roll < 0.45) {
        await run.call(id, 'get', 'GET', `/apps/${pick()}`);
      } else if (roll < 0.55) {
        const name = pick();
        const { status, json } = await run.call(id, 'rotate', 'POST', `/apps/${name}/rotate`);
        if (status === 200) {
          known.set(name, String(json.connection_string));
          run.passwordUnknown.delete(name);
        } else if (unclear(status)) {
          run.passwordUnknown.add(name);
        }
      } else if (roll < 0.6) {
        await run.call(id, 'backup', 'POST', `/apps/${pick()}/backups`);
      } else if (roll < 0.68) {
        const name = mine.splice(Math.floor(Math.random() * mine.length), 1)[0]!;
        const { status } = await run.call(id, 'delete', 'DELETE', `/apps/${name}?backup=false`);
        if (status === 200 || unclear(status)) known.delete(name);
        if (unclear(status)) {
          unsettled.push({ name, mayStillBeMade: false }); // a delete finished later only removes it
          result.unsettledApps.total++;
        } else if (status !== 200) {
          mine.push(name); // 409 (busy), 401 (the key changed with a restart): it is still there
        }
      } else if (roll < 0.85) {
        await run.call(id, 'health', 'GET', '/health');
      } else {
        // Hostile: a wrong key or a bad body, from other loopback addresses (so lockouts hit only them).
        const source = `127.0.0.${100 + Math.floor(Math.random() * 150)}`;
        const bad = Math.random() < 0.5 ? { app_name: 'BAD NAME', admin_key: run.stack.adminKey } : { app_name: 'valid_name', admin_key: 'sk_wrong' };
        await run.send('hostile', source, 'POST', '/provision', bad);
      }
    }
    await sleep(CLIENT_PAUSE_MS);
  }
}

/** How each kind of fault is injected; each ends by itself (a restart by the stack's own timeouts, a freeze by FREEZE_MS). */
function injector(stack: LocalStack): Record<FaultKind, () => Promise<void>> {
  return {
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
}

/**
 * The faults, in turn (the service killed first), at most one every faultEverySeconds, each once the service has
 * been seen working again after the last; the traffic lasts until every kind has run.
 */
async function faultLoop(run: SoakRun): Promise<void> {
  const { options, result, started } = run;
  const inject = injector(run.stack);
  const end = started + options.seconds * 1000;
  run.deadline = Infinity; // until every kind has run, and the service has been seen working again after the last
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
      run.windows.push(window);
      result.faults.push(record);
      run.log(`${record.at} s fault: ${kind}`);
      await inject[kind]();
      window.to = Date.now();
      record.lastedSeconds = Math.round((window.to - window.from) / 100) / 10;
      // The next fault waits until the service is seen working again after this one.
      while (record.succeededAfter < RECOVERED_ANSWERS && Date.now() < window.to + FAULT_GRACE_MS + RECOVERY_WAIT_MS) await sleep(100);
      record.recoveredAfterMs = Date.now() - window.to;
      next = Math.max(started + (index + 2) * options.faultEverySeconds * 1000, Date.now());
    }
  } finally {
    run.deadline = Math.max(end, Date.now());
  }
}

/** The service's memory (RSS, V8's heap) and the apps registered, every MEMORY_SAMPLE_MS. */
async function memorySampler(run: SoakRun): Promise<void> {
  for (let next = run.started; next < Math.min(run.deadline, Date.now() + 3_600_000); next += MEMORY_SAMPLE_MS) {
    await sleep(Math.max(0, next - Date.now()));
    const rss = rssBytes(run.stack.servicePid);
    const [heap, apps] = await Promise.all([heapBytes(run.stack.serviceUrl), countApps(run.stack)]);
    run.result.memory.push({ at: Math.round((next - run.started) / 1000), rss, ...heap, apps });
  }
}

/** The population, counted every POPULATION_SAMPLE_MS (its highest is checked against the cap). */
async function populationSampler(run: SoakRun): Promise<void> {
  for (let next = run.started; next < Math.min(run.deadline, Date.now() + 3_600_000); next += POPULATION_SAMPLE_MS) {
    await sleep(Math.max(0, next - Date.now()));
    const apps = await countApps(run.stack);
    if (Number.isFinite(apps)) {
      run.result.population.samples++;
      run.result.population.max = Math.max(run.result.population.max, apps);
    }
  }
}

/**
 * The traffic: options.clients clients, the faults, and the samplers, all at once, for options.seconds (longer if
 * needed for every fault kind to have run once with its checked stretch after it).
 */
export async function traffic(run: SoakRun): Promise<void> {
  run.started = Date.now();
  run.deadline = run.started + run.options.seconds * 1000;
  await Promise.all([...Array.from({ length: run.options.clients }, (_, i) => client(run, i)), faultLoop(run), memorySampler(run), populationSampler(run)]);
  run.result.seconds = Math.round((run.deadline - run.started) / 1000);
  run.log(`traffic done after ${run.secondsSinceStart()} s; checking`);
}

// --- the end: restart, settle, check -------------------------------------------------------------------------------

/** Restarts the service (its start runs the reconciler, logged at info) and waits for the reconciler (at most a minute). */
export async function restartAndReconcile(run: SoakRun): Promise<void> {
  const from = run.serviceLines.length;
  await run.stack.stopService();
  await run.stack.startService({ LOG_LEVEL: 'info' });
  for (let i = 0; i < 600 && !run.result.reconciledAtEnd; i++) {
    run.result.reconciledAtEnd = run.serviceLines.slice(from).some((l) => l.line.includes('reconcile finished'));
    if (!run.result.reconciledAtEnd) await sleep(100);
  }
  run.log(`restarted and reconciled after ${run.secondsSinceStart()} s`);
}

/** Settles what is still unsettled: each app looked up by deleting it, from its client's address. */
export async function settleAtEnd(run: SoakRun): Promise<void> {
  const { unsettledApps } = run.result;
  await Promise.all(
    run.clientApps.map(async ({ unsettled }, id) => {
      for (const app of unsettled) {
        const path = `/apps/${app.name}?backup=false`;
        const headers = { Authorization: `Bearer ${run.stack.adminKey}` };
        const { status } = await rawRequest(run.stack.settings.httpPort, { method: 'DELETE', path, headers }, `127.0.0.${10 + id}`, REQUEST_TIMEOUT_MS).catch(() => ({ status: 0 }));
        if (status === 200) unsettledApps.foundAndDeleted++;
        else if (status === 404) unsettledApps.foundAbsent++;
        else unsettledApps.leftAtEnd.push(`${app.name} (${status || 'no answer'})`);
      }
    }),
  );
  run.log(`settled after ${run.secondsSinceStart()} s`);
}

/** The apps the clients were told exist (but those whose password no client knows). */
const expectedApps = (run: SoakRun) => new Set(run.clientApps.flatMap(({ mine }) => mine));

/**
 * A connection string the service returned, with sslrootcert= the stack's CA, as the README tells apps using
 * node-postgres to give it (node-postgres reads sslmode=require as verify-full).
 */
function withAuthority(connectionString: string, caFile: string): string {
  const url = new URL(connectionString);
  url.searchParams.set('sslrootcert', caFile);
  return url.toString();
}

/** Connects to every app a client holds, with the connection string it was last given (and the stack's CA, as an app adds it). */
export async function checkAppsConnect(run: SoakRun): Promise<void> {
  const caFile = run.stack.postgres.tlsFiles().caCertificate;
  for (const name of expectedApps(run)) {
    if (run.passwordUnknown.has(name)) continue;
    run.result.appsChecked++;
    const app = new pg.Client({ connectionString: withAuthority(run.known.get(name)!, caFile), connectionTimeoutMillis: 5_000 });
    app.on('error', () => {});
    try {
      await app.connect();
      await app.query('SELECT 1');
    } catch {
      run.result.appsNotConnecting.push(name);
    } finally {
      await app.end().catch(() => {});
    }
  }
}

/**
 * The catalogs after reconciliation: nothing half-made (test/helpers/catalog.ts, halfMadeObjects), and the apps
 * registered exactly those the clients were told of. An app a lookup found absent may have been made after (its
 * statement, cut by the service's timeout, still committed): reported, and removed, not a leak.
 */
export async function checkCatalog(run: SoakRun): Promise<void> {
  const { result } = run;
  const expected = expectedApps(run);
  const admin = new pg.Client(run.stack.superuserConnection('provisioner'));
  await admin.connect();
  try {
    result.halfMade = await halfMadeObjects(admin);
    const registered = new Set((await admin.query<{ app_name: string }>('SELECT app_name FROM apps')).rows.map((r) => r.app_name));
    result.population.atEnd = registered.size;
    const extra = [...registered].filter((name) => !expected.has(name));
    result.unsettledApps.madeAfterFoundAbsent = extra.filter((name) => run.foundAbsent.has(name));
    result.appsUnaccounted = extra.filter((name) => !run.foundAbsent.has(name));
    for (const name of result.unsettledApps.madeAfterFoundAbsent) {
      await rawRequest(run.stack.settings.httpPort, { method: 'DELETE', path: `/apps/${name}?backup=false`, headers: { Authorization: `Bearer ${run.stack.adminKey}` } }).catch(() => undefined);
    }
    result.appsMissing = [...expected].filter((name) => !registered.has(name));
  } finally {
    await admin.end();
  }
  result.population.max = Math.max(result.population.max, result.population.atEnd);
}

/**
 * What the service logged: for each failure excused after its fault had ended, the error's own message; and every
 * error line not explained, by its request's excused failure or, with no request (background work), by a fault's window.
 */
export function explainErrorLogs(run: SoakRun): void {
  const { result, serviceLines } = run;
  for (const f of result.faults) {
    f.excusedAfterEnd = f.excusedAfterEnd.map((entry) => {
      const reqId = /\[([^\]]+)\]$/.exec(entry)?.[1];
      const logged = reqId ? serviceLines.find(({ line }) => line.includes(reqId) && /"level":(50|60)/.test(line))?.line : undefined;
      const error = logged ? /"err":\{"type":"[^"]*","message":"([^"]*)"/.exec(logged)?.[1] : undefined;
      return error ? entry.replace(/\[[^\]]+\]$/, `[logged: ${error}]`) : entry;
    });
  }
  for (const { at, line } of serviceLines) {
    if (!/"level":(50|60)/.test(line)) continue;
    const reqId = /"reqId":"([^"]+)"/.exec(line)?.[1];
    if (reqId ? run.excusedRequestIds.has(reqId) : run.windowOf(at)) continue;
    result.unexplainedErrorLogs.push(`${run.secondsSinceStart(at)} s ${summarizeLogLine(line)}`);
  }
  run.log(`checks done after ${run.secondsSinceStart()} s`);
}
