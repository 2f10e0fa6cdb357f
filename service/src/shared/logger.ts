// Owns log settings: JSON lines (pretty only on a terminal), and the fixed redaction paths that keep
// keys, passwords and connection strings out of every log line.
import type { FastifyBaseLogger, FastifyServerOptions } from 'fastify';
import type { LoggerOptions } from 'pino';
import type { Config } from './config.js';

const SECRET_FIELDS = ['admin_key', 'password', 'connection_string', 'database_url', 'authorization', 'POSTGRES_PASSWORD'];

export const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  ...SECRET_FIELDS,
  ...SECRET_FIELDS.map((field) => `*.${field}`),
  ...SECRET_FIELDS.map((field) => `*.*.${field}`),
];

const REQUEST_ID = Symbol('request id');
type RequestLogger = FastifyBaseLogger & { [REQUEST_ID]?: unknown };

/**
 * Fastify's childLoggerFactory: each request's logger keeps its request id on itself, and the mixin below
 * adds it to each line the request logs. Given as a binding instead, pino would run the id through every
 * redaction path (they start with wildcards) for each request, logged or not: the costliest step of a
 * GET /health answer (BENCHMARKS.md). Lines are redacted as before.
 */
export const requestLogger: NonNullable<FastifyServerOptions['childLoggerFactory']> = (logger, bindings, options) => {
  const child: RequestLogger = logger.child({}, options);
  child[REQUEST_ID] = bindings.reqId;
  return child;
};

function addRequestId(_line: object, _level: number, logger: object): object {
  const reqId = (logger as RequestLogger)[REQUEST_ID];
  return reqId === undefined ? {} : { reqId };
}

/** A Postgres error: it carries a SQLSTATE and a severity. */
function isPostgresError(err: Error): boolean {
  const { code, severity } = err as { code?: unknown; severity?: unknown };
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && typeof severity === 'string';
}

interface LoggedError {
  type: string;
  message?: string;
  code?: unknown;
  statusCode?: unknown;
  exitCode?: unknown;
  signal?: unknown;
  stack?: string;
  cause?: LoggedError | unknown;
}

/**
 * The `err` serializer: what an error may put in a log line. Postgres's messages (and their detail, hint,
 * where) can quote what a tenant chose: object names, values of its rows, text its functions raise, newlines
 * and a fake `ADMIN KEY: sk_…` line included. So a Postgres error is logged by its SQLSTATE alone, and any other
 * error by its type, message, codes and stack, never by the rest of its fields (a child process's stderr).
 */
export function serializeError(err: unknown, depth = 0): LoggedError | unknown {
  if (!(err instanceof Error)) return err;
  const { code, statusCode, exitCode, signal, cause } = err as { code?: unknown; statusCode?: unknown; exitCode?: unknown; signal?: unknown; cause?: unknown };
  const logged: LoggedError = isPostgresError(err)
    ? { type: 'PostgresError', code, message: `Postgres error ${String(code)} (its text is not logged: it can quote tenant data)` }
    : { type: err.constructor?.name ?? err.name, message: err.message, code, statusCode, exitCode, signal, stack: err.stack };
  if (cause !== undefined && depth < 5) logged.cause = serializeError(cause, depth + 1);
  return logged;
}

export function loggerOptions(config: Config, stdoutIsTty = process.stdout.isTTY): LoggerOptions {
  const pretty = config.LOG_PRETTY ?? stdoutIsTty;
  return {
    level: config.LOG_LEVEL,
    serializers: { err: serializeError },
    mixin: addRequestId,
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    ...(pretty ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:standard' } } } : {}),
  };
}
