// The benchmark's arithmetic: percentiles and their summary, and timing a piece of work.

export interface Summary {
  n: number;
  p50: number;
  p95: number;
  p99: number;
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}

export const median = (values: number[]) => percentile(values, 50);

export const summarize = (values: number[]): Summary => ({ n: values.length, p50: percentile(values, 50), p95: percentile(values, 95), p99: percentile(values, 99) });

/** Runs `work`; resolves with the elapsed milliseconds and its result. */
export async function timed<T>(work: () => Promise<T>): Promise<[number, T]> {
  const started = process.hrtime.bigint();
  const result = await work();
  return [Number(process.hrtime.bigint() - started) / 1e6, result];
}

/** Runs work(worker, i) for each i below `count`, every worker taking the next i when free; resolves with the elapsed ms. */
export async function timedQueue<W>(workers: W[], count: number, work: (worker: W, i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const [elapsed] = await timed(() =>
    Promise.all(
      workers.map(async (worker) => {
        while (next < count) await work(worker, next++);
      }),
    ),
  );
  return elapsed;
}
