// CPU profiles under wrk of the service answering GET /health through nginx, and of the minimal server that is
// its reference (the ceiling): where each one's time per request goes.
//   npm --prefix service run profile:health [-- seconds]     on a throwaway stack; prints both summaries
// The benchmark (scripts/bench.ts) runs the same on its own stack and puts the summaries in BENCHMARKS.md.
import { rmSync } from 'node:fs';
import { compareProfiles, profileMinimalServer, profileServiceHealth } from './lib/cpu-profile.js';
import { LocalStack, throwawayStackSettings } from './lib/local-stack.js';
import { HealthCeiling } from './lib/minimal-health-server.js';

const seconds = Number(process.argv[2] ?? 10);
const settings = await throwawayStackSettings('profile', {
  postgresPassword: 'profile-superuser-password',
  serviceEnv: { LOG_PRETTY: 'false', READY_POOL_SIZE: '0' },
  onServiceLine: () => {},
});
const stack = new LocalStack(settings);
let ceiling: HealthCeiling | undefined;
try {
  await stack.start();
  ceiling = await HealthCeiling.start();
  const minimal = await profileMinimalServer(ceiling, seconds);
  const service = await profileServiceHealth(stack, seconds);
  process.stdout.write(`${compareProfiles(minimal, service).join('\n')}\n`);
} finally {
  await ceiling?.stop();
  await stack.stop();
  rmSync(settings.stackDir, { recursive: true, force: true });
}
