// Owns log settings: JSON lines (pretty only on a terminal), and the fixed redaction paths that keep
// keys, passwords and connection strings out of every log line.
import type { FastifyBaseLogger, FastifyServerOptions } from 'fastify';
import type { LoggerOptions } from 'pino';
import type { Config } from './config.js';

const SECRET_FIELDS = ['admin_key', 'password', 'connection_string', 'authorization', 'POSTGRES_PASSWORD'];

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

export function loggerOptions(config: Config, stdoutIsTty = process.stdout.isTTY): LoggerOptions {
  const pretty = config.LOG_PRETTY ?? stdoutIsTty;
  return {
    level: config.LOG_LEVEL,
    mixin: addRequestId,
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    ...(pretty ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:standard' } } } : {}),
  };
}
