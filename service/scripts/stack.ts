// `npm --prefix service run stack`: runs the local stack in the foreground until SIGINT/SIGTERM/SIGHUP, or until
// the npm that started it is gone (npm passes a SIGTERM only to its shell, which dies without passing it on).
// Settings come from the environment, then from the repo's .env (the environment wins): the stack's own
// (STACK_*, PG_BIN_DIR, DISK_RESERVE_MB, POSTGRES_PASSWORD) and every setting of the service's (src/shared/config.ts).
import { join, resolve } from 'node:path';
import { LocalStack, REPO_ROOT, StackError } from './lib/local-stack.js';
import { npmAndItsLayers, port, serviceSettings, SET_BY_THE_STACK, settingsFromEnvironment, watchStarters } from './lib/stack-environment.js';

function printWhereEverythingIs(stack: LocalStack): void {
  const { paths, settings } = stack;
  process.stdout.write(
    [
      '',
      'The local stack is up:',
      `  nginx (the public door)   ${stack.httpUrl}            POST /provision, GET /health`,
      `  service (direct)          ${stack.serviceUrl}`,
      `  PgBouncer (apps' door)    127.0.0.1:${settings.poolerPort}     every connection_string names it (TLS required)`,
      `  Postgres                  127.0.0.1:${settings.pgPort}     psql "postgres://postgres@127.0.0.1:${settings.pgPort}/postgres"${settings.directDoor ? '  (direct door on)' : ''}`,
      `  TLS CA certificate        ${paths.dir}/tls/ca.crt  (also GET ${stack.httpUrl}/tls/ca.crt)`,
      `  superuser password        ${settings.postgresPassword ? 'POSTGRES_PASSWORD (environment or .env)' : paths.passwordFile}`,
      `  logs                      ${paths.logs}/  (service.log, with the admin key; postgres.log; pgbouncer.log; nginx-access.log, nginx-error.log)`,
      `  data, backups             ${paths.dir}`,
      'Ctrl-C stops them all.',
      '',
    ].join('\n'),
  );
}

const say = (message: string) => process.stdout.write(`stack: ${message}\n`);
const env = settingsFromEnvironment();
let stopping = false;
let starting: Promise<void> = Promise.resolve();
let stack: LocalStack | undefined;

/**
 * Stops the parts in order (nginx, PgBouncer, the service, Postgres) once they have started, then exits: 0 when
 * asked to stop, 1 when a part failed (so that systemd's Restart=on-failure starts the stack again).
 */
function stopAll(why: string, exitCode = 0): void {
  if (stopping) return;
  stopping = true;
  say(`${why}: stopping nginx, PgBouncer, the service and Postgres`);
  starting
    .catch(() => {})
    .then(() => stack?.stop())
    .then(
      () => process.exit(exitCode),
      (err) => {
        say(`stop failed: ${String(err)}`);
        process.exit(1);
      },
    );
}

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => stopAll(signal));
watchStarters(npmAndItsLayers(), ({ name, pid }) => stopAll(`npm has exited (${name}, pid ${pid}, is gone)`));

let up = false;
try {
  const ignored = SET_BY_THE_STACK.filter((name) => name !== 'POSTGRES_PASSWORD' && process.env[name] !== undefined);
  if (ignored.length > 0) say(`not passed to the service, the stack sets them itself: ${ignored.join(', ')}`);
  stack = new LocalStack({
    stackDir: resolve(REPO_ROOT, env.STACK_DIR || '.stack'),
    httpPort: port(env, 'STACK_HTTP_PORT', 8088),
    pgPort: port(env, 'STACK_PG_PORT', 54329),
    servicePort: port(env, 'STACK_SERVICE_PORT', 8080),
    poolerPort: port(env, 'STACK_POOLER_PORT', 64329),
    directDoor: env.STACK_DIRECT_DOOR === 'on',
    postgresPassword: env.POSTGRES_PASSWORD ?? '',
    pgBinDir: env.PG_BIN_DIR || '/usr/lib/postgresql/15/bin',
    pgOsUser: env.STACK_PG_OS_USER || 'postgres',
    diskReserveMb: env.DISK_RESERVE_MB ? Number(env.DISK_RESERVE_MB) : undefined,
    serviceEnv: { LOG_PRETTY: String(Boolean(process.stdout.isTTY)), ...serviceSettings(env) },
    onServiceLine: (line) => {
      if (!stopping) process.stdout.write(`${line}\n`); // while stopping, the service's lines go to its log only
    },
    onProgress: say,
    onPartExit: (part, how) => {
      if (!up) return; // a part that fails while starting fails the start itself, with its own message
      const logs: Record<string, string> = { service: 'service.log', postgres: 'postgres.log', pgbouncer: 'pgbouncer.log', nginx: 'nginx-error.log' };
      const log = stack ? join(stack.paths.logs, logs[part] ?? '') : '';
      stopAll(`${part} exited on its own (${how}; see ${log})`, 1);
    },
  });
  starting = stack.start();
  await starting;
  up = true;
} catch (err) {
  if (!stopping) {
    say(err instanceof StackError ? err.message : String((err as Error)?.stack ?? err));
    process.exit(1);
  } // else stopAll exits once everything has stopped
}
if (up && !stopping && stack) printWhereEverythingIs(stack);
