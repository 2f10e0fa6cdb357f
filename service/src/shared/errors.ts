// Owns the service's error vocabulary and the one mapping from failures to HTTP status codes.
import createError from '@fastify/error';
import { SHUTDOWN_SQLSTATES, SQLSTATE, SQLSTATE_CLASS, sqlState } from './sqlstate.js';

export const AppExistsError = createError<[string]>('APP_EXISTS', "app '%s' already exists", 409);
export const AppNameConflictError = createError<[string, string, string]>(
  'APP_NAME_CONFLICT',
  "app_name '%s' cannot be used while app '%s' exists: Postgres would give both a role named %s",
  409,
);
export const AppBusyError = createError<[string]>(
  'APP_BUSY',
  "another operation on app '%s' is in progress: retry when it has finished",
  409,
);
export const BackupNotFoundError = createError<[string, string]>('BACKUP_NOT_FOUND', "app '%s' has no backup named '%s'", 404);
export const AppNotFoundError = createError<[string]>('APP_NOT_FOUND', "app '%s' does not exist", 404);
export const InvalidAdminKeyError = createError('INVALID_ADMIN_KEY', 'invalid admin key', 401);
export const MissingAdminKeyError = createError(
  'MISSING_ADMIN_KEY',
  'admin_key is required (in the JSON body, or as "Authorization: Bearer <key>")',
  400,
);
export const MissingAuthorizationError = createError('MISSING_AUTHORIZATION', 'send the admin key as "Authorization: Bearer <key>"', 401);
export const MalformedAuthorizationError = createError(
  'MALFORMED_AUTHORIZATION',
  'malformed Authorization header: send exactly "Authorization: Bearer <key>"',
  401,
);
export const ConflictingAdminKeysError = createError(
  'CONFLICTING_ADMIN_KEYS',
  'the admin key in the Authorization header and admin_key in the body differ: send the key once',
  401,
);
export const UnsupportedMediaTypeError = createError('UNSUPPORTED_MEDIA_TYPE', 'send the body as JSON, with "Content-Type: application/json"', 415);
export const TooManyFailedAttemptsError = createError<[number]>(
  'TOO_MANY_FAILED_ATTEMPTS',
  'too many wrong admin keys from this address: retry in %d s',
  429,
);
export const OperationsBusyError = createError<[string]>('OPERATIONS_BUSY', 'too many %s are running at once: retry in a few seconds', 503);
export const BackupBlockedError = createError<[string, number]>(
  'BACKUP_BLOCKED',
  "the backup of app '%s' waited %d s for a lock held by one of the app's own sessions: retry when that transaction has ended",
  409,
);
export const BackupRefusedError = createError<[string, string]>(
  'BACKUP_REFUSED',
  "pg_dump could not back up app '%s' with the app's own rights (%s)",
  409,
);
export const BackupFailedError = createError<[string, string]>('BACKUP_FAILED', '%s failed for app %s', 500);
export const BackupNotRestorableError = createError<[string, string]>(
  'BACKUP_NOT_RESTORABLE',
  "backup '%s' could not be restored into app '%s': pg_restore stopped at an error in it; the app's database is unchanged",
  422,
);
export const BackupOfLiveAppError = createError<[string, string]>(
  'BACKUP_OF_LIVE_APP',
  "backup '%s' belongs to app '%s', which exists: only backups of deleted apps can be restored into another app",
  409,
);
export const AppNotDeletedError = createError<[string, string]>(
  'APP_NOT_DELETED',
  "app '%s' was not deleted: its backup failed (%s). Nothing was removed; retry, or delete with ?backup=false",
  409,
);
export const DatabaseUnavailableError = createError('DATABASE_UNAVAILABLE', 'the database is unavailable, retry later', 503);

/** SQLSTATEs that mean "Postgres cannot serve us right now", not "the request is wrong". */
function isUnavailableSqlState(code: string): boolean {
  const sqlClass = code.slice(0, 2);
  return (
    sqlClass === SQLSTATE_CLASS.connectionException ||
    sqlClass === SQLSTATE_CLASS.insufficientResources || // too many connections, disk full, out of memory
    SHUTDOWN_SQLSTATES.includes(code) ||
    code === SQLSTATE.queryCanceled || // statement_timeout
    code === SQLSTATE.lockNotAvailable // lock_timeout
  );
}

/** Node-level failures reaching Postgres: refused, reset, timed out, socket gone. */
const UNAVAILABLE_MESSAGES = [/timeout/i, /ECONNREFUSED|ECONNRESET|ENOENT|EPIPE|ETIMEDOUT|EHOSTUNREACH/, /Connection terminated/i, /not queryable/i];

/**
 * What a 503 tells the client: our own words for the conditions an operator must act on (never Postgres's
 * message, which can quote file paths and SQL). Postgres out of disk space or connection slots says so.
 */
export function unavailableMessage(err: unknown): string {
  const code = sqlState(err);
  if (code === SQLSTATE.diskFull) return 'the database server is out of disk space: free space on its volume, then retry';
  if (code === SQLSTATE.tooManyConnections) return 'the database server has no free connection slots, retry later';
  if (code === SQLSTATE.outOfMemory) return 'the database server is out of memory, retry later';
  return 'the database is unavailable, retry later';
}

/** True when an error from pg means the database is away or overloaded (→ 503), not a bug (→ 500). */
export function isDatabaseUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const state = sqlState(err);
  if (state !== undefined) return isUnavailableSqlState(state);
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && UNAVAILABLE_MESSAGES.some((re) => re.test(code))) return true;
  return UNAVAILABLE_MESSAGES.some((re) => re.test(err.message));
}
