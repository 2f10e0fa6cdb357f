// The soak's settings, its bounds, its figures and their types: what scripts/lib/soak/sections.ts measures,
// scripts/lib/soak/report.ts judges and writes, and the tests read (test/slow/soak.test.ts).
//
// What is checked, for every request (the clients' and the hostile ones):
// - A request may fail (a 5xx, or no answer within 15 s) only if it overlaps a fault's window: from the moment the
//   fault is injected until FAULT_GRACE_MS after it has ended. Every other request must succeed, or be the
//   service's documented back-pressure (503 "too many …" with Retry-After), which is counted apart.
// - Every fault kind runs at least once (the run lasts longer than asked if needed), and after each fault's window
//   the service is seen working again (RECOVERED_ANSWERS answers 2xx) before the next fault.
// - The population is bounded: each client holds at most APPS_PER_CLIENT apps, counting the ones whose creation
//   or deletion got no clear answer (it looks them up with DELETE /apps/:name until it knows they are gone), so
//   the service never holds more than clients × APPS_PER_CLIENT apps (counted every POPULATION_SAMPLE_MS), and
//   the apps left at the end must be exactly the ones the clients were told exist.
// - The long soak compares the service's memory at the end with its memory after warm-up (MEMORY_TARGET).

export interface SoakOptions {
  seconds: number;
  /** Faults start this often at most (the first after this long); each also waits for the service's recovery from the last. */
  faultEverySeconds: number;
  clients: number;
  /** Apps each client holds at most (default APPS_PER_CLIENT); the tests' short soak uses a few, to reach the cap. */
  appsPerClient?: number;
  /** The RELIABILITY.md whose soak section (between the soak markers) is replaced with this run's figures. */
  out?: string;
  log?: (line: string) => void;
}

/** The faults, in the order they are injected: the service is killed once, first; the others then take turns. */
export const FAULT_KINDS = [
  'service killed (SIGKILL) and restarted',
  'Postgres frozen (SIGSTOP) for 5 s',
  'Postgres restarted (fast shutdown)',
  "the service's backends terminated",
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/**
 * How long after a fault has ended a request that begins then may still fail because of it. Requests in flight
 * during a fault may fail whatever their length (each is bounded: the client gives up after REQUEST_TIMEOUT_MS).
 * One that begins after it meets what the fault left: pooled connections to replace, the health check's connection
 * to reopen (its first ping fails), and after a freeze a backlog of requests it held, behind which a new request
 * waits for a pool connection up to DATABASE_CONNECT_TIMEOUT_MS (3 s). The latest such failure measured began
 * 3.9 s after its fault ended (RELIABILITY.md has the recorded run's); 5 s, with room for a busy machine.
 */
export const FAULT_GRACE_MS = 5_000;
/**
 * After a fault's window, the next fault waits until the service is seen working again: RECOVERED_ANSWERS answers
 * 2xx to requests begun after the window (a condition, not a duration; at most RECOVERY_WAIT_MS, after which the
 * check "the service works again after each fault" fails).
 */
export const RECOVERED_ANSWERS = 10;
export const RECOVERY_WAIT_MS = 60_000;
/** How long the client waits for an answer; no answer within it is a failure (status 0). */
export const REQUEST_TIMEOUT_MS = 15_000;
export const FREEZE_MS = 5_000;

/** Between two requests of one client: 16 clients then send a few hundred requests a second, like busy operators. */
export const CLIENT_PAUSE_MS = 40;
/**
 * Apps each client holds at most, counting those whose creation or deletion got no clear answer (a 5xx, no
 * answer) until it knows they are gone: at the cap, a provision becomes a delete. The population grows for about
 * the first minute and a half, then holds (16 × 40 = 640 apps at most), so that memory measured from then on shows
 * what the service keeps, not how many apps there are.
 */
export const APPS_PER_CLIENT = 40;
export const MEMORY_SAMPLE_MS = 5_000;
export const POPULATION_SAMPLE_MS = 1_000;
/**
 * The memory target: the service's RSS at the end at most 10 % above its RSS after warm-up. Warm-up ends when both
 * the service has run MEMORY_WARMUP_MS since its restart (the first fault) and the population has reached
 * MEMORY_WARM_POPULATION of its cap (so the comparison is about what the service keeps, not how many apps there
 * are); the baseline is the highest RSS sampled in the minute after that, the end the highest in the run's last
 * minute. Compared only when those minutes do not overlap (the long soak; not the tests' short one, where the
 * service is only seconds old).
 */
export const MEMORY_TARGET = 0.1;
export const MEMORY_WARMUP_MS = 60_000;
export const MEMORY_WARM_POPULATION = 0.9;
export const MEMORY_WINDOW_MS = 60_000;

export interface FaultRecord {
  kind: FaultKind;
  /** Seconds since the start, when injected, and how long the fault itself lasted. */
  at: number;
  lastedSeconds: number;
  /** Failed requests excused by this fault's window, and the latest start of one after the fault had ended (ms). */
  excused: number;
  latestExcusedAfterEndMs: number | null;
  /** The failures excused after the fault had ended (at most 10): what the grace is for. */
  excusedAfterEnd: string[];
  /** Failures excused by this window, by status (0: no answer). */
  excusedByStatus: Record<string, number>;
  /** Requests answered 2xx that began after this fault's window and before the next fault: the service works again. */
  succeededAfter: number;
  /** When RECOVERED_ANSWERS of those had been answered, in ms after the fault ended (the next fault waits for it). */
  recoveredAfterMs: number | null;
}

export interface SoakResult {
  /** How long the traffic ran (options.seconds, or longer for every fault kind to run once). */
  seconds: number;
  requests: number;
  byStatus: Record<string, number>;
  byOperation: Record<string, number>;
  faults: FaultRecord[];
  /** Requests outside every fault's window (each must succeed), and those answered 2xx before the first fault. */
  checked: number;
  succeededBeforeFaults: number;
  /** Failures (5xx or no answer) outside every fault's window: each is a broken promise. */
  failuresOutsideGrace: string[];
  /** 503s of the service's own back-pressure, with Retry-After: every backup slot taken (retry after 5 s). */
  busy: number;
  /** Requests with no answer within REQUEST_TIMEOUT_MS. */
  timeouts: number;
  /** Apps whose creation or deletion got no clear answer, and how they were settled by looking them up. */
  unsettledApps: { total: number; foundAndDeleted: number; foundAbsent: number; leftAtEnd: string[]; madeAfterFoundAbsent: string[] };
  /** Apps registered (every state): the cap, the highest count (every POPULATION_SAMPLE_MS, and at the end), … */
  population: { cap: number; max: number; atEnd: number; capReached: number; samples: number };
  /** After the end: apps registered that no client was told of, and apps a client was told of that are gone. */
  appsUnaccounted: string[];
  appsMissing: string[];
  appsChecked: number;
  appsNotConnecting: string[];
  halfMade: string[];
  /** The service's memory, sampled every MEMORY_SAMPLE_MS from the start. */
  memory: MemorySample[];
  memoryVerdict: MemoryVerdict;
  unexplainedErrorLogs: string[];
  /** Reconciliation after the restart at the end finished (its log line was seen). */
  reconciledAtEnd: boolean;
}

export interface MemorySample {
  /** Seconds since the start. */
  at: number;
  rss: number;
  /** V8's heap in use and its size (prom-client's default metrics, from GET /metrics on the service's port). */
  heapUsed: number;
  heapTotal: number;
  /** Apps registered (every state), counted in Postgres. */
  apps: number;
}

export interface MemoryVerdict {
  compared: boolean;
  /** Why not, when not compared. */
  reason?: string;
  /** Seconds since the start: the baseline's minute and the end's minute. */
  baselineFrom?: number;
  endFrom?: number;
  baselineRss?: number;
  endRss?: number;
  growth?: number;
  withinTarget?: boolean;
}

export interface Window {
  record: FaultRecord;
  from: number;
  to: number;
}

export interface Unsettled {
  name: string;
  /** No answer, or nginx's 504: the service may still be working on the provision, and finish it later. */
  mayStillBeMade: boolean;
}
