// The soak: mixed traffic from 16 clients against the local stack (loopback only) for a bounded time, with a
// fault injected at a fixed interval, then the checks of RELIABILITY.md. It stops by itself.
//   npm --prefix service run soak                         10 minutes, a fault every minute; writes ../RELIABILITY.md
//   SOAK_SECONDS=45 SOAK_FAULT_EVERY_SECONDS=12 …         shorter (the tests run a 45-second version)
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { LocalStack, REPO_ROOT, throwawayStackSettings } from './local-stack.js';
import { rssBytes, signalAll } from './process-stats.js';
import { rawRequest } from '../test/helpers/raw-http.js';
import { APP_SQL } from '../src/shared/object-names.js';

export interface SoakOptions {
  seconds: number;
  faultEverySeconds: number;
  clients: number;
  out?: string;
  log?: (line: string) => void;
}

export interface SoakResult {
  seconds: number;
  requests: number;
  byStatus: Record<string, number>;
  byOperation: Record<string, number>;
  faults: Array<{ at: number; name: string }>;
  serverErrorsOutsideFaults: string[];
  /** 503s of the service's own back-pressure: every backup slot taken (retry after 5 s). */
  busy: number;
  timeouts: number;
  appsChecked: number;
  /** Apps registered at the end (the population the memory figures were measured with). */
  appsAtEnd: number;
  appsNotConnecting: string[];
  halfMade: string[];
  rssSecondMinute: number;
  rssEnd: number;
  /** The service's memory, sampled every MEMORY_SAMPLE_MS from the end of the first minute. */
  memory: MemorySample[];
  unexplainedErrorLogs: string[];
}

export interface MemorySample {
  /** Seconds since the start. */
  at: number;
  rss: number;
  /** V8's heap in use and its size (prom-client's default metrics, from GET /metrics on the service's port). */
  heapUsed: number;
  heapTotal: number;
}

interface Window {
  from: number;
  to: number;
}

/** Between two requests of one client: 16 clients then send a few hundred requests a second, like busy operators. */
const CLIENT_PAUSE_MS = 40;
/**
 * Apps each client keeps at most: at the cap, a provision becomes a delete. The population grows for about
 * the first minute and a half, then holds (16 × 40 = 640 apps), so that memory measured from minute 2 on
 * shows what the service keeps, not how many apps there are.
 */
const APPS_PER_CLIENT = 40;
const FAULT_GRACE_MS = 12_000; // the longest a request may legitimately take to fail after a fault (10 s bounds)
const MEMORY_SAMPLE_MS = 5_000;

async function heapBytes(serviceUrl: string): Promise<{ heapUsed: number; heapTotal: number }> {
  try {
    const text = await (await fetch(`${serviceUrl}/metrics`, { signal: AbortSignal.timeout(12_000) })).text();
    const value = (name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN);
    return { heapUsed: value('pgprov_nodejs_heap_size_used_bytes'), heapTotal: value('pgprov_nodejs_heap_size_total_bytes') };
  } catch {
    return { heapUsed: NaN, heapTotal: NaN }; // the service restarting, or Postgres frozen past the timeout
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
  const result: SoakResult = {
    seconds: options.seconds,
    requests: 0,
    byStatus: {},
    byOperation: {},
    faults: [],
    serverErrorsOutsideFaults: [],
    busy: 0,
    timeouts: 0,
    appsChecked: 0,
    appsAtEnd: 0,
    appsNotConnecting: [],
    halfMade: [],
    rssSecondMinute: NaN,
    rssEnd: NaN,
    memory: [],
    unexplainedErrorLogs: [],
  };
  const windows: Window[] = [];
  /** Whether a request that ran from `start` to `end` overlapped a fault (or the grace after it). */
  const inFault = (start: number, end = start) => windows.some((w) => end >= w.from && start <= w.to + FAULT_GRACE_MS);
  /** Apps the clients were told exist, with their current connection strings. */
  const known = new Map<string, string>();
  /** Apps whose last operation's outcome is unknown (no answer, or a 5xx): complete or absent, either is right. */
  const uncertain = new Set<string>();

  try {
    await stack.start();
    const started = Date.now();
    const deadline = started + options.seconds * 1000;
    let counter = 0;

    /** One request from client `id`, from its own loopback address (rate limits are per address, as for real clients). */
    const call = async (id: number, operation: string, method: string, path: string, body?: unknown) => {
      const at = Date.now();
      let status = 0;
      let json: Record<string, unknown> = {};
      try {
        const response = await rawRequest(
          stack.settings.httpPort,
          { method, path, headers: { Authorization: `Bearer ${stack.adminKey}`, ...(body ? { 'Content-Type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) },
          `127.0.0.${10 + id}`,
          15_000,
        );
        status = response.status;
        try {
          json = JSON.parse(response.body) as Record<string, unknown>;
        } catch {
          json = {};
        }
      } catch {
        result.timeouts++;
      }
      result.requests++;
      result.byStatus[String(status)] = (result.byStatus[String(status)] ?? 0) + 1;
      result.byOperation[operation] = (result.byOperation[operation] ?? 0) + 1;
      // A 503 that says every backup slot is taken (with Retry-After) is the service's own back-pressure, as
      // documented, not a failure: 16 clients back up far more at once than BACKUP_MAX_CONCURRENT allows.
      const busy = status === 503 && typeof json.message === 'string' && json.message.startsWith('too many ');
      if (busy) result.busy++;
      if ((status >= 500 || status === 0) && !busy && !inFault(at, Date.now())) {
        const message = typeof json.message === 'string' ? ` (${json.message})` : '';
        result.serverErrorsOutsideFaults.push(`${new Date(at).toISOString()} ${operation} ${method} ${path} → ${status}${message}`);
      }
      return { status, json };
    };

    const client = async (id: number) => {
      const mine: string[] = [];
      while (Date.now() < deadline) {
        let roll = Math.random();
        if (roll < 0.22 && mine.length >= APPS_PER_CLIENT) roll = 0.6; // at the cap: delete instead
        if (roll < 0.22 || mine.length === 0) {
          const name = `soak_${id}_${(counter++).toString(36)}`;
          const { status, json } = await call(id, 'provision', 'POST', '/provision', { app_name: name });
          if (status === 201) {
            known.set(name, String(json.connection_string));
            mine.push(name);
          } else if (status >= 500 || status === 0) {
            uncertain.add(name);
          }
        } else if (roll < 0.35) {
          await call(id, 'list', 'GET', '/apps');
        } else if (roll < 0.45) {
          await call(id, 'get', 'GET', `/apps/${mine[Math.floor(Math.random() * mine.length)]}`);
        } else if (roll < 0.55) {
          const name = mine[Math.floor(Math.random() * mine.length)]!;
          const { status, json } = await call(id, 'rotate', 'POST', `/apps/${name}/rotate`);
          if (status === 200) known.set(name, String(json.connection_string));
          else if (status >= 500 || status === 0) uncertain.add(name);
        } else if (roll < 0.6) {
          await call(id, 'backup', 'POST', `/apps/${mine[Math.floor(Math.random() * mine.length)]}/backups`);
        } else if (roll < 0.68) {
          const name = mine.splice(Math.floor(Math.random() * mine.length), 1)[0]!;
          const { status } = await call(id, 'delete', 'DELETE', `/apps/${name}?backup=false`);
          if (status === 200) known.delete(name);
          else if (status >= 500 || status === 0) uncertain.add(name);
          else mine.push(name);
        } else if (roll < 0.85) {
          await call(id, 'health', 'GET', '/health');
        } else {
          // Hostile: a wrong key or a bad body, from other loopback addresses (so lockouts hit only them).
          const source = `127.0.0.${100 + Math.floor(Math.random() * 150)}`;
          const at = Date.now();
          const bad = Math.random() < 0.5 ? { app_name: 'BAD NAME', admin_key: stack.adminKey } : { app_name: 'valid_name', admin_key: 'sk_wrong' };
          const response = await rawRequest(stack.settings.httpPort, { method: 'POST', path: '/provision', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(bad) }, source).catch(() => ({ status: 0 }));
          result.requests++;
          result.byOperation.hostile = (result.byOperation.hostile ?? 0) + 1;
          result.byStatus[String(response.status)] = (result.byStatus[String(response.status)] ?? 0) + 1;
          if ((response.status >= 500 || response.status === 0) && !inFault(at, Date.now())) result.serverErrorsOutsideFaults.push(`${new Date(at).toISOString()} hostile → ${response.status}`);
        }
        await sleep(CLIENT_PAUSE_MS);
      }
    };

    // The service is killed once, early (before the memory baseline); the rest are Postgres's faults.
    const faults: Array<[string, () => Promise<void>]> = [
      ['service killed (SIGKILL) and restarted', async () => {
        await stack.stopService('SIGKILL');
        await stack.startService();
      }],
      ['Postgres frozen (SIGSTOP) for 5 s', async () => {
        const pids = stack.postgresProcessIds();
        signalAll(pids, 'SIGSTOP');
        await sleep(5_000);
        signalAll(pids, 'SIGCONT');
      }],
      ['Postgres restarted (fast shutdown)', async () => {
        await stack.stopPostgres();
        await stack.startPostgres();
      }],
      ["the service's backends terminated", async () => {
        const admin = new pg.Client(stack.superuserConnection());
        await admin.connect();
        await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pg-provisioner'");
        await admin.end();
      }],
    ];
    const faultLoop = async () => {
      let index = 0;
      for (let next = started + options.faultEverySeconds * 1000; next < deadline - 5_000; next += options.faultEverySeconds * 1000) {
        await sleep(Math.max(0, next - Date.now()));
        const [name, inject] = index === 0 ? faults[0]! : faults[1 + ((index - 1) % (faults.length - 1))]!;
        index++;
        const window = { from: Date.now(), to: Infinity };
        windows.push(window);
        log(`fault: ${name}`);
        result.faults.push({ at: Math.round((window.from - started) / 1000), name });
        await inject();
        window.to = Date.now();
      }
    };
    const memoryProbe = async () => {
      const second = Math.min(120, options.seconds / 3);
      await sleep(second * 1000);
      result.rssSecondMinute = rssBytes(stack.servicePid);
    };
    const memorySampler = async () => {
      for (let next = started + Math.min(60_000, (options.seconds * 1000) / 4); next < deadline; next += MEMORY_SAMPLE_MS) {
        await sleep(Math.max(0, next - Date.now()));
        const rss = rssBytes(stack.servicePid);
        const heap = await heapBytes(stack.serviceUrl);
        result.memory.push({ at: Math.round((next - started) / 1000), rss, ...heap });
      }
    };

    await Promise.all([...Array.from({ length: options.clients }, (_, i) => client(i)), faultLoop(), memoryProbe(), memorySampler()]);
    result.rssEnd = rssBytes(stack.servicePid);

    // The end: let the reconciler run, then check every app the clients were told of, and the catalogs.
    const from = serviceLines.length;
    await stack.stopService();
    await stack.startService();
    for (let i = 0; i < 200 && !serviceLines.slice(from).some((l) => l.line.includes('reconcile finished')); i++) await sleep(100);
    for (const [name, connectionString] of known) {
      if (uncertain.has(name)) continue;
      result.appsChecked++;
      const app = new pg.Client({ connectionString, connectionTimeoutMillis: 5_000 });
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
      result.appsAtEnd = Number((await admin.query('SELECT count(*) AS n FROM apps')).rows[0].n);
    } finally {
      await admin.end();
    }
    for (const { at, line } of serviceLines) {
      if (!/"level":(50|60)/.test(line)) continue;
      if (inFault(at) || line.includes('CRASH_AT')) continue;
      result.unexplainedErrorLogs.push(line.slice(0, 300));
    }
  } finally {
    await stack.stop().catch(() => {});
    rmSync(stackDir, { recursive: true, force: true });
  }
  if (options.out) writeFileSync(options.out, renderReliability(result, options));
  return result;
}

export function renderReliability(r: SoakResult, o: SoakOptions): string {
  const mb = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MB`;
  const growth = (r.rssEnd / r.rssSecondMinute - 1) * 100;
  return [
    '# Reliability',
    '',
    'How pg-provisioner behaves when things go wrong, and the evidence. Each fault below has a test in',
    '`npm --prefix service test` (`service/test/faults.test.ts`, `crash.test.ts`, `lifecycle.test.ts`); the soak',
    '(`npm --prefix service run soak`) runs them all, repeatedly, under mixed traffic. A 45-second soak runs in the',
    'tests (`service/test/soak.test.ts`).',
    '',
    '## Faults survived',
    '',
    '| fault | what the service does | test |',
    '| --- | --- | --- |',
    '| Postgres frozen (SIGSTOP) | every request answers within 10 s (pool connection 3 s + answer 7 s; a CREATE or DROP DATABASE already running when Postgres froze, up to 60 s) with a JSON 503; `/health` reports 503 within 2 s (one ping, 1.5 s timeout, shared for 250 ms); after SIGCONT everything works without a restart | faults.test.ts |',
    "| Postgres restarted; the service's backends terminated | dead pool connections are dropped (one idle for over a second is tested before use), the next requests succeed; every app the client was told of still works | faults.test.ts |",
    '| the service killed (SIGKILL) in the middle of provision, rotate, restore, delete, or ready-pool preparation | on restart the reconciler leaves every app complete or absent | crash.test.ts |',
    '| the service down behind nginx | nginx answers a JSON 503 at once (connection refused); routes again when the service is back, without a reload | faults.test.ts, lifecycle.test.ts |',
    "| one tenant takes every connection slot | the service keeps working through `superuser_reserved_connections = 3`; the tenant's own limit is `APP_CONNECTION_LIMIT` | faults.test.ts |",
    '| stack restart | every app and its data survive; the admin key changes | lifecycle.test.ts |',
    '| graceful shutdown (SIGTERM) | requests in flight finish (their keep-alive connections are closed after); work cut by a harder stop is reconciled | lifecycle.test.ts |',
    "| one tenant fills Postgres's disk | requests answer a JSON 503 in the service's words (\"out of disk space\" when Postgres says so) and leave nothing half-made; Postgres, unable to write its WAL, stops and cannot restart. The operator deletes the disk reserve set aside at first start (init/00-disk-reserve.sh), restarts Postgres, and deletes the tenant through the API (README: Troubleshooting); the service reconnects by itself and every other app keeps its data | disk-full.test.ts (Postgres on a 160 MB tmpfs) |",
    '',
    'The one fault the service cannot get through on its own is the full disk: Postgres 15 has no per-database',
    'quota, and a Postgres that cannot write its WAL stops. The reserve is the operator\'s way back in.',
    '',
    `## Soak: ${o.seconds} s, ${o.clients} clients, a fault every ${o.faultEverySeconds} s`,
    '',
    `Run on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, local stack, loopback only.`,
    '',
    `- Requests: ${r.requests} (${Object.entries(r.byOperation).map(([k, v]) => `${k} ${v}`).join(', ')})`,
    `- Answers by status: ${Object.entries(r.byStatus).sort().map(([k, v]) => `${k === '0' ? 'no answer' : k} ${v}`).join(', ')}`,
    `- Faults: ${r.faults.map((f) => `${f.at} s ${f.name}`).join('; ')}`,
    `- 503 "too many backups and restores are running at once" (back-pressure, with Retry-After; not counted as failures): ${r.busy}`,
    `- 5xx or no answer outside the fault windows (a fault and the ${FAULT_GRACE_MS / 1000} s after it): **${r.serverErrorsOutsideFaults.length}**${r.serverErrorsOutsideFaults.length ? ` (${r.serverErrorsOutsideFaults.slice(0, 5).join('; ')})` : ''}`,
    `- Apps: each client keeps at most ${APPS_PER_CLIENT} (a provision at the cap becomes a delete); ${r.appsAtEnd} registered at the end`,
    `- Apps the clients were told exist, checked at the end with their current connection strings: ${r.appsChecked}; not connecting: **${r.appsNotConnecting.length}**`,
    `- Half-made or half-removed objects after reconciliation: **${r.halfMade.length}**${r.halfMade.length ? ` (${r.halfMade.slice(0, 5).join('; ')})` : ''}`,
    `- Service RSS: ${mb(r.rssSecondMinute)} at ${Math.min(120, o.seconds / 3).toFixed(0)} s, ${mb(r.rssEnd)} at the end: **${growth >= 0 ? '+' : ''}${growth.toFixed(1)}%** (target < 10%)`,
    `- Error lines logged outside the fault windows: **${r.unexplainedErrorLogs.length}**${r.unexplainedErrorLogs.length ? ` (${r.unexplainedErrorLogs.slice(0, 3).join('; ')})` : ''}`,
    '',
    ...memoryReport(r),
  ].join('\n');
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
  }));
  const first = rows.find((row) => row.minute >= 1) ?? rows[0]!; // minute 2: the baseline the target names
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
    '### Memory, minute by minute',
    '',
    `Sampled every ${MEMORY_SAMPLE_MS / 1000} s: RSS from /proc, V8's heap from the service's /metrics. The service runs with \`--max-old-space-size=96\`, as in its image.`,
    '',
    '| minute | RSS (highest) | heap in use (lowest) | heap size (highest) |',
    '| --- | --- | --- | --- |',
    ...rows.map((row) => `| ${row.minute + 1} | ${mb(row.rss)} | ${mb(row.heapFloor)} | ${mb(row.heapTotal)} |`),
    '',
    `From minute ${first.minute + 1} to minute ${last.minute + 1}: RSS ${change(first.rss, last.rss)} (trend ${signed(slope(measured.map((row) => row.rss)))} MB per minute), heap size ${change(first.heapTotal, last.heapTotal)}. The lowest heap in use of each minute, close to what survives a collection, stayed between ${mb(Math.min(...floors))} and ${mb(Math.max(...floors))} (trend ${signed(slope(floors))} MB per minute).`,
    '',
    `Each client keeps at most ${APPS_PER_CLIENT} apps, so the population stops growing before minute 2: without that cap it grows all run long (to about 4,000 apps in 10 minutes), and with it, legitimately, what the service holds and answers per request (GET /apps lists every app). The cap keeps this measure about what the service keeps.`,
    '',
  ];
}

// CLI
if (process.argv[1]?.endsWith('soak.ts')) {
  const seconds = Number(process.env.SOAK_SECONDS ?? 600);
  const faultEverySeconds = Number(process.env.SOAK_FAULT_EVERY_SECONDS ?? 60);
  const result = await runSoak({ seconds, faultEverySeconds, clients: 16, out: join(REPO_ROOT, 'RELIABILITY.md'), log: (line) => process.stderr.write(`${line}\n`) });
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
}
