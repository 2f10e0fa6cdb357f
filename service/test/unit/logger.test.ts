// What the logs redact (src/shared/logger.ts). What reaches them, end to end: test/app/error-handler.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { REDACTED_PATHS } from '../../src/shared/logger.js';

describe('logging', () => {
  it('redacts the admin key, passwords, connection strings and the Authorization header', () => {
    for (const path of ['req.headers.authorization', 'admin_key', '*.admin_key', '*.password', '*.connection_string']) {
      assert.ok(REDACTED_PATHS.includes(path), path);
    }
  });
});
