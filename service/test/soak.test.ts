// A short soak (45 s, 16 clients, a fault every 12 s): the reliability invariants of RELIABILITY.md hold.
// The full soak (10 minutes) is `npm run soak`; its figures are recorded in RELIABILITY.md.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runSoak } from '../scripts/soak.js';

describe('soak (45 s)', () => {
  it('loses no app, leaves nothing half-made, and answers 5xx only during faults', async () => {
    const result = await runSoak({ seconds: 45, faultEverySeconds: 12, clients: 16 });
    assert.ok(result.requests > 100, `only ${result.requests} requests`);
    assert.ok(result.faults.length >= 3, 'faults were injected');
    assert.deepEqual(result.serverErrorsOutsideFaults, []);
    assert.ok(result.appsChecked > 0);
    assert.deepEqual(result.appsNotConnecting, []);
    assert.deepEqual(result.halfMade, []);
    assert.deepEqual(result.unexplainedErrorLogs, []);
    assert.ok(result.memory.some((sample) => sample.rss > 0 && sample.heapUsed > 0), 'memory was sampled');
  });
});
