// The soak: mixed traffic from 16 clients against the local stack (loopback only) for a bounded time, with every
// kind of fault injected in turn, then the checks of RELIABILITY.md. It stops by itself.
//   npm --prefix service run soak                         10 minutes, a fault every minute at most; writes the soak
//                                                         section of ../RELIABILITY.md; exits 1 if a check fails
//   SOAK_SECONDS=120 SOAK_FAULT_EVERY_SECONDS=10 …        shorter (too short to compare memory: that check fails);
//                                                         service/test/slow/soak.test.ts runs a short one without it
// What is checked, and why: scripts/lib/soak/model.ts and soakProblems in scripts/lib/soak/report.ts.
import { join } from 'node:path';
import { REPO_ROOT } from './lib/local-stack.js';
import type { SoakOptions } from './lib/soak/model.js';
import { soakProblems } from './lib/soak/report.js';
import { runSoak } from './lib/soak/run.js';

const seconds = Number(process.env.SOAK_SECONDS ?? 600);
const faultEverySeconds = Number(process.env.SOAK_FAULT_EVERY_SECONDS ?? 60);
const options: SoakOptions = { seconds, faultEverySeconds, clients: 16, out: join(REPO_ROOT, 'RELIABILITY.md'), log: (line) => process.stderr.write(`${line}\n`) };
const result = await runSoak(options);
process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
const problems = soakProblems(result, { compareMemory: true });
for (const problem of problems) process.stderr.write(`FAILED: ${problem}\n`);
process.exitCode = problems.length === 0 ? 0 : 1;
