// The in-process service (test/app/): the app buildApp makes, as src/server.ts makes it, against this process's real
// Postgres (test/helpers/postgres.ts), reached with inject: no HTTP server, no nginx, no other process. Each test
// file builds its own app (and closes it); its log lines are kept, as the service would have written them.
// buildApp returns the app before it is ready: a test may add routes of its own first (`beforeReady`), and they
// run behind the same hooks and error handler as the service's own. Apps a file builds at once share its Postgres
// as two services would: build the second without a ready pool (READY_POOL_SIZE=0), since each pool gives new
// passwords to the prepared sets whose passwords it does not hold, the other pool's included.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { FastifyInstance, InjectOptions } from 'fastify';
import { buildApp } from '../../src/app.js';
import { loadConfig, type Config } from '../../src/shared/config.js';
import { newAdminKey } from '../../src/shared/secrets.js';
import { lineMatching } from './conditions.js';
import { sharedPostgres, type TestPostgres } from './postgres.js';
import { jsonResponse, provisioned, SCHEDULES_OFF, type JsonResponse, type ServiceClient } from './service-client.js';

export interface TestApp extends ServiceClient {
  app: FastifyInstance;
  config: Config;
  postgres: TestPostgres;
  /** BACKUP_DIR: a directory of this app's own. */
  backupDir: string;
  /** The service's log lines, parsed (every line is JSON). */
  logLines(): Array<Record<string, unknown>>;
  /** Any request: `remoteAddress` is the client's address as the service sees it (127.0.0.1 by default). */
  request(method: string, path: string, options?: { body?: unknown; headers?: Record<string, string>; remoteAddress?: string }): Promise<JsonResponse>;
  close(): Promise<void>;
}

export interface TestAppOptions {
  /** Settings of src/shared/config.ts on top of those that point the app at this process's Postgres. */
  env?: Record<string, string>;
  /** Runs before the app is ready: test-only routes, registered like the service's own. */
  beforeReady?: (app: FastifyInstance) => void | Promise<void>;
}

/** Inject's headers as fetch's Headers, so that tests read answers the same way in every tier. */
function headersOf(raw: Record<string, string | string[] | number | undefined>): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(raw)) {
    if (value === undefined) continue;
    for (const one of Array.isArray(value) ? value : [value]) headers.append(name, String(one));
  }
  return headers;
}

export async function buildTestApp({ env = {}, beforeReady }: TestAppOptions = {}): Promise<TestApp> {
  const postgres = await sharedPostgres();
  const backupDir = mkdtempSync(join(tmpdir(), 'pgprov-app-backups-'));
  const serviceLines: string[] = [];
  let partial = '';
  const sink = new Writable({
    write(chunk, _encoding, done) {
      const lines = (partial + String(chunk)).split('\n');
      partial = lines.pop() ?? '';
      serviceLines.push(...lines.filter(Boolean));
      done();
    },
  });
  // Backups that run by themselves are off unless a test turns them on: a daily turn falling inside another test
  // would take that test's app lock at a moment of its own choosing.
  const config = loadConfig({ ...postgres.serviceSettings(), BACKUP_DIR: backupDir, LOG_PRETTY: 'false', LOG_LEVEL: 'info', ...SCHEDULES_OFF, ...env });
  const adminKey = newAdminKey();
  const app = await buildApp(config, { adminKey, logStream: sink });
  await beforeReady?.(app);
  await app.ready();
  // The service's first reconcile (which also applies the schema of its own database) runs as it starts: the tests
  // begin once it has ended, as they would meet a service that has been up a moment.
  await lineMatching(serviceLines, /"msg":"reconcile (finished|failed)/, 'the service', 0, 30_000);

  const request: TestApp['request'] = async (method, path, { body, headers = {}, remoteAddress } = {}) => {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const options: InjectOptions = {
      method: method as InjectOptions['method'],
      url: path,
      headers: { ...(payload !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
      ...(payload !== undefined ? { payload } : {}),
      ...(remoteAddress ? { remoteAddress } : {}),
    };
    const response = await app.inject(options);
    return jsonResponse(response.statusCode, headersOf(response.headers), response.body);
  };
  const post = (path: string, body: unknown, headers: Record<string, string> = {}) => request('POST', path, { body, headers });

  return {
    app,
    config,
    postgres,
    backupDir,
    adminKey,
    serviceLines,
    logLines: () => serviceLines.map((line) => JSON.parse(line) as Record<string, unknown>),
    request,
    post,
    get: (path, headers = {}) => request('GET', path, { headers }),
    provision: (appName) => provisioned(post, adminKey, appName),
    admin: (method, path, body) => request(method, path, { body, headers: { authorization: `Bearer ${adminKey}` } }),
    waitForServiceLine: (pattern, from = 0, timeoutMs = 20_000) => lineMatching(serviceLines, pattern, 'the service', from, timeoutMs),
    superuser: (work, database) => postgres.superuser(work, database),
    allLogs: () => [...serviceLines, postgres.log()].join('\n'),
    async close() {
      await app.close();
      rmSync(backupDir, { recursive: true, force: true });
    },
  };
}
