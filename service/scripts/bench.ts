// The benchmark: every figure of BENCHMARKS.md, each next to its reference, on a throwaway local stack.
//   npm --prefix service run bench                              full run, writes ../BENCHMARKS.md
//   npm --prefix service run bench -- --tiny                    a few of everything (the tests run this), writes nowhere
//   npm --prefix service run bench -- --only health,rotation    those sections alone (profiling), prints, writes nowhere
// Sections: sequential, pool, bursts, concurrent, health, scale, deprovision, rotation (scripts/lib/bench/sections.ts).
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSections, runBenchmark } from './lib/bench/run.js';
import { REPO_ROOT } from './lib/local-stack.js';

const { values } = parseArgs({ options: { tiny: { type: 'boolean', default: false }, only: { type: 'string' } } });
let only;
try {
  only = values.only === undefined ? undefined : parseSections(values.only);
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exit(2);
}
const tiny = values.tiny ?? false;
// Only a full run is BENCHMARKS.md.
const out = tiny || only ? undefined : join(REPO_ROOT, 'BENCHMARKS.md');
const text = await runBenchmark({ tiny, only, out, log: (line) => process.stderr.write(`${line}\n`) });
process.stdout.write(`${text}\n`);
if (out) process.stderr.write(`written to ${out}\n`);
