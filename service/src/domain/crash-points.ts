// Owns the crash points: named places in the multi-step operations where, in tests only (CRASH_AT), the process
// kills itself at once, to prove that the reconciler repairs whatever a crash there leaves.
import type { Logger } from 'pino';
import type { Config } from '../shared/config.js';

/** Dies here, at once and without cleaning up, when CRASH_AT names this point; resolves otherwise. */
export type CrashPoint = (point: string) => Promise<void>;

export function crashPoints(config: Config, log: Logger): CrashPoint {
  return async (point) => {
    if (config.CRASH_AT !== point) return;
    log.fatal({ point }, 'CRASH_AT: killing the process here');
    process.kill(process.pid, 'SIGKILL');
    await new Promise(() => {}); // never resumes
  };
}
