// Owns the service's error vocabulary: its own errors, plain classes with a stable code (the audit log's outcome,
// lowercased) and a message for whoever asked, and how to tell a database that is away from a bug. Nothing here
// knows HTTP: src/http/error-statuses.ts gives each code its status, in one place.
import { SHUTDOWN_SQLSTATES, SQLSTATE, SQLSTATE_CLASS, sqlState } from './sqlstate.js';

/** The code of every error of the service's own; src/http/error-statuses.ts maps each to an HTTP status. */
export type ServiceErrorCode =
  | 'APP_EXISTS'
  | 'APP_NAME_CONFLICT'
  | 'APP_BUSY'
  | 'APP_NOT_FOUND'
  | 'APP_NOT_DELETED'
  | 'BACKUP_NOT_FOUND'
  | 'BACKUP_BLOCKED'
  | 'BACKUP_REFUSED'
  | 'BACKUP_FAILED'
  | 'BACKUP_NOT_RESTORABLE'
  | 'BACKUP_OF_LIVE_APP'
  | 'CLUSTER_BACKUP_FAILED'
  | 'CLUSTER_BACKUP_BUSY'
  | 'OPERATIONS_BUSY'
  | 'DATABASE_UNAVAILABLE'
  | 'OFFSITE_COPY_FAILED'
  | 'OFFSITE_COPY_REFUSED'
  | 'SCHEMA_NEWER_THAN_CODE'
  | 'SETTING_NOT_ALLOWED'
  | 'SETTING_VALUE_REFUSED'
  | 'EXTENSION_NOT_ALLOWED'
  | 'EXTENSION_TRUSTED'
  | 'EXTENSION_NOT_AVAILABLE'
  | 'EXTENSION_SCHEMA_TAKEN'
  | 'EXTENSION_NOT_INSTALLED'
  | 'EXTENSION_NOT_REMOVABLE'
  | 'EXTENSION_IN_USE'
  | 'BACKUP_EXTENSION_REFUSED'
  | 'CREDENTIAL_EXISTS'
  | 'CREDENTIAL_NOT_FOUND'
  | 'CREDENTIAL_LIMIT_REACHED'
  | 'CREDENTIAL_CONNECTIONS_EXCEED_SERVER'
  | 'COMPANION_EXISTS'
  | 'COMPANION_NOT_FOUND'
  | 'COMPANION_LIMIT';

/** One of the service's own errors: what went wrong, by a code that never changes, and in words. */
export class ServiceError extends Error {
  readonly code: ServiceErrorCode;

  constructor(code: ServiceErrorCode, message: string) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}

export class AppExistsError extends ServiceError {
  constructor(appName: string) {
    super('APP_EXISTS', `app '${appName}' already exists`);
  }
}

export class AppNameConflictError extends ServiceError {
  constructor(appName: string, existingApp: string, sharedRole: string) {
    super('APP_NAME_CONFLICT', `app_name '${appName}' cannot be used while app '${existingApp}' exists: Postgres would give both a role named ${sharedRole}`);
  }
}

export class AppBusyError extends ServiceError {
  constructor(appName: string) {
    super('APP_BUSY', `another operation on app '${appName}' is in progress: retry when it has finished`);
  }
}

export class AppNotFoundError extends ServiceError {
  constructor(appName: string) {
    super('APP_NOT_FOUND', `app '${appName}' does not exist`);
  }
}

export class AppNotDeletedError extends ServiceError {
  constructor(appName: string, reason: string) {
    super('APP_NOT_DELETED', `app '${appName}' was not deleted: its backup failed (${reason}). Nothing was removed; retry, or delete with ?backup=false`);
  }
}

export class BackupNotFoundError extends ServiceError {
  constructor(appName: string, file: string) {
    super('BACKUP_NOT_FOUND', `app '${appName}' has no backup named '${file}'`);
  }
}

export class BackupBlockedError extends ServiceError {
  constructor(appName: string, waitedSeconds: number) {
    super(
      'BACKUP_BLOCKED',
      `the backup of app '${appName}' waited ${waitedSeconds} s for a lock held by one of the app's own sessions: retry when that transaction has ended`,
    );
  }
}

export class BackupRefusedError extends ServiceError {
  constructor(appName: string, reason: string) {
    super('BACKUP_REFUSED', `pg_dump could not back up app '${appName}' with the app's own rights (${reason})`);
  }
}

export class BackupFailedError extends ServiceError {
  constructor(program: string, appName: string) {
    super('BACKUP_FAILED', `${program} failed for app ${appName}`);
  }
}

export class BackupNotRestorableError extends ServiceError {
  constructor(file: string, appName: string) {
    super('BACKUP_NOT_RESTORABLE', `backup '${file}' could not be restored into app '${appName}': pg_restore stopped at an error in it; the app's database is unchanged`);
  }
}

export class BackupOfLiveAppError extends ServiceError {
  constructor(file: string, appName: string) {
    super('BACKUP_OF_LIVE_APP', `backup '${file}' belongs to app '${appName}', which exists: only backups of deleted apps can be restored into another app`);
  }
}

/**
 * A pgBackRest command the service ran on the Postgres host (src/db/postgres-server/cluster-backup.ts) failed:
 * its exit code (pgBackRest's error number, 124 when it ran past CLUSTER_BACKUP_TIMEOUT_MS), never its output,
 * which is in Postgres's log.
 */
export class ClusterBackupFailedError extends ServiceError {
  readonly command: string;
  readonly exitCode: number | undefined;

  constructor(command: string, exitCode: number | undefined, timeoutSeconds?: number) {
    super(
      'CLUSTER_BACKUP_FAILED',
      timeoutSeconds !== undefined
        ? `pgBackRest ${command} did not finish within ${timeoutSeconds} s (CLUSTER_BACKUP_TIMEOUT_MS) and was stopped`
        : `pgBackRest ${command} failed${exitCode !== undefined ? ` with exit code ${exitCode}` : ''}: its message is in Postgres's log`,
    );
    this.command = command;
    this.exitCode = exitCode;
  }
}

/** pgBackRest's lock for the stanza is held (exit code 50): another backup or expire is running; retry once it has ended. */
export class ClusterBackupBusyError extends ServiceError {
  readonly command: string;

  constructor(command: string) {
    super('CLUSTER_BACKUP_BUSY', `pgBackRest ${command} did not start: another pgBackRest backup or expire of the cluster is running; retry when it has finished`);
    this.command = command;
  }
}

/** Every slot for `what` (backups and restores, rotations, requests waiting for a connection) is taken. */
export class OperationsBusyError extends ServiceError {
  constructor(what: string) {
    super('OPERATIONS_BUSY', `too many ${what} are running at once: retry in a few seconds`);
  }
}

export class DatabaseUnavailableError extends ServiceError {
  constructor() {
    super('DATABASE_UNAVAILABLE', 'the database is unavailable, retry later');
  }
}

/**
 * Why a copy off the machine (rclone, src/db/offsite/rclone.ts) failed, in our words. rclone's stderr can quote
 * the remote's answers, paths and, for some backends, URLs; it is read for a category and never logged or returned.
 */
export type OffsiteFailureCategory = 'unreachable' | 'auth_refused' | 'host_key_rejected' | 'remote_not_configured' | 'local_missing' | 'timeout' | 'other';

const OFFSITE_FAILURE_WORDS: Record<OffsiteFailureCategory, string> = {
  unreachable: 'the remote could not be reached (connection refused, timed out, or no route)',
  auth_refused: 'the remote refused our credentials',
  host_key_rejected: "the remote's host key is not the one its known_hosts_file names",
  remote_not_configured: 'the remote is not defined in RCLONE_CONFIG (or the file is missing)',
  local_missing: 'the local directory to copy is missing',
  timeout: 'rclone ran longer than OFFSITE_TIMEOUT_MS and was stopped',
  other: "rclone failed; its exit code is logged, its messages are not (rerun it by hand with -v to see them)",
};

/** A copy off the machine failed: `category` says why, `exitCode` is rclone's (undefined when it was stopped). */
export class OffsiteCopyFailedError extends ServiceError {
  readonly category: OffsiteFailureCategory;
  readonly exitCode: number | undefined;

  constructor(what: string, category: OffsiteFailureCategory, exitCode?: number) {
    super('OFFSITE_COPY_FAILED', `the off-site copy (${what}) failed [${category}]: ${OFFSITE_FAILURE_WORDS[category]}`);
    this.category = category;
    this.exitCode = exitCode;
  }
}

/**
 * The off-site copy refused to run: what it would copy looks lost or empty (a wiped local disk), and a sync would
 * delete the remote's copies with it. Nothing was sent or removed.
 */
export class OffsiteCopyRefusedError extends ServiceError {
  constructor(what: string, reason: string) {
    super('OFFSITE_COPY_REFUSED', `the off-site copy of ${what} was refused: ${reason}; nothing was sent or removed on the remote`);
  }
}

/**
 * The system's own database records a schema version (src/db/system-store/migrations.ts) newer than this code
 * knows: a newer version of the service migrated it. The service refuses to start against it.
 */
export class SchemaNewerThanCodeError extends ServiceError {
  readonly databaseVersion: number;
  readonly codeVersion: number;

  constructor(databaseVersion: number, codeVersion: number) {
    super(
      'SCHEMA_NEWER_THAN_CODE',
      `the system's own database is at schema version ${databaseVersion}, newer than this service knows (its newest migration is ${codeVersion}): ` +
        'a newer version of the service migrated it; run that version or a later one, not this one',
    );
    this.databaseVersion = databaseVersion;
    this.codeVersion = codeVersion;
  }
}

/** PATCH /apps/:name/settings named settings it does not change: which, and every one it does. */
export class SettingNotAllowedError extends ServiceError {
  constructor(names: string[], allowed: string[]) {
    super(
      'SETTING_NOT_ALLOWED',
      `${names.map((name) => `'${name}'`).join(', ')} ${names.length === 1 ? 'is not a setting' : 'are not settings'} this API changes; nothing was changed. Allowed: ${allowed.join(', ')}`,
    );
  }
}

/** PATCH /apps/:name/settings gave values this server cannot take (each problem in words); nothing was changed. */
export class SettingValueRefusedError extends ServiceError {
  constructor(problems: string[]) {
    super('SETTING_VALUE_REFUSED', `${problems.join('; ')}; nothing was changed`);
  }
}

// --- extensions an operator enables (src/domain/operations/extensions.ts) -----------------------------------------

/** Not on APP_EXTENSIONS_ALLOWED, or refused by the service whatever the settings say (`refusal` says why). */
export class ExtensionNotAllowedError extends ServiceError {
  constructor(extension: string, refusal: string | undefined, allowed: readonly string[]) {
    super(
      'EXTENSION_NOT_ALLOWED',
      refusal
        ? `extension '${extension}' is refused by this service whatever its settings say: ${refusal}`
        : `extension '${extension}' is not in APP_EXTENSIONS_ALLOWED (${allowed.length > 0 ? allowed.join(', ') : 'empty'}): the operator's list of extensions the service installs`,
    );
  }
}

/** Postgres lets any user with CREATE on the database create it: the app does so itself, and owns it. */
export class ExtensionTrustedError extends ServiceError {
  constructor(extension: string) {
    super(
      'EXTENSION_TRUSTED',
      `extension '${extension}' is trusted by Postgres: the app creates it itself in its own database (CREATE EXTENSION "${extension}";) and owns it; ` +
        'the service installs only extensions that need a superuser',
    );
  }
}

/** The server has no such extension, or the service cannot install it safely (`reason`). */
export class ExtensionNotAvailableError extends ServiceError {
  constructor(extension: string, reason: string) {
    super('EXTENSION_NOT_AVAILABLE', `extension '${extension}' cannot be installed: ${reason}`);
  }
}

/**
 * The app's database has a schema named like the service's (src/shared/object-names.ts) that the app owns, could
 * write to, or has objects in: an extension script run there as the superuser could call the app's code.
 */
export class ExtensionSchemaTakenError extends ServiceError {
  constructor(appName: string, schema: string, reason: string) {
    super(
      'EXTENSION_SCHEMA_TAKEN',
      `app '${appName}' has a schema '${schema}' the service cannot install into (${reason}): the service installs extensions, as the superuser, ` +
        `only into a schema of its own that no app can write to. Rename or drop the app's (ALTER SCHEMA ${schema} RENAME TO …) and retry`,
    );
  }
}

export class ExtensionNotInstalledError extends ServiceError {
  constructor(appName: string, extension: string) {
    super('EXTENSION_NOT_INSTALLED', `extension '${extension}' is not installed in app '${appName}'s database`);
  }
}

/** Installed, but not by the service: the app's own (it drops it itself), or one every database has. */
export class ExtensionNotRemovableError extends ServiceError {
  constructor(extension: string, installedBy: string) {
    super(
      'EXTENSION_NOT_REMOVABLE',
      installedBy === 'app'
        ? `extension '${extension}' is the app's own: the app drops it itself (DROP EXTENSION "${extension}";)`
        : `extension '${extension}' was not installed by the service (it is not in its schema): the service removes only those it installed`,
    );
  }
}

export class ExtensionInUseError extends ServiceError {
  constructor(appName: string, extension: string) {
    super('EXTENSION_IN_USE', `extension '${extension}' is in use in app '${appName}'s database: objects of the app depend on it; drop them first`);
  }
}

/** A restore found an extension in the dump that the service will not create (`reason`); nothing was changed. */
export class BackupExtensionRefusedError extends ServiceError {
  constructor(file: string, extension: string, reason: string) {
    super('BACKUP_EXTENSION_REFUSED', `backup '${file}' needs extension '${extension}', which the service will not create: ${reason}. The app's database is unchanged`);
  }
}

// --- extra credentials (src/domain/operations/credentials.ts) ----------------------------------------------------

export class CredentialExistsError extends ServiceError {
  constructor(appName: string, credential: string) {
    super('CREDENTIAL_EXISTS', `app '${appName}' already has a credential named '${credential}'`);
  }
}

export class CredentialNotFoundError extends ServiceError {
  constructor(appName: string, credential: string) {
    super('CREDENTIAL_NOT_FOUND', `app '${appName}' has no credential named '${credential}'`);
  }
}

/** An app has as many extra credentials as APP_MAX_CREDENTIALS allows. */
export class CredentialLimitError extends ServiceError {
  constructor(appName: string, limit: number) {
    super('CREDENTIAL_LIMIT_REACHED', `app '${appName}' has ${limit} credentials, the most it may have (APP_MAX_CREDENTIALS): delete one first`);
  }
}

/**
 * One more credential would let the app's logins together hold every connection this server gives roles: Postgres
 * counts a connection limit per role, so each login of the app (its own and each credential) may hold the app's
 * connection_limit, and together they must leave the other apps a slot (SECURITY.md, promise 4).
 */
export class CredentialConnectionsError extends ServiceError {
  constructor(appName: string, logins: number, connectionLimit: number, ceiling: number) {
    super(
      'CREDENTIAL_CONNECTIONS_EXCEED_SERVER',
      `app '${appName}' would have ${logins} logins of ${connectionLimit} connections each (its connection_limit), ${logins * connectionLimit} together, more than this server gives all roles but the superuser (${ceiling}): lower its connection_limit or delete a credential first`,
    );
  }
}

export class CompanionExistsError extends ServiceError {
  constructor(appName: string, name: string) {
    super('COMPANION_EXISTS', `app '${appName}' already has a database named '${name}'`);
  }
}

export class CompanionNotFoundError extends ServiceError {
  constructor(appName: string, name: string) {
    super('COMPANION_NOT_FOUND', `app '${appName}' has no database named '${name}'`);
  }
}

export class CompanionLimitError extends ServiceError {
  constructor(appName: string, limit: number) {
    super('COMPANION_LIMIT', `app '${appName}' has ${limit} companion databases, the most APP_MAX_COMPANION_DATABASES allows: delete one first`);
  }
}

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
