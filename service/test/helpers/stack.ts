// Starts a real local stack (Postgres 15, the built service, nginx) in a fresh temporary STACK_DIR on free
// ports, for one test file (test/stack/). Everything the tests check goes through it as an operator or an app would.
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { LocalStack, throwawayStackSettings, type StackSettings } from '../../scripts/lib/local-stack.js';
import { trustAuthority } from './app-sessions.js';
import { lineMatching } from './conditions.js';
import { asSuperuser, provisioned, request, SCHEDULES_OFF, type ServiceClient } from './service-client.js';

export { freePort } from '../../scripts/lib/local-stack.js';

export interface TestStack extends ServiceClient {
  stack: LocalStack;
  stop(): Promise<void>;
}

export async function startTestStack(overrides: Partial<StackSettings> = {}): Promise<TestStack> {
  const serviceLines: string[] = [];
  const settings = await throwawayStackSettings('test', {
    postgresPassword: 'test-superuser-password-Zq81',
    onServiceLine: (line) => serviceLines.push(line),
    ...overrides,
    // Backups that run by themselves are off unless the test turns them on (SCHEDULES_OFF, test/helpers/app.ts).
    serviceEnv: { LOG_PRETTY: 'false', LOG_LEVEL: 'info', ...SCHEDULES_OFF, ...overrides.serviceEnv },
  });
  const { stackDir } = settings;
  const stack = new LocalStack(settings);
  try {
    await stack.start(); // which stops whatever it started, when it fails
  } catch (err) {
    rmSync(stackDir, { recursive: true, force: true });
    throw err;
  }

  trustAuthority(stack.postgres.tlsFiles().caCertificate);

  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    request(`${stack.httpUrl}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });

  const testStack: TestStack = {
    stack,
    get adminKey() {
      return stack.adminKey; // a new one after each restart of the service
    },
    serviceLines,
    post,
    get: (path, headers = {}) => request(`${stack.httpUrl}${path}`, { headers }),
    provision: (appName) => provisioned(post, stack.adminKey, appName),
    admin(method, path, body) {
      const headers: Record<string, string> = { authorization: `Bearer ${stack.adminKey}` };
      if (body !== undefined) headers['content-type'] = 'application/json';
      return request(`${stack.httpUrl}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    },
    waitForServiceLine: (pattern, from = 0, timeoutMs = 20_000) => lineMatching(serviceLines, pattern, 'the service', from, timeoutMs),
    superuser: (work, database = 'postgres') => asSuperuser(stack.superuserConnection(database), work),
    allLogs() {
      const files = ['postgres.log', 'pgbouncer.log', 'nginx-access.log', 'nginx-error.log', 'nginx-stderr.log'];
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
