// The benchmark: every figure of BENCHMARKS.md, each measured next to its reference in the same run, on the local
// stack (loopback only; every loop is bounded in count or time and stops by itself). One function per section
// (scripts/lib/bench/sections.ts), run in the order they share the stack best; any of them alone (`only`).
// The floors send the service's own steps straight to Postgres (scripts/lib/bench/floor.ts).
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BenchContext } from './context.js';
import { renderReport, type Results } from './report.js';
import { bursts, concurrent, deprovision, floorReference, health, makeApps, readyPool, removeAfterPool, removeApps, rotation, scale, sequential, type MadeApps } from './sections.js';
import type { Summary } from './statistics.js';

/** The sections, by the names --only takes, in BENCHMARKS.md's order. */
export const SECTIONS = ['sequential', 'pool', 'bursts', 'concurrent', 'health', 'scale', 'deprovision', 'rotation'] as const;
export type Section = (typeof SECTIONS)[number];

export interface BenchOptions {
  tiny: boolean;
  /** The sections to run (default: all). */
  only?: readonly Section[];
  /** Where to write the report (markdown); undefined: nowhere. */
  out?: string;
  log?: (line: string) => void;
}

/** The sections a comma-separated list names (--only sequential,rotation); throws, naming them all, on an unknown one. */
export function parseSections(list: string): Section[] {
  const names = list.split(',').map((name) => name.trim()).filter(Boolean);
  const unknown = names.filter((name) => !(SECTIONS as readonly string[]).includes(name));
  if (unknown.length > 0 || names.length === 0) {
    throw new Error(`--only takes sections among ${SECTIONS.join(', ')}${unknown.length > 0 ? `; not ${unknown.join(', ')}` : ''}`);
  }
  return SECTIONS.filter((section) => names.includes(section));
}

export async function runBenchmark(options: BenchOptions): Promise<string> {
  const log = options.log ?? (() => {});
  const runs = (section: Section) => !options.only || options.only.includes(section);
  const ctx = await BenchContext.start(options.tiny, log);
  let text: string;
  try {
    const results: Results = {};
    // The on-demand floor: section 1's, or measured alone when a section that needs it runs without 1.
    let floor: Summary | undefined;
    const floorNeeded = async () => (floor ??= await floorReference(ctx));

    // 1, then 6 on the apps 1 made (or on apps of its own), then 7.
    let made: MadeApps | undefined;
    if (runs('sequential')) {
      const section = await sequential(ctx);
      results.sequential = section.results;
      floor = section.results.floor;
      made = section.apps;
    }
    if (runs('deprovision')) results.deletes = await deprovision(ctx, made ?? (await makeApps(ctx, ctx.sizes.deletes)));
    else if (made) await removeApps(ctx, made);
    if (runs('rotation')) results.rotation = await rotation(ctx);

    // 2 and 2b, each with the pool it needs; their apps are removed once both have run.
    const pooled: string[] = [];
    if (runs('pool')) {
      const section = await readyPool(ctx, await floorNeeded());
      results.pool = section.results;
      pooled.push(...section.apps);
    }
    if (runs('bursts')) {
      const section = await bursts(ctx);
      results.bursts = section.results;
      pooled.push(...section.apps);
    }
    if (runs('pool') || runs('bursts')) await removeAfterPool(ctx, pooled);

    if (runs('concurrent')) results.concurrency = await concurrent(ctx);
    if (runs('health')) results.health = await health(ctx);
    if (runs('scale')) results.scale = await scale(ctx, await floorNeeded());

    // Anything Postgres logged as a crash or a terminated session during the run, as evidence.
    const postgresLog = readFileSync(join(ctx.stack.paths.logs, 'postgres.log'), 'utf8').split('\n');
    results.postgresIncidents = postgresLog.filter((line) => /PANIC|was terminated by signal|terminating connection because of crash|out of memory/.test(line)).slice(0, 5);
    text = renderReport(results, ctx.sizes, options.tiny, options.only).join('\n');
  } catch (err) {
    // Keep the evidence: Postgres's log says why a run broke.
    const tail = readFileSync(join(ctx.stack.paths.logs, 'postgres.log'), 'utf8').split('\n').slice(-40).join('\n');
    log(`the benchmark failed: ${String((err as Error)?.stack ?? err)}\nthe end of Postgres's log:\n${tail}`);
    throw err;
  } finally {
    await ctx.stop();
  }
  if (options.out) writeFileSync(options.out, text);
  return text;
}
