// Which errors are "the database is unavailable" (503) and which are bugs (500), and the 503s' words
// (src/shared/errors.ts). The error handler itself, end to end: test/app/error-handler.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isDatabaseUnavailable, unavailableMessage } from '../../src/shared/errors.js';

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
