// What a test asks of the service, whether it runs in this process (test/helpers/app.ts: buildApp and inject) or
// as the stack's process behind nginx (test/helpers/stack.ts): the same calls, so that a test reads the same in
// either tier.
import pg from 'pg';

/** Every schedule of backups off (src/shared/schedule.ts): the test tiers' default; tests of the schedules set their own. */
export const SCHEDULES_OFF = { BACKUP_SCHEDULE: 'off', CLUSTER_BACKUP_SCHEDULE: 'off', OFFSITE_SCHEDULE: 'off' };

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

export interface ServiceClient {
  /** The admin key the service takes. */
  adminKey: string;
  /** Every line the service has logged so far. */
  serviceLines: string[];
  post(path: string, body: unknown, headers?: Record<string, string>): Promise<JsonResponse>;
  get(path: string, headers?: Record<string, string>): Promise<JsonResponse>;
  provision(appName: string): Promise<ProvisionedApp>;
  /** An admin request with the admin key as a Bearer token. */
  admin(method: string, path: string, body?: unknown): Promise<JsonResponse>;
  /** Waits until the service logs a line matching `pattern`, looking at lines from index `from` on. */
  waitForServiceLine(pattern: RegExp, from?: number, timeoutMs?: number): Promise<string>;
  /** A superuser connection (TCP 127.0.0.1, as the operator's psql), for checking the catalogs. */
  superuser<T>(work: (client: pg.Client) => Promise<T>, database?: string): Promise<T>;
  /** The text of every log there is: the service's, Postgres's (and nginx's, through the stack). */
  allLogs(): string;
}

/** A JSON answer: the body parsed, or {} when it is not JSON. */
export function jsonResponse(status: number, headers: Headers, text: string): JsonResponse {
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = {};
  }
  return { status, headers, body, text };
}

export async function request(url: string, init: RequestInit = {}): Promise<JsonResponse> {
  const response = await fetch(url, init);
  return jsonResponse(response.status, response.headers, await response.text());
}

/** Runs `work` on a new superuser connection to `database`; always closes it. */
export async function asSuperuser<T>(connection: pg.ClientConfig, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client(connection);
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/** The provision call both tiers make: the admin key in the body, 201 expected. */
export async function provisioned(post: ServiceClient['post'], adminKey: string, appName: string): Promise<ProvisionedApp> {
  const response = await post('/provision', { app_name: appName, admin_key: adminKey });
  if (response.status !== 201) throw new Error(`provision ${appName}: ${response.status} ${response.text}`);
  return response.body as unknown as ProvisionedApp;
}
