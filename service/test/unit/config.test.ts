// The settings (src/shared/config.ts): defaults, and every invalid one named at once.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../../src/shared/config.js';

describe('config', () => {
  it('applies defaults when only the required setting is given', () => {
    const config = loadConfig({ POSTGRES_PASSWORD: 'pw' });
    assert.equal(config.PORT, 8080);
    assert.equal(config.DATABASE_HOST, '/var/run/postgresql');
    assert.equal(config.PUBLIC_DB_HOST, 'postgres');
    assert.equal(config.PUBLIC_DB_PORT, 5432);
    assert.equal(config.LOG_PRETTY, undefined);
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
