// The benchmark, run tiny, so that it cannot rot: every section is produced and every figure is a number.
// No speed is asserted here; speed is measured by `npm run bench` and recorded in BENCHMARKS.md.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runBenchmark } from '../../scripts/bench.js';

describe('benchmark (tiny run)', () => {
  it('measures every figure next to its reference and renders the report', async () => {
    const report = await runBenchmark({ tiny: true });
    for (const heading of [
      '## Machine',
      '## 1. Sequential provisioning',
      '## 2. Provisioning with the ready pool',
      '## 3. Concurrent provisioning',
      '## 4. GET /health through nginx',
      '## 5. Scale',
      '## 6. Deprovisioning',
      '## 7. Rotation',
    ]) {
      assert.ok(report.includes(heading), heading);
    }
    assert.doesNotMatch(report, /NaN|n\/a ms|Infinity/, 'every figure was measured');
    assert.match(report, /Ratio at p50: \*\*\d+\.\d+×\*\* the floor/);
    assert.match(report, /\| 8 \| \d+\.\d \| \d+\.\d \|/);
    assert.match(report, /\| round 1: ceiling \| [1-9]\d* \| [\d.]+ ms \| \d+ \| [\d.]+ µs \+ [\d.]+ µs \|/);
    assert.match(report, /\| round 1: GET \/health through nginx \| [1-9]\d* \|/);
    assert.match(report, /\| self time by origin \| minimal server \| service \|\n\| --- \| --- \| --- \|\n\| \S/, 'both CPU profiles were taken');
    assert.match(report, /reported by \/health after \*\*\d/);
    assert.match(report, /Service RSS at the end: \*\*\d+\.\d MB\*\*/);
  });
});
