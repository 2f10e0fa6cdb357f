// Memory of processes, read from /proc (Linux): for the benchmark and the soak.
import { readFileSync } from 'node:fs';

/** Resident set size in bytes, or NaN if the process is gone. */
export function rssBytes(pid: number | undefined): number {
  if (!pid) return NaN;
  try {
    return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) * 1024;
  } catch {
    return NaN;
  }
}

/** Proportional set size summed over processes: memory they share (Postgres's shared buffers) counted once. */
export function pssBytes(pids: number[]): number {
  let total = 0;
  for (const pid of pids) {
    try {
      const match = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
      if (match) total += Number(match[1]) * 1024;
    } catch {
      // a backend that just exited
    }
  }
  return total;
}

/** Sends `signal` to each process; one that has exited meanwhile (a backend ending) is skipped. */
export function signalAll(pids: number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }
}
