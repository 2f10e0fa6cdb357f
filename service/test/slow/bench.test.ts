// The benchmark, run tiny, so that it cannot rot: every section is produced and every figure is a number (through
// the apps' door, no client is refused); and one section run alone from the command line (--only), as for profiling.
// No speed is asserted here; speed is measured by `npm run bench` and recorded in BENCHMARKS.md.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { SERVICE_DIR } from '../../scripts/lib/local-stack.js';
import { runBenchmark } from '../../scripts/lib/bench/run.js';

const HEADINGS = [
  '## Machine',
  '## 1. Sequential provisioning',
  '## 2. Provisioning with the ready pool',
  '### As users meet it',
  '## 3. Concurrent provisioning',
  '## 4. GET /health through nginx',
  '## 5. Scale',
  '## 6. Deprovisioning',
  '## 7. Rotation',
  "## 8. The apps' door",
  '### Connection setup',
  "### PgBouncer's memory",
];

/** scripts/bench.ts as a person runs it (tsx, from the service's directory). */
const benchCli = (args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'scripts/bench.ts', ...args], { cwd: SERVICE_DIR, encoding: 'utf8', timeout: 600_000 });

describe('benchmark (tiny run)', () => {
  it('measures every figure next to its reference and renders the report', async () => {
    const report = await runBenchmark({ tiny: true });
    for (const heading of HEADINGS) assert.ok(report.includes(heading), heading);
    assert.doesNotMatch(report, /NaN|n\/a ms|Infinity/, 'every figure was measured');
    assert.match(report, /Ratio at p50: \*\*\d+\.\d+×\*\* the floor/);
    assert.match(report, /\| 8 \| \d+\.\d \| \d+\.\d \|/);
    assert.match(report, /\| round 1: ceiling \| [1-9]\d* \| [\d.]+ ms \| \d+ \| [\d.]+ µs \+ [\d.]+ µs \|/);
    assert.match(report, /\| round 1: GET \/health through nginx \| [1-9]\d* \|/);
    assert.match(report, /\| self time by origin \| minimal server \| service \|\n\| --- \| --- \| --- \|\n\| \S/, 'both CPU profiles were taken');
    assert.match(report, /reported by \/health after \*\*\d/);
    assert.match(report, /Service RSS at the end: \*\*\d+\.\d MB\*\*/);
    // WAL archiving measured while the scale section provisions (pgBackRest, as compose's Postgres archives).
    assert.match(report, /### WAL archiving \(pgBackRest\) during the \d+ provisions/);
    assert.match(report, /\| [\d.]+ [kM]?B \([\d.]+ [kM]?B per app\) \| \d+ \| \d+ \| \d+ \([\d.]+ [kM]?B\) \| [\d.]+ s \| [\d.]+ [kM]?B \|/);
    // The apps' door: every figure there, and no client refused (2 apps × 5 clients through the pooler).
    assert.match(report, /\| round 1: direct \| \d+ \| [\d.]+ s \| [\d.]+ s \| [1-9]\d* \| [\d.]+ ms \| [\d.]+ ms \| 0 \| [1-9]\d* \| \d+ \|/);
    assert.match(report, /\| round 1: through PgBouncer \| 10 \| [\d.]+ s \| [\d.]+ s \| [1-9]\d* \| [\d.]+ ms \| [\d.]+ ms \| 0 \| [1-9]\d* \| \d+ \|/);
    assert.match(report, /Through the pooler, \*\*0 of 10\*\* clients refused or aborted/);
    assert.match(report, /Throughput over all rounds: \d+ transactions\/s through the pooler against \d+ direct: \*\*\d+\.\d+×\*\*/);
    for (const door of ['direct', 'through PgBouncer']) {
      assert.match(report, new RegExp(`\\| round 1: ${door} \\| [1-9]\\d* \\| [\\d.]+ ms \\| [\\d.]+ ms \\| 0 \\| [\\d.]+ ms \\| [\\d.]+ ms \\| [\\d.]+ ms \\|`), `connection setup, ${door}`);
    }
    assert.match(report, /at most \*\*\d+\.\d MB\*\* during the pooler's runs, with \d+ clients logged in/);
    assert.match(report, /compose's memory limits: .* = \*\*\d+\.\d MB\*\*/);
  });

  it('runs the sections --only names, alone, from the command line', () => {
    const run = benchCli(['--tiny', '--only', 'deprovision']);
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, /\(only: deprovision\)/);
    for (const heading of HEADINGS) assert.equal(run.stdout.includes(heading), heading === '## Machine' || heading === '## 6. Deprovisioning', heading);
    assert.match(run.stdout, /\| DELETE through nginx \| 3 \| \d+\.\d+ ms \|/, 'the apps it deletes were made for it');
    assert.doesNotMatch(run.stdout, /NaN|n\/a ms|Infinity/);
  });

  it('refuses a section it does not have, naming those it has', () => {
    const run = benchCli(['--only', 'sequential,warp']);
    assert.equal(run.status, 2);
    assert.match(run.stderr, /--only takes sections among sequential, pool, bursts, concurrent, health, scale, deprovision, rotation, pooler; not warp/);
    assert.equal(run.stdout, '');
  });

  it('refuses a size it does not have, or a size that is not a positive integer', () => {
    for (const sizes of ['warp=1', 'poolerApps=0', 'poolerSeconds=ten']) {
      const run = benchCli(['--only', 'pooler', '--sizes', sizes]);
      assert.equal(run.status, 2, sizes);
      assert.match(run.stderr, new RegExp(`--sizes takes name=positive integer pairs, names among sequential, .*poolerApps.*; not ${sizes}`));
      assert.equal(run.stdout, '');
    }
  });
});
