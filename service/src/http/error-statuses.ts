// Owns every HTTP status an error is answered with: the status of each of the service's own errors (their codes,
// src/shared/errors.ts, which knows nothing of HTTP), and the errors only the HTTP layer raises (admin auth, a body
// that is not JSON, where POST /provision looks for the key), made with @fastify/error and their statuses.
import createError from '@fastify/error';
import { ServiceError, type ServiceErrorCode } from '../shared/errors.js';

/** The status of each of the service's own errors; the compiler refuses a code without one. */
const SERVICE_ERROR_STATUSES: Record<ServiceErrorCode, number> = {
  APP_EXISTS: 409,
  APP_NAME_CONFLICT: 409,
  APP_BUSY: 409,
  APP_NOT_FOUND: 404,
  APP_NOT_DELETED: 409,
  BACKUP_NOT_FOUND: 404,
  BACKUP_BLOCKED: 409,
  BACKUP_REFUSED: 409,
  BACKUP_FAILED: 500,
  BACKUP_NOT_RESTORABLE: 422,
  BACKUP_OF_LIVE_APP: 409,
  CLUSTER_BACKUP_FAILED: 500, // pgBackRest failed on the Postgres host: the operator's to look at (Postgres's log)
  CLUSTER_BACKUP_BUSY: 409,
  OPERATIONS_BUSY: 503,
  DATABASE_UNAVAILABLE: 503,
  OFFSITE_COPY_FAILED: 502, // the remote failed us; raised by the scheduled copy, not by a request today
  OFFSITE_COPY_REFUSED: 409,
  SCHEMA_NEWER_THAN_CODE: 500, // the service refuses to start; should a request meet it, it is the service's fault
  SETTING_NOT_ALLOWED: 422,
  SETTING_VALUE_REFUSED: 422,
  EXTENSION_NOT_ALLOWED: 422,
  EXTENSION_TRUSTED: 422, // the app creates it itself
  EXTENSION_NOT_AVAILABLE: 422,
  EXTENSION_SCHEMA_TAKEN: 409,
  EXTENSION_NOT_INSTALLED: 404,
  EXTENSION_NOT_REMOVABLE: 422,
  EXTENSION_IN_USE: 409,
  BACKUP_EXTENSION_REFUSED: 422,
  CREDENTIAL_EXISTS: 409,
  CREDENTIAL_NOT_FOUND: 404,
  CREDENTIAL_LIMIT_REACHED: 409,
  CREDENTIAL_CONNECTIONS_EXCEED_SERVER: 409,
  COMPANION_EXISTS: 409,
  COMPANION_NOT_FOUND: 404,
  COMPANION_LIMIT: 409,
};

/**
 * The status an error is answered with, as far as the error says: one of ours by its code; Fastify's, its
 * plugins' and the HTTP layer's own by their statusCode; undefined for any other (a bug, or Postgres's).
 */
export function statusOf(err: Error & { statusCode?: number }): number | undefined {
  if (err instanceof ServiceError) return SERVICE_ERROR_STATUSES[err.code];
  return err.statusCode;
}

// --- errors only the HTTP layer raises -----------------------------------------------------------------------

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
/** Carries retryAfterSeconds (the Retry-After header), set where it is thrown. */
export const TooManyFailedAttemptsError = createError<[number]>(
  'TOO_MANY_FAILED_ATTEMPTS',
  'too many wrong admin keys from this address: retry in %d s',
  429,
);
export const UnsupportedMediaTypeError = createError('UNSUPPORTED_MEDIA_TYPE', 'send the body as JSON, with "Content-Type: application/json"', 415);
// Where POST /provision looks for the key, said with the words its body schema uses for the same faults.
export const BodyNotAnObjectError = createError('BODY_NOT_AN_OBJECT', 'the body must be a JSON object', 400);
export const AdminKeyNotAStringError = createError('ADMIN_KEY_NOT_A_STRING', 'admin_key must be a string', 400);
export const CaCertificateMissingError = createError(
  'CA_CERTIFICATE_MISSING',
  'this service has no CA certificate to give (TLS_CA_FILE is not set, or not readable): ask the operator for it',
  404,
);
