// The leaves of src/ (src/shared/), as pure functions: the settings (config.ts), the app-name rule and the names
// derived from it (object-names.ts), admin keys, app passwords, the pinned key file and the SCRAM verifier
// (secrets.ts), which errors are "the database is unavailable" and the service's own errors with their HTTP statuses
// (errors.ts, http/error-statuses.ts), and what the logs redact (logger.ts).
// End to end, through the error handler and the request log: test/app/error-handler.test.ts.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { APP_NAME_PATTERN, AppNameSchema, appIdentifiers, collidingAppNames } from '../../src/shared/object-names.js';
import { AdminKeyFileError, adminKeyDigest, isAdminKey, loadPinnedAdminKey, matchesAdminKey, newAdminKey, newAppPassword, scramSha256Verifier } from '../../src/shared/secrets.js';
import { ConfigError, loadConfig } from '../../src/shared/config.js';
import { REDACTED_PATHS } from '../../src/shared/logger.js';
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

describe('config', () => {
  it('applies defaults when only the required setting is given', () => {
    const config = loadConfig({ POSTGRES_PASSWORD: 'pw' });
    assert.equal(config.PORT, 8080);
    assert.equal(config.DATABASE_HOST, '/var/run/postgresql');
    // The apps' door is PgBouncer as compose names it, over TLS; no direct door and no pooler unless told.
    assert.equal(config.PUBLIC_DB_HOST, 'pgbouncer');
    assert.equal(config.PUBLIC_DB_PORT, 6432);
    assert.equal(config.PUBLIC_DB_SSLMODE, 'require');
    assert.equal(config.DIRECT_DB_HOST, undefined);
    assert.equal(config.DIRECT_DB_PORT, 5432);
    assert.equal(config.POOLER_AUTH_FILE, undefined);
    assert.equal(config.POOLER_ADMIN_HOST, '/var/run/pgbouncer');
    assert.equal(config.POOLER_ADMIN_PORT, 6432);
    assert.equal(config.POOLER_POOL_MODE, 'transaction');
    assert.equal(config.TLS_CA_FILE, undefined);
    assert.equal(config.LOG_PRETTY, undefined);
  });

  it('takes an empty DIRECT_DB_HOST, POOLER_AUTH_FILE or TLS_CA_FILE as none (compose passes empty ones)', () => {
    const empty = loadConfig({ POSTGRES_PASSWORD: 'pw', DIRECT_DB_HOST: '', POOLER_AUTH_FILE: '', TLS_CA_FILE: '' });
    assert.equal(empty.DIRECT_DB_HOST, undefined);
    assert.equal(empty.POOLER_AUTH_FILE, undefined);
    assert.equal(empty.TLS_CA_FILE, undefined);
    const set = loadConfig({ POSTGRES_PASSWORD: 'pw', DIRECT_DB_HOST: 'postgres', POOLER_AUTH_FILE: '/run/pgprov-pooler/userlist.txt', TLS_CA_FILE: '/run/pgprov-tls/ca.crt' });
    assert.equal(set.DIRECT_DB_HOST, 'postgres');
    assert.equal(set.POOLER_AUTH_FILE, '/run/pgprov-pooler/userlist.txt');
    assert.equal(set.TLS_CA_FILE, '/run/pgprov-tls/ca.crt');
  });

  it('refuses an sslmode libpq does not know, and a pool mode PgBouncer does not have', () => {
    assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'pw', PUBLIC_DB_SSLMODE: 'required' }), /PUBLIC_DB_SSLMODE is invalid/);
    assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'pw', POOLER_POOL_MODE: 'pooled' }), /POOLER_POOL_MODE is invalid/);
  });

  it('names a missing required setting', () => {
    assert.throws(() => loadConfig({}), (err: Error) => err instanceof ConfigError && /POSTGRES_PASSWORD is missing/.test(err.message));
  });

  it('names every invalid setting at once', () => {
    assert.throws(
      () => loadConfig({ POSTGRES_PASSWORD: 'pw', PORT: 'eighty', LOG_PRETTY: 'maybe', APP_TEMP_FILE_LIMIT: 'lots' }),
      (err: Error) => /PORT is invalid/.test(err.message) && /LOG_PRETTY is invalid/.test(err.message) && /APP_TEMP_FILE_LIMIT is invalid/.test(err.message),
    );
  });

  it('takes ADMIN_KEY_FILE as a path, and an empty one as none', () => {
    assert.equal(loadConfig({ POSTGRES_PASSWORD: 'pw' }).ADMIN_KEY_FILE, undefined);
    assert.equal(loadConfig({ POSTGRES_PASSWORD: 'pw', ADMIN_KEY_FILE: '' }).ADMIN_KEY_FILE, undefined);
    assert.equal(loadConfig({ POSTGRES_PASSWORD: 'pw', ADMIN_KEY_FILE: '/run/secrets/admin_key' }).ADMIN_KEY_FILE, '/run/secrets/admin_key');
  });

  it('parses flags as words, not as truthy strings', () => {
    assert.equal(loadConfig({ POSTGRES_PASSWORD: 'pw', LOG_PRETTY: 'false' }).LOG_PRETTY, false);
    assert.equal(loadConfig({ POSTGRES_PASSWORD: 'pw', LOG_PRETTY: 'true' }).LOG_PRETTY, true);
  });
});

describe('app names', () => {
  it('accepts every name of 3-32 characters of [a-z0-9_]', () => {
    for (const name of ['abc', 'a_b', '___', '123', 'x'.repeat(32), 'my_app_2', 'user', 'postgres', 'template1']) {
      assert.equal(AppNameSchema.safeParse(name).success, true, name);
    }
  });

  it('rejects everything else with a message saying what is wrong', () => {
    const cases: Array<[unknown, RegExp]> = [
      ['ab', /at least 3/],
      ['x'.repeat(33), /at most 32/],
      ['MyApp', /lowercase/],
      ['my-app', /lowercase/],
      ['my app', /lowercase/],
      ['аpp', /lowercase/], // Cyrillic а
      ['app\u0000x', /lowercase/],
      ["x'; DROP ROLE postgres; --", /lowercase|at most/],
      [42, /must be a string/],
    ];
    for (const [name, message] of cases) {
      const result = AppNameSchema.safeParse(name);
      assert.equal(result.success, false, String(name));
      assert.match(result.error!.issues.map((i) => i.message).join(' '), message);
    }
  });

  it('derives app_<name> and app_<name>_user, and refuses to derive from an unchecked name', () => {
    assert.deepEqual(appIdentifiers('shop'), { appName: 'shop', database: 'app_shop', username: 'app_shop_user', accessRole: 'app_shop' });
    assert.throws(() => appIdentifiers('Shop"; --'), TypeError);
    assert.equal(APP_NAME_PATTERN.test('a'.repeat(32)), true);
  });

  it('names the apps whose roles would collide with this one', () => {
    assert.deepEqual(collidingAppNames('x_user'), ['x_user_user']); // "x" alone is too short to be an app
    assert.deepEqual(collidingAppNames('abc'), ['abc_user']);
    assert.deepEqual(collidingAppNames('abc_user').sort(), ['abc', 'abc_user_user']);
    assert.deepEqual(collidingAppNames('a'.repeat(32)), []); // a 37-character sibling is not a valid name
    assert.deepEqual(collidingAppNames('ab_user'), ['ab_user_user']); // "ab" is too short to be an app
    // Outside each name's colliding siblings, no two apps share a role name.
    const family = ['abc', 'abc_user_user', 'app_abc', 'abc_app', 'user_abc'];
    const roles = family.flatMap((n) => [appIdentifiers(n).username, appIdentifiers(n).accessRole]);
    assert.equal(new Set(roles).size, roles.length);
  });

  it('keeps every pair of names apart within each catalog, and within Postgres identifier length', () => {
    const family = ['abc', 'abc_user', 'abc_user_user', 'app_abc', 'abc_app', 'user_abc', 'a'.repeat(32)];
    const databases = new Set(family.map((n) => appIdentifiers(n).database));
    const roles = new Set(family.map((n) => appIdentifiers(n).username));
    assert.equal(databases.size, family.length);
    assert.equal(roles.size, family.length);
    for (const n of family) assert.ok(appIdentifiers(n).username.length <= 63);
  });
});

describe('secrets', () => {
  it('makes admin keys of sk_ and 40 alphanumerics that grep -oP "sk_\\w+" takes whole', () => {
    const key = newAdminKey();
    assert.match(key, /^sk_[A-Za-z0-9]{40}$/);
    assert.equal(/sk_\w+/.exec(`🔑 ADMIN KEY: ${key}"}`)?.[0], key);
    assert.notEqual(newAdminKey(), key);
  });

  it('makes app passwords of 32 alphanumerics', () => {
    assert.match(newAppPassword(), /^[A-Za-z0-9]{32}$/);
    assert.notEqual(newAppPassword(), newAppPassword());
  });

  it('accepts only the exact admin key', () => {
    const key = newAdminKey();
    assert.equal(isAdminKey(key, key), true);
    assert.equal(isAdminKey(key.slice(0, -1), key), false);
    assert.equal(isAdminKey(`${key}x`, key), false);
    assert.equal(isAdminKey('', key), false);
    assert.equal(isAdminKey(undefined, key), false);
  });

  it('reads a pinned admin key file: sha256:<hex> of the key, or the key itself', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgprov-unit-key-'));
    try {
      const key = newAdminKey();
      const hex = createHash('sha256').update(key).digest('hex');
      const file = (name: string, content: string) => {
        const path = join(dir, name);
        writeFileSync(path, content);
        return path;
      };
      for (const [label, path, form] of [
        ['hash', file('hash', `sha256:${hex}\n`), 'sha256'],
        ['hash in capitals, CRLF', file('upper', `SHA256:${hex.toUpperCase()}\r\n`), 'sha256'],
        ['the key', file('key', `${key}\n`), 'key'],
        ['the key, no newline', file('key-bare', key), 'key'],
      ] as const) {
        const pinned = loadPinnedAdminKey(path);
        assert.equal(pinned.form, form, label);
        assert.equal(matchesAdminKey(key, pinned), true, label);
        assert.equal(matchesAdminKey(`${key}x`, pinned), false, label);
        assert.equal(matchesAdminKey(hex, pinned), false, `${label}: the hash is not the key`);
        assert.equal(matchesAdminKey(undefined, pinned), false, label);
      }
      assert.deepEqual(adminKeyDigest(key), loadPinnedAdminKey(join(dir, 'hash')).digest);

      const refusals: Array<[string, string, RegExp]> = [
        ['missing', join(dir, 'nothing-here'), /cannot be read \(ENOENT\)/],
        ['a directory', dir, /cannot be read \(EISDIR\)/],
        ['empty', file('empty', ''), /is empty/],
        ['blank', file('blank', '  \n'), /is empty/],
        ['hash too short', file('short', `sha256:${hex.slice(2)}`), /sha256: followed by exactly 64 hexadecimal digits/],
        ['hash not hex', file('not-hex', `sha256:${'g'.repeat(64)}`), /sha256: followed by exactly 64 hexadecimal digits/],
        ['bare hash', file('bare', hex), /neither sha256:<64 hex digits> nor a key sk_/],
        ['a short key', file('short-key', 'sk_abc'), /neither/],
        ['a key with a space', file('spaced', `${key} x`), /neither/],
        ['two keys', file('two', `${key}\n${key}\n`), /neither/],
      ];
      for (const [label, path, reason] of refusals) {
        assert.throws(
          () => loadPinnedAdminKey(path),
          (err: Error) => err instanceof AdminKeyFileError && err.message.startsWith(`ADMIN_KEY_FILE=${path} `) && reason.test(err.message) && !err.message.includes(key) && !err.message.includes(hex.slice(2)),
          label,
        );
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('computes the SCRAM-SHA-256 verifier Postgres computes (RFC 7677 shape, deterministic for a salt)', async () => {
    const salt = Buffer.alloc(16, 7);
    const verifier = await scramSha256Verifier('pencil', salt);
    assert.match(verifier, /^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}$/);
    assert.equal(await scramSha256Verifier('pencil', salt), verifier);
    assert.notEqual(await scramSha256Verifier('pencil'), verifier);
    assert.ok(!verifier.includes('pencil'));
  });
});

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

describe('logging', () => {
  it('redacts the admin key, passwords, connection strings (pooled and direct) and the Authorization header', () => {
    for (const path of ['req.headers.authorization', 'admin_key', '*.admin_key', '*.password', '*.connection_string', '*.direct_connection_string']) {
      assert.ok(REDACTED_PATHS.includes(path), path);
    }
  });
});
