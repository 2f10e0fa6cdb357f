// wrk, the HTTP load generator of the benchmark and the profiles: loopback only, bounded in time.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

export interface WrkResult {
  rps: number;
  /** Milliseconds. */
  p99: number;
  non2xx: number;
}

/** `seconds` of load on `url` from 2 threads and `connections` connections. */
export async function wrk(url: string, seconds: number, connections = 64): Promise<WrkResult> {
  const { stdout: output } = await promisify(execFile)('wrk', ['-t2', `-c${connections}`, `-d${seconds}s`, '--latency', url], { encoding: 'utf8', timeout: (seconds + 30) * 1000 });
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(output)?.[1] ?? NaN);
  const p99Match = /99%\s+([\d.]+)(us|ms|s)/.exec(output);
  const unit = { us: 0.001, ms: 1, s: 1000 } as const;
  const p99 = p99Match ? Number(p99Match[1]) * unit[p99Match[2] as keyof typeof unit] : NaN;
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(output)?.[1] ?? 0);
  return { rps, p99, non2xx };
}
