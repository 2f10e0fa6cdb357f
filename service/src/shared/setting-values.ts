// Owns the written forms of the sizes and durations the service hands Postgres as setting values (its own
// settings, e.g. APP_IDLE_SESSION_TIMEOUT, and PATCH /apps/:name/settings): one spelling each, a strict subset of
// what Postgres reads (its unit names, case and all), so that what the service stores is exactly what it gives
// Postgres and what Postgres shows back in pg_db_role_setting.

const SIZE_UNIT_BYTES = { kB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4 } as const;
const DURATION_UNIT_MS = { ms: 1, s: 1_000, min: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** A size as Postgres writes one: digits and one of its units, e.g. 512MB, 1GB (no spaces, no fractions). */
export const SIZE_PATTERN = /^(\d{1,10})(kB|MB|GB|TB)$/;
/** A duration as Postgres writes one: 0 (off), or digits and one of its units, e.g. 30s, 5min, 250ms, 1h, 1d. */
export const DURATION_PATTERN = /^(?:0|(\d{1,10})(ms|s|min|h|d))$/;

/** How many bytes a size names, or undefined when it is not written as SIZE_PATTERN says. */
export function sizeBytes(text: string): number | undefined {
  const match = SIZE_PATTERN.exec(text);
  if (!match) return undefined;
  return Number(match[1]) * SIZE_UNIT_BYTES[match[2] as keyof typeof SIZE_UNIT_BYTES];
}

/** How many milliseconds a duration names (0: off), or undefined when it is not written as DURATION_PATTERN says. */
export function durationMs(text: string): number | undefined {
  if (text === '0') return 0;
  const match = DURATION_PATTERN.exec(text);
  if (!match) return undefined;
  return Number(match[1]) * DURATION_UNIT_MS[match[2] as keyof typeof DURATION_UNIT_MS];
}

/** A byte count in the largest unit that names it exactly (2147483648 → 2GB); bytes that no unit divides, as e.g. 1500B. */
export function sizeText(bytes: number): string {
  const units = Object.entries(SIZE_UNIT_BYTES).reverse();
  for (const [unit, size] of units) if (bytes > 0 && bytes % size === 0) return `${bytes / size}${unit}`;
  return `${bytes}B`;
}

/** A millisecond count in the largest unit that names it exactly (86400000 → 1d); 0 as 0. */
export function durationText(ms: number): string {
  const units = Object.entries(DURATION_UNIT_MS).reverse();
  for (const [unit, size] of units) if (ms > 0 && ms % size === 0) return `${ms / size}${unit}`;
  return String(ms);
}
