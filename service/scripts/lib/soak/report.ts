// The soak's verdict and its section of RELIABILITY.md: every check that failed, in words (soakProblems); the
// memory's verdict; the figures rendered, minute by minute for the memory.
import { readFileSync, writeFileSync } from 'node:fs';
import {
  APPS_PER_CLIENT,
  FAULT_GRACE_MS,
  FAULT_KINDS,
  MEMORY_SAMPLE_MS,
  MEMORY_TARGET,
  MEMORY_WARM_POPULATION,
  MEMORY_WARMUP_MS,
  MEMORY_WINDOW_MS,
  POPULATION_SAMPLE_MS,
  RECOVERED_ANSWERS,
  type FaultRecord,
  type MemorySample,
  type MemoryVerdict,
  type SoakOptions,
  type SoakResult,
} from './model.js';

/** A JSON log line in short: its message, its error's message, and its request id. */
export function summarizeLogLine(line: string): string {
  try {
    const parsed = JSON.parse(line) as { msg?: string; reqId?: string; err?: { message?: string } };
    return `"${parsed.msg ?? ''}"${parsed.err?.message ? `: ${parsed.err.message}` : ''}${parsed.reqId ? ` [${parsed.reqId}]` : ''}`;
  } catch {
    return line.slice(0, 300);
  }
}

/** Baseline: the highest RSS in the minute after warm-up (after the first fault's restart); end: in the last minute. */
export function memoryVerdict(
  r: Pick<SoakResult, 'memory' | 'seconds'> & { population: Pick<SoakResult['population'], 'cap'> },
  firstFault: Pick<FaultRecord, 'kind' | 'at' | 'lastedSeconds'> | undefined,
): MemoryVerdict {
  const restartedAt = firstFault?.kind === FAULT_KINDS[0] ? firstFault.at + firstFault.lastedSeconds : 0;
  const filled = r.memory.find((s) => s.apps >= MEMORY_WARM_POPULATION * r.population.cap)?.at;
  if (filled === undefined) return { compared: false, reason: `the population never reached ${MEMORY_WARM_POPULATION * 100} % of its cap` };
  const baselineFrom = Math.ceil(Math.max(restartedAt + MEMORY_WARMUP_MS / 1000, filled));
  const baselineTo = baselineFrom + MEMORY_WINDOW_MS / 1000;
  const endFrom = r.seconds - MEMORY_WINDOW_MS / 1000;
  if (endFrom < baselineTo) {
    return { compared: false, reason: `the run is too short: the baseline's minute (from ${baselineFrom} s) and the last minute overlap` };
  }
  const highest = (from: number, to: number) => Math.max(...r.memory.filter((s) => s.at >= from && s.at < to && Number.isFinite(s.rss)).map((s) => s.rss));
  const baselineRss = highest(baselineFrom, baselineTo);
  const endRss = highest(endFrom, r.seconds + 1);
  if (!Number.isFinite(baselineRss) || !Number.isFinite(endRss)) return { compared: false, reason: 'no memory samples in the baseline or last minute' };
  const growth = endRss / baselineRss - 1;
  return { compared: true, baselineFrom, endFrom, baselineRss, endRss, growth, withinTarget: growth < MEMORY_TARGET };
}

/** Every check of the soak that failed, in words; empty when the run kept every promise. */
export function soakProblems(r: SoakResult, { compareMemory }: { compareMemory: boolean }): string[] {
  const problems: string[] = [];
  const say = (ok: boolean, problem: string) => {
    if (!ok) problems.push(problem);
  };
  say(r.requests > 100, `only ${r.requests} requests`);
  for (const kind of FAULT_KINDS) say(r.faults.some((f) => f.kind === kind), `fault never injected: ${kind}`);
  for (const f of r.faults) {
    say(f.succeededAfter >= RECOVERED_ANSWERS, `the service was not seen working again after the fault at ${f.at} s (${f.kind}): ${f.succeededAfter} answers 2xx after its window`);
  }
  say(r.succeededBeforeFaults > 0, 'no request succeeded before the first fault');
  say(r.failuresOutsideGrace.length === 0, `failures outside the fault windows: ${r.failuresOutsideGrace.slice(0, 10).join('; ')}`);
  say(r.population.capReached > 0, `no client reached its cap of apps: the bound on the population was not exercised`);
  say(r.population.max <= r.population.cap, `the service held ${r.population.max} apps, above the cap of ${r.population.cap}`);
  say(r.unsettledApps.leftAtEnd.length === 0, `apps still unsettled at the end: ${r.unsettledApps.leftAtEnd.join(', ')}`);
  say(r.appsUnaccounted.length === 0, `apps registered that no client was told of: ${r.appsUnaccounted.slice(0, 10).join(', ')}`);
  say(r.appsMissing.length === 0, `apps a client was told of that are gone: ${r.appsMissing.slice(0, 10).join(', ')}`);
  say(r.appsChecked > 0, 'no app was checked at the end');
  say(r.appsNotConnecting.length === 0, `apps not connecting: ${r.appsNotConnecting.slice(0, 10).join(', ')}`);
  say(r.halfMade.length === 0, `half-made objects: ${r.halfMade.slice(0, 10).join(', ')}`);
  say(r.reconciledAtEnd, 'the reconciler did not finish after the restart at the end');
  say(r.unexplainedErrorLogs.length === 0, `error lines outside the fault windows: ${r.unexplainedErrorLogs.slice(0, 3).join(' | ')}`);
  say(r.memory.some((s) => s.rss > 0 && s.heapUsed > 0) && r.population.samples > 0, 'memory or the population was never sampled');
  if (compareMemory) {
    const v = r.memoryVerdict;
    say(v.compared, `memory not compared: ${v.reason}`);
    if (v.compared) say(v.withinTarget === true, `memory grew ${((v.growth ?? 0) * 100).toFixed(1)} % (target < ${MEMORY_TARGET * 100} %)`);
  }
  return problems;
}

const SOAK_BEGIN = '<!-- soak:begin (written by npm --prefix service run soak) -->';
const SOAK_END = '<!-- soak:end -->';

/** Replaces the soak section of RELIABILITY.md (between its markers); the rest of the file is written by hand. */
export function writeReliability(path: string, r: SoakResult, o: SoakOptions): void {
  const text = readFileSync(path, 'utf8');
  const begin = text.indexOf(SOAK_BEGIN);
  const end = text.indexOf(SOAK_END);
  if (begin === -1 || end < begin) throw new Error(`${path} has no soak section (${SOAK_BEGIN} … ${SOAK_END})`);
  writeFileSync(path, `${text.slice(0, begin + SOAK_BEGIN.length)}\n${renderSoak(r, o)}\n${text.slice(end)}`);
}

export function renderSoak(r: SoakResult, o: SoakOptions): string {
  const mb = (bytes: number | undefined) => (bytes !== undefined && Number.isFinite(bytes) ? `${(bytes / 2 ** 20).toFixed(1)} MB` : 'n/a');
  const problems = soakProblems(r, { compareMemory: true });
  const v = r.memoryVerdict;
  const kinds = FAULT_KINDS.map((kind) => `${kind} ×${r.faults.filter((f) => f.kind === kind).length}`).join(', ');
  const excused = r.faults.reduce((n, f) => n + f.excused, 0);
  const excusedByStatus: Record<string, number> = {};
  for (const f of r.faults) for (const [k, v] of Object.entries(f.excusedByStatus)) excusedByStatus[k] = (excusedByStatus[k] ?? 0) + v;
  const latest = Math.max(...r.faults.map((f) => f.latestExcusedAfterEndMs ?? -Infinity));
  return [
    `## Soak: ${r.seconds} s (${(r.seconds / 60).toFixed(1)} minutes), ${o.clients} clients, a fault every ${o.faultEverySeconds} s`,
    '',
    `Run on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, local stack, loopback only, \`npm --prefix service run soak\` (this section is its output).`,
    `Checks (\`soakProblems\` in service/scripts/lib/soak/report.ts): **${problems.length === 0 ? 'all passed' : `${problems.length} failed`}**${problems.length === 0 ? '' : ` (${problems.map((p) => p.split(':')[0]).join('; ')}: the lines below give each)`}.`,
    '',
    `- Requests: ${r.requests} (${Object.entries(r.byOperation).map(([k, v]) => `${k} ${v}`).join(', ')})`,
    `- Answers by status: ${Object.entries(r.byStatus).sort().map(([k, v]) => `${k === '0' ? 'no answer' : k} ${v}`).join(', ')}`,
    `- Faults, each kind at least once: ${kinds}. At: ${r.faults.map((f) => `${f.at} s`).join(', ')}`,
    `- Fault windows (a fault, and ${FAULT_GRACE_MS / 1000} s after it ends): failures excused in them ${excused} (by status: ${Object.entries(excusedByStatus).map(([k, v]) => `${k === '0' ? 'no answer' : k} ${v}`).join(', ')}); the latest began ${Number.isFinite(latest) ? `${(latest / 1000).toFixed(1)} s after its fault ended` : '(none after a fault ended)'}. The service was seen working again (${RECOVERED_ANSWERS} answers 2xx) ${r.faults.map((f) => (f.recoveredAfterMs === null ? '?' : (f.recoveredAfterMs / 1000).toFixed(1))).join(', ')} s after each fault ended`,
    `- The latest failure excused after its fault had ended, per fault: ${r.faults.map((f) => `${f.at} s: ${latestAfterEnd(f) ?? 'none'}`).join('; ')}`,
    `- Requests outside every window, each required to succeed: ${r.checked}; failures among them (5xx or no answer): **${r.failuresOutsideGrace.length}**${r.failuresOutsideGrace.length ? ` (${r.failuresOutsideGrace.slice(0, 10).join('; ')})` : ''}. Answered 2xx before the first fault: ${r.succeededBeforeFaults}; after each fault's window, before the next fault: ${r.faults.map((f) => f.succeededAfter).join(', ')}`,
    `- 503 "too many backups and restores are running at once" with Retry-After (back-pressure, counted apart, not as failures): ${r.busy}`,
    `- Apps: each client holds at most ${o.appsPerClient ?? APPS_PER_CLIENT} (reached ${r.population.capReached} times), counting those whose creation or deletion got no clear answer (${r.unsettledApps.total}; looked up later: ${r.unsettledApps.foundAndDeleted} existed and were deleted, ${r.unsettledApps.foundAbsent} lookups found none, of which ${r.unsettledApps.madeAfterFoundAbsent.length} were made after all); the service held at most **${r.population.max}** (counted every ${POPULATION_SAMPLE_MS / 1000} s, ${r.population.samples} times; cap ${r.population.cap}), ${r.population.atEnd} at the end`,
    `- At the end, apps registered that no client was told of: **${r.appsUnaccounted.length}**; apps a client was told of that are gone: **${r.appsMissing.length}**; checked with their current connection strings: ${r.appsChecked}, not connecting: **${r.appsNotConnecting.length}**`,
    `- Half-made or half-removed objects after reconciliation: **${r.halfMade.length}**${r.halfMade.length ? ` (${r.halfMade.slice(0, 5).join('; ')})` : ''}`,
    v.compared
      ? `- Service RSS: ${mb(v.baselineRss)} after warm-up (highest from ${v.baselineFrom} s to ${(v.baselineFrom ?? 0) + 60} s), ${mb(v.endRss)} in the last minute (highest): **${(v.growth ?? 0) >= 0 ? '+' : ''}${((v.growth ?? 0) * 100).toFixed(1)}%** (target < ${MEMORY_TARGET * 100}%, compared: ${v.withinTarget ? 'met' : 'MISSED'})`
      : `- Service RSS: not compared (${v.reason})`,
    `- Error lines logged outside the fault windows: **${r.unexplainedErrorLogs.length}**${r.unexplainedErrorLogs.length ? ` (${r.unexplainedErrorLogs.slice(0, 5).join('; ')})` : ''}`,
    '',
    ...memoryReport(r),
  ].join('\n');
}

/** Of the failures a fault's window excused after the fault had ended, the one that began latest. */
function latestAfterEnd(f: FaultRecord): string | undefined {
  const after = f.excusedAfterEnd.filter((entry) => entry.startsWith('+'));
  return after.sort((a, b) => Number.parseFloat(b.slice(1)) - Number.parseFloat(a.slice(1)))[0];
}

/** The service's memory minute by minute: whether RSS growth is the heap settling or something kept. */
function memoryReport(r: SoakResult): string[] {
  if (r.memory.length === 0) return [];
  const mb = (bytes: number) => (Number.isFinite(bytes) ? `${(bytes / 2 ** 20).toFixed(1)} MB` : 'n/a');
  const byMinute = new Map<number, MemorySample[]>();
  for (const sample of r.memory) {
    const minute = Math.floor(sample.at / 60);
    byMinute.set(minute, [...(byMinute.get(minute) ?? []), sample]);
  }
  const finite = (values: number[]) => values.filter(Number.isFinite);
  const rows = [...byMinute.entries()].map(([minute, samples]) => ({
    minute,
    rss: Math.max(...finite(samples.map((x) => x.rss))),
    // The lowest heap in use seen in a minute is close to what survives a collection: its trend is the leak test.
    heapFloor: Math.min(...finite(samples.map((x) => x.heapUsed))),
    heapTotal: Math.max(...finite(samples.map((x) => x.heapTotal))),
    apps: Math.max(...finite(samples.map((x) => x.apps))),
  }));
  const baselineMinute = Math.floor((r.memoryVerdict.baselineFrom ?? 60) / 60);
  const first = rows.find((row) => row.minute >= baselineMinute) ?? rows[0]!; // the minute after warm-up
  const last = rows.at(-1)!;
  const change = (a: number, b: number) => `${b >= a ? '+' : ''}${((b / a - 1) * 100).toFixed(1)}%`;
  const measured = rows.filter((row) => row.minute >= first.minute);
  const floors = measured.map((row) => row.heapFloor);
  // Least-squares slope, in MB per minute: a leak shows as a steady rise, collections' noise does not.
  const slope = (values: number[]) => {
    const n = values.length;
    const meanX = (n - 1) / 2;
    const meanY = values.reduce((a, b) => a + b, 0) / n;
    const num = values.reduce((sum, y, x) => sum + (x - meanX) * (y - meanY), 0);
    const den = values.reduce((sum, _y, x) => sum + (x - meanX) ** 2, 0);
    return den === 0 ? 0 : num / den / 2 ** 20;
  };
  const signed = (value: number) => `${value >= 0 ? '+' : ''}${value.toFixed(2)}`;
  return [
    '### Memory and population, minute by minute',
    '',
    `Sampled every ${MEMORY_SAMPLE_MS / 1000} s: RSS from /proc, V8's heap from the service's /metrics, apps counted in Postgres (every state). The service runs with \`--max-old-space-size=96\`, as in its image; it was killed and restarted at the first fault, so minute 1 and the first fault's minute are a fresh process.`,
    '',
    '| minute | RSS (highest) | heap in use (lowest) | heap size (highest) | apps (highest) |',
    '| --- | --- | --- | --- | --- |',
    ...rows.map((row) => `| ${row.minute + 1} | ${mb(row.rss)} | ${mb(row.heapFloor)} | ${mb(row.heapTotal)} | ${Number.isFinite(row.apps) ? row.apps : 'n/a'} |`),
    '',
    `From minute ${first.minute + 1} to minute ${last.minute + 1}: RSS ${change(first.rss, last.rss)} (trend ${signed(slope(measured.map((row) => row.rss)))} MB per minute), heap size ${change(first.heapTotal, last.heapTotal)}. The lowest heap in use of each minute, close to what survives a collection, stayed between ${mb(Math.min(...floors))} and ${mb(Math.max(...floors))} (trend ${signed(slope(floors))} MB per minute).`,
    '',
  ];
}
