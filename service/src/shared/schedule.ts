// Owns the schedules backups run on: their written form (a setting), and the moments they name. All in UTC.
//   off                  never
//   every <N>s|m|h       at every multiple of N seconds, minutes or hours since the Unix epoch (every 6h: 00:00,
//                        06:00, …); seconds are for tests and drills
//   daily HH:MM          once a day
//   weekly <day> HH:MM   once a week (day: mon, tue, wed, thu, fri, sat, sun)
// Work spread over a window (BACKUP_SPREAD_MINUTES) takes its turn at `slot + offset`, the offset being a hash of
// its name: the same for one name at every slot, different across names, so a thousand apps never start together.
import { createHash } from 'node:crypto';

export type Schedule = { kind: 'off' } | { kind: 'periodic'; periodMs: number; phaseMs: number };

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const WEEK = 7 * DAY;
/** The Unix epoch (1970-01-01) was a Thursday: weekly phases count from Monday 00:00 before it. */
const MONDAY_BEFORE_EPOCH_MS = -3 * DAY;
const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];

export class ScheduleError extends Error {
  override name = 'ScheduleError';
}

function timeOfDay(text: string, schedule: string): number {
  const m = /^([01]\d|2[0-3]):([0-5]\d)$/.exec(text);
  if (!m) throw new ScheduleError(`${JSON.stringify(schedule)}: ${JSON.stringify(text)} is not a time of day (HH:MM, 00:00 to 23:59, UTC)`);
  return Number(m[1]) * HOUR + Number(m[2]) * MINUTE;
}

/** Reads a schedule's written form; ScheduleError names what is wrong. */
export function parseSchedule(text: string): Schedule {
  const words = text.trim().toLowerCase().split(/\s+/);
  if (words.length === 1 && words[0] === 'off') return { kind: 'off' };
  if (words[0] === 'every' && words.length === 2) {
    const m = /^(\d+)(s|m|h)$/.exec(words[1]!);
    const amount = m ? Number(m[1]) : 0;
    if (!m || amount < 1) throw new ScheduleError(`${JSON.stringify(text)}: write every <N>s, <N>m or <N>h, N at least 1 (e.g. every 6h)`);
    return { kind: 'periodic', periodMs: amount * { s: 1_000, m: MINUTE, h: HOUR }[m[2] as 's' | 'm' | 'h'], phaseMs: 0 };
  }
  if (words[0] === 'daily' && words.length === 2) return { kind: 'periodic', periodMs: DAY, phaseMs: timeOfDay(words[1]!, text) };
  if (words[0] === 'weekly' && words.length === 3) {
    const day = DAYS.indexOf(words[1]!);
    if (day < 0) throw new ScheduleError(`${JSON.stringify(text)}: the day is one of ${DAYS.join(', ')}`);
    return { kind: 'periodic', periodMs: WEEK, phaseMs: (((MONDAY_BEFORE_EPOCH_MS + day * DAY + timeOfDay(words[2]!, text)) % WEEK) + WEEK) % WEEK };
  }
  throw new ScheduleError(`${JSON.stringify(text)} is not a schedule: use off, every <N>s|m|h, daily HH:MM or weekly <day> HH:MM (UTC)`);
}

/** The latest moment the schedule names at or before `now` (ms since the epoch); undefined for off. */
export function latestSlot(schedule: Schedule, now: number): number | undefined {
  if (schedule.kind === 'off') return undefined;
  const { periodMs, phaseMs } = schedule;
  return Math.floor((now - phaseMs) / periodMs) * periodMs + phaseMs;
}

/** Where in a spread window of `windowMs` a name takes its turn: stable per name, spread evenly across names. */
export function spreadOffset(name: string, windowMs: number): number {
  if (windowMs <= 0) return 0;
  const hash = createHash('sha256').update(name).digest().readUInt32BE(0);
  return Math.floor((hash / 0x1_0000_0000) * windowMs);
}

/**
 * The turn of work named `name` that is due at `now`: the latest slot whose offset time has come. The window is
 * capped at the period, so every slot's turn comes before the next slot's. Undefined for off.
 */
export function latestTurn(schedule: Schedule, name: string, spreadMs: number, now: number): number | undefined {
  if (schedule.kind === 'off') return undefined;
  const offset = spreadOffset(name, Math.min(spreadMs, schedule.periodMs - 1));
  return latestSlot(schedule, now - offset)! + offset;
}
