// Owns log settings: JSON lines (pretty only on a terminal), and the fixed redaction paths that keep
// keys, passwords and connection strings out of every log line.
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

export function loggerOptions(config: Config, stdoutIsTty = process.stdout.isTTY): LoggerOptions {
  const pretty = config.LOG_PRETTY ?? stdoutIsTty;
  return {
    level: config.LOG_LEVEL,
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    ...(pretty ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:standard' } } } : {}),
  };
}
