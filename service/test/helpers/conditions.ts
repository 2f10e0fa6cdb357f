// Waiting for a condition (never for a fixed duration), and the error an operation must fail with.

/** The error a promise rejects with (fails the test if it resolves). */
export async function rejectionOf(promise: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await promise;
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected the operation to fail, but it succeeded');
}

/** Calls `probe` until `done` holds for its result (every 50 ms, for at most `timeoutMs`); returns the last result. */
export async function eventually<T>(probe: () => Promise<T>, done: (result: T) => boolean, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await probe();
    if (done(result) || Date.now() > deadline) return result;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Waits until `lines` holds a line matching `pattern` at index `from` or later; returns it. */
export async function lineMatching(lines: string[], pattern: RegExp, what: string, from = 0, timeoutMs = 20_000): Promise<string> {
  const found = await eventually(async () => lines.slice(from).find((line) => pattern.test(line)), (line) => line !== undefined, timeoutMs);
  if (found === undefined) throw new Error(`${what} wrote no line matching ${pattern} within ${timeoutMs} ms`);
  return found;
}
