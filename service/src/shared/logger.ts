// Owns log settings: JSON lines (pretty only on a terminal), and the fixed redaction paths that keep
// keys, passwords and connection strings out of every log line.
import type { LoggerOptions } from 'pino';
import type { Config } from './config.js';
import { sqlState } from './sqlstate.js';

const SECRET_FIELDS = ['admin_key', 'password', 'connection_string', 'direct_connection_string', 'database_url', 'authorization', 'POSTGRES_PASSWORD'];

export const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  ...SECRET_FIELDS,
  ...SECRET_FIELDS.map((field) => `*.${field}`),
  ...SECRET_FIELDS.map((field) => `*.*.${field}`),
];

/** A Postgres error: it carries a SQLSTATE and a severity. */
function isPostgresError(err: Error): boolean {
  return sqlState(err) !== undefined && typeof (err as { severity?: unknown }).severity === 'string';
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

/** The process's logger settings; `extra` adds what the HTTP layer needs (its request-id mixin). */
export function loggerOptions(config: Config, stdoutIsTty = process.stdout.isTTY, extra: LoggerOptions = {}): LoggerOptions {
  const pretty = config.LOG_PRETTY ?? stdoutIsTty;
  return {
    level: config.LOG_LEVEL,
    serializers: { err: serializeError },
    ...extra,
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    ...(pretty ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:standard' } } } : {}),
  };
}
