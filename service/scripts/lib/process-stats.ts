// Memory and CPU time of processes, read from /proc (Linux): for the benchmark and the soak.
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

/** CPU time a process has used so far, in microseconds, split into user and kernel (system) time. */
export interface CpuTime {
  userUs: number;
  systemUs: number;
}

const CLOCK_TICKS_PER_SECOND = 100; // USER_HZ: 100 on every Linux architecture Node runs on

export function cpuTime(pid: number | undefined): CpuTime {
  if (!pid) return { userUs: NaN, systemUs: NaN };
  try {
    // Fields after the command name (which may hold spaces, so split after its closing parenthesis):
    // utime and stime are the 12th and 13th of them.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    const toUs = (ticks: string | undefined) => (Number(ticks) * 1_000_000) / CLOCK_TICKS_PER_SECOND;
    return { userUs: toUs(fields[11]), systemUs: toUs(fields[12]) };
  } catch {
    return { userUs: NaN, systemUs: NaN };
  }
}
