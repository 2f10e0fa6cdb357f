// The storage quota's pure parts: its settings (src/shared/config.ts), the name patterns that find an app's
// companion databases and credentials' roles (src/shared/object-names.ts), and the statements a restore uses to
// keep the quota's settings on a login role (src/db/postgres-server/app-storage.ts). Through the real stack:
// test/stack/storage-quota.test.ts and storage-quota-crash.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { roleIsAt, storageSettingsSql, type LoginRoleStorage } from '../../src/db/postgres-server/app-storage.js';
import { ConfigError, loadConfig, sizeInBytes } from '../../src/shared/config.js';
import { APP_SQL, COMPANION_DATABASE_SQL_PATTERN, CREDENTIAL_ROLE_SQL_PATTERN, READY_SET_SQL } from '../../src/shared/object-names.js';

describe('storage quota settings', () => {
  it('default to a 1GB limit, a warning at 80%, suspension over 120%, a check every 5 s', () => {
    const config = loadConfig({ POSTGRES_PASSWORD: 'pw' });
    assert.equal(config.APP_STORAGE_LIMIT, 2 ** 30);
    assert.equal(config.APP_STORAGE_WARN_PERCENT, 80);
    assert.equal(config.APP_STORAGE_HARD_LIMIT_PERCENT, 120);
    assert.equal(config.STORAGE_CHECK_INTERVAL_MS, 5_000);
  });

  it('take sizes in Postgres units (1024-based), and off for no default limit', () => {
    assert.equal(sizeInBytes('64kB'), 64 * 1024);
    assert.equal(loadConfig({ POSTGRES_PASSWORD: 'pw', APP_STORAGE_LIMIT: '500MB' }).APP_STORAGE_LIMIT, 500 * 2 ** 20);
    assert.equal(loadConfig({ POSTGRES_PASSWORD: 'pw', APP_STORAGE_LIMIT: '2TB' }).APP_STORAGE_LIMIT, 2 * 2 ** 40);
    assert.equal(loadConfig({ POSTGRES_PASSWORD: 'pw', APP_STORAGE_LIMIT: 'off' }).APP_STORAGE_LIMIT, undefined);
  });

  it('refuse what is not a size, and percentages out of range, naming the setting', () => {
    for (const bad of ['1.5GB', '0MB', '1gb', '1G', '100', '-1GB', 'none', '']) {
      assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'pw', APP_STORAGE_LIMIT: bad }), (err: Error) => err instanceof ConfigError && /APP_STORAGE_LIMIT is invalid/.test(err.message), bad);
    }
    assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'pw', APP_STORAGE_HARD_LIMIT_PERCENT: '99' }), /APP_STORAGE_HARD_LIMIT_PERCENT/);
    assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'pw', APP_STORAGE_WARN_PERCENT: '0' }), /APP_STORAGE_WARN_PERCENT/);
  });
});

describe("the names of an app's other objects", () => {
  const matches = (pattern: string, name: string) => new RegExp(pattern).exec(name)?.slice(1) ?? null;

  it('find companion databases and credential roles with their app, and nothing of the other families', () => {
    assert.deepEqual(matches(COMPANION_DATABASE_SQL_PATTERN, 'app_shop-test'), ['shop', 'test']);
    assert.deepEqual(matches(COMPANION_DATABASE_SQL_PATTERN, 'app_my_shop-shadow_1'), ['my_shop', 'shadow_1']);
    assert.deepEqual(matches(CREDENTIAL_ROLE_SQL_PATTERN, 'app_shop.readonly'), ['shop', 'readonly']);
    // Databases and roles are two namespaces: within each, no name is in two families (so no object is counted
    // twice, or into the wrong app).
    const names = ['app_shop', 'app_shop_user', 'app_shop.x', 'app_shop-x', 'pgprov_ready_abcdefghijkl', 'pgprov_ready_abcdefghijkl_user', 'app_sh-x', 'app_shop-', 'app_shop.Readonly', 'app_shop-x.y', 'app_shop.x-y'];
    const namespaces = {
      databases: { companion: COMPANION_DATABASE_SQL_PATTERN, database: APP_SQL.databasePattern, 'ready set': READY_SET_SQL.databasePattern },
      roles: { credential: CREDENTIAL_ROLE_SQL_PATTERN, login: APP_SQL.loginRolePattern, 'ready set': READY_SET_SQL.rolePattern },
    };
    for (const [namespace, families] of Object.entries(namespaces)) {
      for (const name of names) {
        const found = Object.entries(families).filter(([, pattern]) => matches(pattern, name) !== null).map(([family]) => family);
        assert.ok(found.length <= 1, `${name} is in one family of ${namespace} at most: ${found.join(', ')}`);
      }
    }
    assert.equal(matches(COMPANION_DATABASE_SQL_PATTERN, 'app_shop.x'), null);
    assert.equal(matches(CREDENTIAL_ROLE_SQL_PATTERN, 'app_shop-x'), null);
    assert.equal(matches(APP_SQL.databasePattern, 'app_shop-x'), null);
  });
});

describe("a restore keeps the quota's settings", () => {
  it("sets again the quota's record, its read-only flag and the connection limit it keeps, and nothing else", () => {
    const before = JSON.stringify([
      { database: 0, config: ['temp_file_limit=1GB', 'default_transaction_read_only=on', 'pgprov.storage_enforcement=suspended', 'pgprov.connection_limit_before_suspension=10', 'work_mem=64MB'] },
      { database: 16384, config: ['default_transaction_read_only=off'] },
    ]);
    assert.equal(
      storageSettingsSql('app_shop_user', before),
      [
        `ALTER ROLE "app_shop_user" SET default_transaction_read_only = 'on';`,
        `ALTER ROLE "app_shop_user" SET pgprov.storage_enforcement = 'suspended';`,
        `ALTER ROLE "app_shop_user" SET pgprov.connection_limit_before_suspension = '10';`,
      ].join('\n'),
    );
    assert.equal(storageSettingsSql('app_shop_user', JSON.stringify([{ database: 0, config: ['temp_file_limit=1GB'] }])), '');
    assert.equal(storageSettingsSql('app_shop_user', '[]'), '');
  });

  it('tells a role that is exactly as wanted from one whose mechanism was lifted', () => {
    const role = (over: Partial<LoginRoleStorage>): LoginRoleStorage => ({ role: 'app_shop_user', app: 'shop', enforcement: 'none', readOnlySet: false, connectionLimit: 10, limitBefore: null, ...over });
    assert.equal(roleIsAt(role({}), 'none'), true);
    assert.equal(roleIsAt(role({ readOnlySet: true }), 'none'), true, "an app's own read-only choice is its own");
    assert.equal(roleIsAt(role({ enforcement: 'read_only', readOnlySet: true }), 'read_only'), true);
    assert.equal(roleIsAt(role({ enforcement: 'read_only', readOnlySet: false }), 'read_only'), false, 'the app lifted its flag');
    assert.equal(roleIsAt(role({ enforcement: 'suspended', readOnlySet: true, connectionLimit: 0, limitBefore: 10 }), 'suspended'), true);
    assert.equal(roleIsAt(role({ enforcement: 'suspended', readOnlySet: true, connectionLimit: 20, limitBefore: 10 }), 'suspended'), false, 'a limit changed under the suspension');
    assert.equal(roleIsAt(role({ enforcement: 'suspended', readOnlySet: true, connectionLimit: 0, limitBefore: 10 }), 'read_only'), false);
  });
});
