// A short soak (8 clients, every fault kind once, about 45 s of traffic): the reliability checks of
// RELIABILITY.md hold (soakProblems in scripts/lib/soak/report.ts): requests fail only inside a fault's window (the fault and
// FAULT_GRACE_MS after it), the service is seen working again after each fault, the population stays under its
// cap (each client holds at most 5 apps here, so the cap is reached), every app is accounted for at the end, and
// nothing is half-made. The full soak (16 clients, 10 minutes, memory compared too) is `npm run soak`; its figures
// are recorded in RELIABILITY.md.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FAULT_KINDS } from '../../scripts/lib/soak/model.js';
import { soakProblems } from '../../scripts/lib/soak/report.js';
import { runSoak } from '../../scripts/lib/soak/run.js';

describe('soak (short, every fault kind)', () => {
  it('fails requests only in a bounded window around each fault, holds the population under its cap, and loses or leaks no app', async (t) => {
    const result = await runSoak({ seconds: 25, faultEverySeconds: 5, clients: 8, appsPerClient: 5, log: (line) => t.diagnostic(line) });
    const { memory: _memory, ...summary } = result;
    t.diagnostic(JSON.stringify(summary));
    for (const kind of FAULT_KINDS) assert.ok(result.faults.filter((f) => f.kind === kind).length > 0, `fault injected: ${kind}`);
    // The service's memory is sampled but not compared here: the run is too short for a warm-up and a baseline
    // (the long soak compares it).
    assert.deepEqual(soakProblems(result, { compareMemory: false }), []);
  });
});
