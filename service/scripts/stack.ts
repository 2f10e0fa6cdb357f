// `npm --prefix service run stack`: runs the local stack in the foreground until SIGINT/SIGTERM.
// Settings come from the environment, then from the repo's .env (the environment wins).
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseEnv } from 'node:util';
import { LocalStack, REPO_ROOT, StackError } from './local-stack.js';

function settingsFromEnvironment(): Record<string, string | undefined> {
  const envFile = join(REPO_ROOT, '.env');
  const fromFile = existsSync(envFile) ? parseEnv(readFileSync(envFile, 'utf8')) : {};
  return { ...fromFile, ...process.env };
}

function port(env: Record<string, string | undefined>, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1 || value > 65535) throw new StackError(`${name} must be a port number, got ${JSON.stringify(raw)}`);
  return value;
}

const env = settingsFromEnvironment();
const isTty = Boolean(process.stdout.isTTY);
let stack: LocalStack;
try {
  stack = new LocalStack({
    stackDir: resolve(REPO_ROOT, env.STACK_DIR || '.stack'),
    httpPort: port(env, 'STACK_HTTP_PORT', 8088),
    pgPort: port(env, 'STACK_PG_PORT', 54329),
    servicePort: port(env, 'STACK_SERVICE_PORT', 8080),
    postgresPassword: env.POSTGRES_PASSWORD ?? '',
    pgBinDir: env.PG_BIN_DIR || '/usr/lib/postgresql/15/bin',
    pgOsUser: env.STACK_PG_OS_USER || 'postgres',
    diskReserveMb: env.DISK_RESERVE_MB ? Number(env.DISK_RESERVE_MB) : undefined,
    serviceEnv: {
      LOG_PRETTY: String(isTty),
      ...Object.fromEntries(
        ['LOG_LEVEL', 'APP_CONNECTION_LIMIT', 'APP_TEMP_FILE_LIMIT', 'APP_STATEMENT_TIMEOUT', 'APP_IDLE_IN_TRANSACTION_TIMEOUT', 'DATABASE_POOL_SIZE']
          .filter((name) => env[name])
          .map((name) => [name, env[name]!]),
      ),
    },
    onServiceLine: (line) => process.stdout.write(`${line}\n`),
  });
  await stack.start();
} catch (err) {
  process.stderr.write(`stack: ${err instanceof StackError ? err.message : String((err as Error)?.stack ?? err)}\n`);
  process.exit(1);
}

const { paths, settings } = stack;
process.stdout.write(
  [
    '',
    'The local stack is up:',
    `  nginx (the public door)   ${stack.httpUrl}            POST /provision, GET /health`,
    `  service (direct)          ${stack.serviceUrl}`,
    `  Postgres                  127.0.0.1:${settings.pgPort}     psql "postgres://postgres@127.0.0.1:${settings.pgPort}/postgres"`,
    `  superuser password        ${settings.postgresPassword ? 'POSTGRES_PASSWORD (environment or .env)' : paths.passwordFile}`,
    `  data, logs, backups       ${paths.dir}`,
    'Ctrl-C stops all three.',
    '',
  ].join('\n'),
);

let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    process.stdout.write(`\n${signal}: stopping nginx, the service and Postgres…\n`);
    stack.stop().then(
      () => process.exit(0),
      (err) => {
        process.stderr.write(`stack: stop failed: ${String(err)}\n`);
        process.exit(1);
      },
    );
  });
}
