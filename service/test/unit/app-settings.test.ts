// The rules of per-app settings without a database: the written forms of sizes and durations, what PATCH takes,
// how overrides and defaults make an app's limits, and how what Postgres holds is compared with them.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { identifierList, type SettingsInForce } from '../../src/db/postgres-server/app-settings-objects.js';
import type { StoredAppSettings } from '../../src/db/system-store/app-settings.js';
import { AppSettingsPatchSchema, defaultRoleLimits, mergeRoleLimits, settingsAdrift, settingsView, unknownSettingNames } from '../../src/domain/app-settings.js';
import { loadConfig } from '../../src/shared/config.js';
import { durationMs, durationText, sizeBytes, sizeText } from '../../src/shared/setting-values.js';

const config = loadConfig({ POSTGRES_PASSWORD: 'x', APP_STATEMENT_TIMEOUT: '30s' });
const none: StoredAppSettings = { role_limits: {}, database_settings: {}, storage_limit_bytes: null };

describe('sizes and durations as Postgres writes them', () => {
  it('reads only its units, whole numbers, no spaces', () => {
    assert.equal(sizeBytes('512MB'), 512 * 1024 ** 2);
    assert.equal(sizeBytes('1TB'), 1024 ** 4);
    for (const bad of ['1gb', '1.5GB', '1 GB', '-1', '1024', 'GB', '1GiB', '']) assert.equal(sizeBytes(bad), undefined, bad);
    assert.equal(durationMs('0'), 0);
    assert.equal(durationMs('5min'), 300_000);
    assert.equal(durationMs('250ms'), 250);
    for (const bad of ['5', '5 min', '5m', '1.5s', '-1s', 'off', '']) assert.equal(durationMs(bad), undefined, bad);
  });

  it('writes a count in the largest unit that names it exactly', () => {
    assert.equal(sizeText(2 * 1024 ** 3), '2GB');
    assert.equal(sizeText(1536 * 1024), '1536kB');
    assert.equal(sizeText(1500), '1500B');
    assert.equal(durationText(86_400_000), '1d');
    assert.equal(durationText(90_000), '90s');
  });
});

describe('what PATCH takes', () => {
  it('takes each setting, null for the default, and passes unknown names on to be refused by name', () => {
    const patch = AppSettingsPatchSchema.parse({ connection_limit: 5, statement_timeout: null, database: { search_path: ['$user', 'app'], log_statement: 'all' }, max_connections: 9 });
    assert.equal(patch.connection_limit, 5);
    assert.equal(patch.statement_timeout, null);
    assert.deepEqual(unknownSettingNames(patch), ['max_connections', 'database.log_statement']);
  });

  it('refuses values outside the rules, naming the setting', () => {
    const refused = (body: unknown) => {
      const result = AppSettingsPatchSchema.safeParse(body);
      assert.equal(result.success, false, JSON.stringify(body));
      return result.error!.issues.map((issue) => issue.message).join('; ');
    };
    assert.match(refused({ connection_limit: 1001 }), /connection_limit must be a whole number from 1 to 1000/);
    assert.match(refused({ connection_limit: '5' }), /connection_limit/);
    assert.match(refused({ temp_file_limit: '512kB' }), /temp_file_limit must be a size from 1MB to 1TB/);
    assert.match(refused({ statement_timeout: '25h' }), /statement_timeout must be 0 \(off\) or a duration up to 1d/);
    assert.match(refused({ storage_limit: '65TB' }), /storage_limit must be a size from 1MB to 64TB/);
    assert.match(refused({ database: { timezone: "UTC'; DROP" } }), /database\.timezone/);
    assert.match(refused({ database: { search_path: ['pg_temp'] } }), /pg_ schemas/);
    assert.match(refused({ database: { search_path: ['a', 'a'] } }), /names a schema twice/);
    assert.match(refused({ database: { search_path: [] } }), /at least one schema/);
    assert.match(refused({ database: { search_path: 'public' } }), /list of schema names/);
    assert.match(refused({ database: { lock_timeout: '2h' } }), /database\.lock_timeout/);
    assert.match(refused({ database: 'UTC' }), /database must be an object/);
    assert.match(refused([]), /the body must be a JSON object/);
  });
});

describe("an app's limits", () => {
  it('are its overrides, else the defaults; a stored value of the wrong type is ignored', () => {
    const defaults = defaultRoleLimits(config);
    assert.deepEqual(mergeRoleLimits(defaults, none), defaults);
    assert.equal(defaults.statementTimeout, '30s');
    const stored: StoredAppSettings = { ...none, role_limits: { connection_limit: 3, idle_session_timeout: '5min', temp_file_limit: 12 } };
    assert.deepEqual(mergeRoleLimits(defaults, stored), { ...defaults, connectionLimit: 3, idleSessionTimeout: '5min' });
  });

  it('are shown as in force, overrides and defaults', () => {
    const view = settingsView(config, 'shop', { role_limits: { connection_limit: 3 }, database_settings: { search_path: 'app, public' }, storage_limit_bytes: 2 * 1024 ** 3 });
    assert.deepEqual(view.overrides, { connection_limit: 3, storage_limit: '2GB', database: { search_path: ['app', 'public'] } });
    assert.equal(view.in_force.connection_limit, 3);
    assert.equal(view.in_force.statement_timeout, '30s');
    assert.equal(view.defaults.connection_limit, 10);
    assert.equal(view.defaults.storage_limit, '1GB');
  });
});

describe('what Postgres holds, compared with the settings', () => {
  const limits = defaultRoleLimits(config);
  const held = (change: Partial<SettingsInForce> = {}): SettingsInForce => ({
    appName: 'shop',
    connectionLimit: 10,
    roleSettings: { temp_file_limit: '1GB', statement_timeout: '30s', idle_in_transaction_session_timeout: '10min', idle_session_timeout: '0', log_min_messages: 'fatal' },
    databaseSettings: { search_path: '"$user", app, "order"', timezone: 'Asia/Tokyo' },
    ...change,
  });
  const stored: StoredAppSettings = { ...none, database_settings: { search_path: '$user, app, order', timezone: 'Asia/Tokyo' } };

  it('finds nothing when they match (a list setting as Postgres quotes it)', () => {
    assert.deepEqual(identifierList('"$user", app, "order", "we""ird"'), ['$user', 'app', 'order', 'we"ird']);
    assert.deepEqual(settingsAdrift(held(), limits, stored), []);
  });

  it('names each difference: the limit, a role setting changed or missing, a database setting', () => {
    const adrift = held({ connectionLimit: 20, roleSettings: { ...held().roleSettings, statement_timeout: '0', idle_session_timeout: undefined as unknown as string } });
    assert.deepEqual(settingsAdrift(adrift, limits, stored), ['connection_limit', 'statement_timeout', 'idle_session_timeout']);
    assert.deepEqual(settingsAdrift(held({ databaseSettings: { timezone: 'Asia/Tokyo', work_mem: '8MB' } }), limits, stored), ['database.search_path', 'database.work_mem']);
    // No database (yet, or any more): only the role is compared.
    assert.deepEqual(settingsAdrift(held({ databaseSettings: null }), limits, stored), []);
  });
});
