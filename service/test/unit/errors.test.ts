// Which errors are "the database is unavailable" (503) and which are bugs (500), and the 503s' words
// (src/shared/errors.ts); the service's own errors' codes and messages, and each one's HTTP status
// (src/http/error-statuses.ts). The error handler itself, end to end: test/app/error-handler.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  AppBusyError,
  AppExistsError,
  AppNameConflictError,
  AppNotDeletedError,
  AppNotFoundError,
  BackupBlockedError,
  BackupFailedError,
  BackupNotFoundError,
  BackupNotRestorableError,
  BackupOfLiveAppError,
  BackupRefusedError,
  DatabaseUnavailableError,
  isDatabaseUnavailable,
  OperationsBusyError,
  ServiceError,
  unavailableMessage,
} from '../../src/shared/errors.js';
import { InvalidAdminKeyError, statusOf, TooManyFailedAttemptsError, UnsupportedMediaTypeError } from '../../src/http/error-statuses.js';

describe('error mapping', () => {
  const pgError = (code: string) => Object.assign(new Error('boom'), { code });
  it('treats connection, resource and shutdown failures as "unavailable" (503)', () => {
    for (const code of ['08006', '53300', '57P01', '57P03', '57014', 'ECONNREFUSED']) assert.equal(isDatabaseUnavailable(pgError(code)), true, code);
    assert.equal(isDatabaseUnavailable(new Error('timeout exceeded when trying to connect')), true);
    assert.equal(isDatabaseUnavailable(new Error('Connection terminated unexpectedly')), true);
  });
  it('treats everything else as a bug (500)', () => {
    for (const code of ['42601', '42501', '23505', 'XX000']) assert.equal(isDatabaseUnavailable(pgError(code)), false, code);
    assert.equal(isDatabaseUnavailable('not an error'), false);
  });

  it('names the conditions an operator must act on in a 503, in its own words', () => {
    assert.match(unavailableMessage(pgError('53100')), /out of disk space/);
    assert.match(unavailableMessage(pgError('53300')), /no free connection slots/);
    assert.equal(unavailableMessage(pgError('08006')), 'the database is unavailable, retry later');
    assert.equal(unavailableMessage(new Error('Connection terminated unexpectedly')), 'the database is unavailable, retry later');
  });
});

describe("the service's own errors", () => {
  it('keep their codes (the audit outcomes) and messages, carry no HTTP status, and get theirs from src/http/error-statuses.ts', () => {
    const cases: Array<[ServiceError, string, string, number]> = [
      [new AppExistsError('shop'), 'APP_EXISTS', "app 'shop' already exists", 409],
      [
        new AppNameConflictError('shop_user', 'shop', 'app_shop_user'),
        'APP_NAME_CONFLICT',
        "app_name 'shop_user' cannot be used while app 'shop' exists: Postgres would give both a role named app_shop_user",
        409,
      ],
      [new AppBusyError('shop'), 'APP_BUSY', "another operation on app 'shop' is in progress: retry when it has finished", 409],
      [new AppNotFoundError('shop'), 'APP_NOT_FOUND', "app 'shop' does not exist", 404],
      [
        new AppNotDeletedError('shop', 'pg_dump failed'),
        'APP_NOT_DELETED',
        "app 'shop' was not deleted: its backup failed (pg_dump failed). Nothing was removed; retry, or delete with ?backup=false",
        409,
      ],
      [new BackupNotFoundError('shop', 'f.dump'), 'BACKUP_NOT_FOUND', "app 'shop' has no backup named 'f.dump'", 404],
      [
        new BackupBlockedError('shop', 3),
        'BACKUP_BLOCKED',
        "the backup of app 'shop' waited 3 s for a lock held by one of the app's own sessions: retry when that transaction has ended",
        409,
      ],
      [new BackupRefusedError('shop', 'no rights'), 'BACKUP_REFUSED', "pg_dump could not back up app 'shop' with the app's own rights (no rights)", 409],
      [new BackupFailedError('pg_dump', 'shop'), 'BACKUP_FAILED', 'pg_dump failed for app shop', 500],
      [
        new BackupNotRestorableError('f.dump', 'shop'),
        'BACKUP_NOT_RESTORABLE',
        "backup 'f.dump' could not be restored into app 'shop': pg_restore stopped at an error in it; the app's database is unchanged",
        422,
      ],
      [
        new BackupOfLiveAppError('f.dump', 'shop'),
        'BACKUP_OF_LIVE_APP',
        "backup 'f.dump' belongs to app 'shop', which exists: only backups of deleted apps can be restored into another app",
        409,
      ],
      [new OperationsBusyError('rotations'), 'OPERATIONS_BUSY', 'too many rotations are running at once: retry in a few seconds', 503],
      [new DatabaseUnavailableError(), 'DATABASE_UNAVAILABLE', 'the database is unavailable, retry later', 503],
    ];
    for (const [err, code, message, status] of cases) {
      assert.ok(err instanceof ServiceError && err instanceof Error, code);
      assert.equal(err.code, code);
      assert.equal(err.message, message, code);
      assert.equal(err.name, err.constructor.name, code);
      assert.equal('statusCode' in err, false, `${code} carries no HTTP status`);
      assert.equal(statusOf(err), status, code);
    }
  });

  it("leaves the HTTP layer's own errors their statuses, and other errors none", () => {
    assert.equal(statusOf(new InvalidAdminKeyError()), 401);
    assert.equal(statusOf(new TooManyFailedAttemptsError(7)), 429);
    assert.equal(new TooManyFailedAttemptsError(7).message, 'too many wrong admin keys from this address: retry in 7 s');
    assert.equal(statusOf(new UnsupportedMediaTypeError()), 415);
    assert.equal(statusOf(Object.assign(new Error('boom'), { code: '42601' })), undefined);
  });
});
