// The benchmark: every figure of BENCHMARKS.md, each next to its reference, on a throwaway local stack.
//   npm --prefix service run bench                              full run, writes ../BENCHMARKS.md
//   npm --prefix service run bench -- --tiny                    a few of everything (the tests run this), writes nowhere
//   npm --prefix service run bench -- --only health,rotation    those sections alone (profiling), prints, writes nowhere
//   npm --prefix service run bench -- --only pooler --sizes poolerApps=10,poolerSeconds=10
//                                                               at other sizes (names: scripts/lib/bench/context.ts, Sizes), writes nowhere
// Sections: sequential, pool, bursts, concurrent, health, scale, deprovision, rotation (scripts/lib/bench/sections.ts),
// pooler (scripts/lib/bench/pooler.ts).
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSections, parseSizes, runBenchmark } from './lib/bench/run.js';
import { REPO_ROOT } from './lib/local-stack.js';

const { values } = parseArgs({ options: { tiny: { type: 'boolean', default: false }, only: { type: 'string' }, sizes: { type: 'string' } } });
let only;
let sizes;
try {
  only = values.only === undefined ? undefined : parseSections(values.only);
  sizes = values.sizes === undefined ? undefined : parseSizes(values.sizes);
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exit(2);
}
const tiny = values.tiny ?? false;
// Only a full run at the full sizes is BENCHMARKS.md.
const out = tiny || only || sizes ? undefined : join(REPO_ROOT, 'BENCHMARKS.md');
const text = await runBenchmark({ tiny, only, sizes, out, log: (line) => process.stderr.write(`${line}\n`) });
process.stdout.write(`${text}\n`);
if (out) process.stderr.write(`written to ${out}\n`);
