// wrk, the HTTP load generator of the benchmark and the profiles: loopback only, bounded in time.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

export interface WrkResult {
  rps: number;
  /** Milliseconds. */
  p50: number;
  p99: number;
  non2xx: number;
}

const UNIT_MS = { us: 0.001, ms: 1, s: 1000 } as const;

/** A percentile line of wrk's --latency output ("99%   12.34ms"), in milliseconds. */
function percentileMs(output: string, percent: number): number {
  const match = new RegExp(`\\s${percent}%\\s+([\\d.]+)(us|ms|s)`).exec(output);
  return match ? Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS] : NaN;
}

/** `seconds` of load on `url` from 2 threads and `connections` connections. */
export async function wrk(url: string, seconds: number, connections = 64): Promise<WrkResult> {
  const { stdout: output } = await promisify(execFile)('wrk', ['-t2', `-c${connections}`, `-d${seconds}s`, '--latency', url], { encoding: 'utf8', timeout: (seconds + 30) * 1000 });
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(output)?.[1] ?? NaN);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(output)?.[1] ?? 0);
  return { rps, p50: percentileMs(output, 50), p99: percentileMs(output, 99), non2xx };
}
