// Owns one way of waiting on work that a tenant's lock can stall: while the work runs, ask every 250 ms whether
// it waits for a lock; once it has waited `patienceMs` in a row, act (stop the work, or end the sessions that
// block it). Used by backups (a client program's session) and by DROP OWNED (src/db/app-objects.ts).
import { setTimeout as sleep } from 'node:timers/promises';

const POLL_MS = 250;

/** Watches until `until` is aborted. A failing `isWaiting` counts as "not waiting". */
export async function watchLockWaits(until: AbortSignal, isWaiting: () => Promise<boolean>, patienceMs: number, onStuck: () => Promise<unknown> | void): Promise<void> {
  let waitingSince: number | undefined;
  while (!until.aborted) {
    await sleep(POLL_MS, undefined, { signal: until }).catch(() => {});
    if (until.aborted) return;
    waitingSince = (await isWaiting().catch(() => false)) ? (waitingSince ?? Date.now()) : undefined;
    if (waitingSince !== undefined && Date.now() - waitingSince >= patienceMs) {
      waitingSince = undefined;
      await onStuck();
    }
  }
}
