// The storage quota's pure parts: its settings (src/shared/config.ts), and what src/db/postgres-server/app-storage.ts
// writes on a login role and reads back: the statements a restore uses to keep the quota's settings, the connection
// limit the settings keep in force under a suspension, and whether a role is as the quota wants it. Through the real
// stack: test/stack/storage-quota.test.ts and storage-quota-crash.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connectionLimitInForce, connectionLimitSql, roleIsAt, storageSettingsSql, type LoginRoleStorage } from '../../src/db/postgres-server/app-storage.js';
import { ConfigError, loadConfig, storageLimitBytes } from '../../src/shared/config.js';

describe('storage quota settings', () => {
  it('default to a 1GB limit, a warning at 80%, suspension over 120%, a check every 5 s', () => {
    const config = loadConfig({ POSTGRES_PASSWORD: 'pw' });
    assert.equal(config.APP_STORAGE_LIMIT, '1GB');
    assert.equal(storageLimitBytes(config), 2 ** 30);
    assert.equal(config.APP_STORAGE_WARN_PERCENT, 80);
    assert.equal(config.APP_STORAGE_HARD_LIMIT_PERCENT, 120);
    assert.equal(config.STORAGE_CHECK_INTERVAL_MS, 5_000);
  });

  it('take sizes in Postgres units (1024-based), and off for no default limit', () => {
    const limit = (text: string) => storageLimitBytes(loadConfig({ POSTGRES_PASSWORD: 'pw', APP_STORAGE_LIMIT: text }));
    assert.equal(limit('64kB'), 64 * 1024);
    assert.equal(limit('500MB'), 500 * 2 ** 20);
    assert.equal(limit('2TB'), 2 * 2 ** 40);
    assert.equal(limit('off'), undefined);
  });

  it('refuse what is not a size, and percentages out of range, naming the setting', () => {
    for (const bad of ['1.5GB', '0MB', '1gb', '1G', '100', '-1GB', 'none', '']) {
      assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'pw', APP_STORAGE_LIMIT: bad }), (err: Error) => err instanceof ConfigError && /APP_STORAGE_LIMIT is invalid/.test(err.message), bad);
    }
    assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'pw', APP_STORAGE_HARD_LIMIT_PERCENT: '99' }), /APP_STORAGE_HARD_LIMIT_PERCENT/);
    assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'pw', APP_STORAGE_WARN_PERCENT: '0' }), /APP_STORAGE_WARN_PERCENT/);
  });
});

describe("a restore keeps the quota's settings", () => {
  it("sets again the quota's record, its read-only flag and the connection limit it keeps, and nothing else", () => {
    const before = JSON.stringify([
      { database: 0, config: ['temp_file_limit=1GB', 'default_transaction_read_only=on', 'pgprov.storage_set_read_only=on', 'pgprov.storage_enforcement=suspended', 'pgprov.connection_limit_before_suspension=10', 'work_mem=64MB'] },
      { database: 16384, config: ['default_transaction_read_only=off'] },
    ]);
    assert.equal(
      storageSettingsSql('app_shop_user', before),
      [
        `ALTER ROLE "app_shop_user" SET default_transaction_read_only = 'on';`,
        `ALTER ROLE "app_shop_user" SET pgprov.storage_set_read_only = 'on';`,
        `ALTER ROLE "app_shop_user" SET pgprov.storage_enforcement = 'suspended';`,
        `ALTER ROLE "app_shop_user" SET pgprov.connection_limit_before_suspension = '10';`,
      ].join('\n'),
    );
    assert.equal(storageSettingsSql('app_shop_user', JSON.stringify([{ database: 0, config: ['temp_file_limit=1GB'] }])), '');
    assert.equal(storageSettingsSql('app_shop_user', '[]'), '');
  });

  it('tells a role that is exactly as wanted from one whose mechanism was lifted', () => {
    const role = (over: Partial<LoginRoleStorage>): LoginRoleStorage => ({ role: 'app_shop_user', app: 'shop', enforcement: 'none', readOnlySet: false, readOnlySetByQuota: false, connectionLimit: 10, limitBefore: null, ...over });
    assert.equal(roleIsAt(role({}), 'none'), true);
    assert.equal(roleIsAt(role({ readOnlySet: true }), 'none'), true, "a read-only credential's flag, or an app's own choice, is not the quota's");
    assert.equal(roleIsAt(role({ readOnlySet: true, readOnlySetByQuota: true }), 'none'), false, 'a flag the quota set is to be lifted');
    assert.equal(roleIsAt(role({ enforcement: 'read_only', readOnlySet: true }), 'read_only'), true);
    assert.equal(roleIsAt(role({ enforcement: 'read_only', readOnlySet: false }), 'read_only'), false, 'the app lifted its flag');
    assert.equal(roleIsAt(role({ enforcement: 'suspended', readOnlySet: true, connectionLimit: 0, limitBefore: 10 }), 'suspended'), true);
    assert.equal(roleIsAt(role({ enforcement: 'suspended', readOnlySet: true, connectionLimit: 20, limitBefore: 10 }), 'suspended'), false, 'a limit changed under the suspension');
    assert.equal(roleIsAt(role({ enforcement: 'suspended', readOnlySet: true, connectionLimit: 0, limitBefore: 10 }), 'read_only'), false);
  });
});

describe('the settings under a storage suspension', () => {
  it("put a connection limit where the quota keeps it while the role is suspended, and read that one as in force", () => {
    const sql = connectionLimitSql('app_shop.reader', 7);
    assert.match(sql, /WHERE r\.rolname = 'app_shop\.reader' AND s\.setdatabase = 0 AND s\.setconfig @> ARRAY\['pgprov\.storage_enforcement=suspended'\]/);
    assert.match(sql, /format\('ALTER ROLE %I SET pgprov\.connection_limit_before_suspension = %L', 'app_shop\.reader', '7'\)/);
    assert.match(sql, /format\('ALTER ROLE %I WITH CONNECTION LIMIT 7', 'app_shop\.reader'\)/);
    assert.equal(connectionLimitInForce(0, ['pgprov.storage_enforcement=suspended', 'pgprov.connection_limit_before_suspension=12']), 12);
    assert.equal(connectionLimitInForce(0, ['log_min_messages=fatal']), 0, 'a 0 the quota did not set is what it says');
    assert.equal(connectionLimitInForce(10, []), 10);
  });
});
