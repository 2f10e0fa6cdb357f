// Starts a real local stack (Postgres 15, the built service, nginx) in a fresh temporary STACK_DIR on free
// ports, for one test file. Everything the tests check goes through it as an operator or an app would.
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { LocalStack, throwawayStackSettings, type StackSettings } from '../../scripts/lib/local-stack.js';

export { freePort } from '../../scripts/lib/local-stack.js';

export interface TestStack {
  stack: LocalStack;
  /** Every line the service has written so far (stdout and stderr). */
  serviceLines: string[];
  post(path: string, body: unknown, headers?: Record<string, string>): Promise<JsonResponse>;
  get(path: string, headers?: Record<string, string>): Promise<JsonResponse>;
  provision(appName: string): Promise<ProvisionedApp>;
  /** An admin request through nginx with the current key as a Bearer token. */
  admin(method: string, path: string, body?: unknown): Promise<JsonResponse>;
  /** Waits until the service writes a line matching `pattern`, looking at lines from index `from` on. */
  waitForServiceLine(pattern: RegExp, from?: number, timeoutMs?: number): Promise<string>;
  /** A superuser connection (TCP 127.0.0.1, as the operator's psql), for checking the catalogs. */
  superuser<T>(work: (client: pg.Client) => Promise<T>, database?: string): Promise<T>;
  /** The text of every log the stack writes: the service's output, Postgres's and nginx's logs. */
  allLogs(): string;
  stop(): Promise<void>;
}

export interface JsonResponse {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
  text: string;
}

export interface ProvisionedApp {
  connection_string: string;
  app_name: string;
  database: string;
  username: string;
  host: string;
  port: number;
}

export async function request(url: string, init: RequestInit = {}): Promise<JsonResponse> {
  const response = await fetch(url, init);
  const text = await response.text();
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = {};
  }
  return { status: response.status, headers: response.headers, body, text };
}

export async function startTestStack(overrides: Partial<StackSettings> = {}): Promise<TestStack> {
  const serviceLines: string[] = [];
  const settings = await throwawayStackSettings('test', {
    postgresPassword: 'test-superuser-password-Zq81',
    serviceEnv: { LOG_PRETTY: 'false', LOG_LEVEL: 'info' },
    onServiceLine: (line) => serviceLines.push(line),
    ...overrides,
  });
  const { stackDir } = settings;
  const stack = new LocalStack(settings);
  await stack.start();

  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    request(`${stack.httpUrl}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });

  const testStack: TestStack = {
    stack,
    serviceLines,
    post,
    get: (path, headers = {}) => request(`${stack.httpUrl}${path}`, { headers }),
    async provision(appName) {
      const response = await post('/provision', { app_name: appName, admin_key: stack.adminKey });
      if (response.status !== 201) throw new Error(`provision ${appName}: ${response.status} ${response.text}`);
      return response.body as unknown as ProvisionedApp;
    },
    admin(method, path, body) {
      const headers: Record<string, string> = { authorization: `Bearer ${stack.adminKey}` };
      if (body !== undefined) headers['content-type'] = 'application/json';
      return request(`${stack.httpUrl}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    },
    async waitForServiceLine(pattern, from = 0, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const line = serviceLines.slice(from).find((l) => pattern.test(l));
        if (line) return line;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      throw new Error(`the service wrote no line matching ${pattern} within ${timeoutMs} ms`);
    },
    async superuser(work, database = 'postgres') {
      const client = new pg.Client(stack.superuserConnection(database));
      await client.connect();
      try {
        return await work(client);
      } finally {
        await client.end();
      }
    },
    allLogs() {
      const files = ['postgres.log', 'nginx-access.log', 'nginx-error.log', 'nginx-stderr.log'];
      const fileText = files.map((file) => {
        try {
          return readFileSync(join(stack.paths.logs, file), 'utf8');
        } catch {
          return '';
        }
      });
      return [...serviceLines, ...fileText].join('\n');
    },
    async stop() {
      await stack.stop();
      rmSync(stackDir, { recursive: true, force: true });
    },
  };
  return testStack;
}

/** Connects as an app would, with a connection string exactly as the service returned it. */
export async function connectAs(connectionString: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: 5000 });
  client.on('error', () => {});
  await client.connect();
  return client;
}

/** A connection string for the same login, pointed at another database. */
export function withDatabase(connectionString: string, database: string): string {
  const url = new URL(connectionString);
  url.pathname = `/${database}`;
  return url.toString();
}

/** Runs `work` as the app; always closes the connection. */
export async function asApp<T>(connectionString: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = await connectAs(connectionString);
  try {
    return await work(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/** The error a promise rejects with (fails the test if it resolves). */
export async function rejectionOf(promise: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await promise;
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected the operation to fail, but it succeeded');
}

/** Calls `probe` until `done` holds for its result (every 50 ms, for at most `timeoutMs`); returns the last result. */
export async function eventually<T>(probe: () => Promise<T>, done: (result: T) => boolean, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await probe();
    if (done(result) || Date.now() > deadline) return result;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
