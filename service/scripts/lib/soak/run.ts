// The soak: mixed traffic from many clients against a throwaway local stack (loopback only) for a bounded time,
// with every kind of fault injected in turn, then the checks of RELIABILITY.md (soakProblems, report.ts). It
// stops by itself. One function per section (scripts/lib/soak/sections.ts); the model and its bounds: model.ts.
import { rmSync } from 'node:fs';
import { LocalStack, throwawayStackSettings } from '../local-stack.js';
import type { SoakOptions, SoakResult } from './model.js';
import { memoryVerdict, writeReliability } from './report.js';
import { checkAppsConnect, checkCatalog, explainErrorLogs, restartAndReconcile, settleAtEnd, SoakRun, traffic } from './sections.js';

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const serviceLines: Array<{ at: number; line: string }> = [];
  const settings = await throwawayStackSettings('soak', {
    postgresPassword: 'soak-superuser-password',
    serviceEnv: { LOG_PRETTY: 'false', LOG_LEVEL: 'warn', RECONCILE_INTERVAL_MS: '15000' },
    onServiceLine: (line) => serviceLines.push({ at: Date.now(), line }),
  });
  const stack = new LocalStack(settings);
  const run = new SoakRun(options, stack, serviceLines);
  try {
    const startingAt = Date.now();
    await stack.start();
    run.log(`stack up in ${((Date.now() - startingAt) / 1000).toFixed(1)} s`);
    await traffic(run);
    // The end: restart the service and wait for its reconciler, settle what is still unsettled, then check every
    // app the clients were told of, and the catalogs.
    await restartAndReconcile(run);
    await settleAtEnd(run);
    await checkAppsConnect(run);
    await checkCatalog(run);
    run.result.memoryVerdict = memoryVerdict(run.result, run.windows[0]?.record);
    explainErrorLogs(run);
  } finally {
    await stack.stop().catch(() => {});
    rmSync(settings.stackDir, { recursive: true, force: true });
  }
  if (options.out) writeReliability(options.out, run.result, options);
  return run.result;
}
