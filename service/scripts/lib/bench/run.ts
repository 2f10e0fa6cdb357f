// The benchmark: every figure of BENCHMARKS.md, each measured next to its reference in the same run, on the local
// stack (loopback only; every loop is bounded in count or time and stops by itself). One function per section
// (scripts/lib/bench/sections.ts), run in the order they share the stack best; any of them alone (`only`).
// The floors send the service's own steps straight to Postgres (scripts/lib/bench/floor.ts). Section 8, the apps'
// door (scripts/lib/bench/pooler.ts), runs on a second stack of its own, with the repo's postgres.conf unchanged.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BenchContext, FULL, TINY, type ContextOptions, type Sizes } from './context.js';
import { pooler } from './pooler.js';
import { renderReport, type Results } from './report.js';
import { bursts, concurrent, deprovision, floorReference, health, makeApps, readyPool, removeAfterPool, removeApps, rotation, scale, sequential, type MadeApps } from './sections.js';
import type { Summary } from './statistics.js';

/** The sections, by the names --only takes, in BENCHMARKS.md's order. */
export const SECTIONS = ['sequential', 'pool', 'bursts', 'concurrent', 'health', 'scale', 'deprovision', 'rotation', 'pooler'] as const;
export type Section = (typeof SECTIONS)[number];

export interface BenchOptions {
  tiny: boolean;
  /** The sections to run (default: all). */
  only?: readonly Section[];
  /** Sizes on top of the run's (FULL or TINY). */
  sizes?: Partial<Sizes>;
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

/** The sizes a comma-separated list sets (--sizes poolerApps=10,poolerSeconds=10); throws, naming them all, on an unknown one or a value that is not a positive integer. */
export function parseSizes(list: string): Partial<Sizes> {
  const sizes: Partial<Sizes> = {};
  for (const pair of list.split(',').map((item) => item.trim()).filter(Boolean)) {
    const [name, value] = pair.split('=');
    if (!name || !(name in FULL) || !/^[1-9]\d*$/.test(value ?? '')) {
      throw new Error(`--sizes takes name=positive integer pairs, names among ${Object.keys(FULL).join(', ')}; not ${pair}`);
    }
    sizes[name as keyof Sizes] = Number(value);
  }
  return sizes;
}

/**
 * Runs `work` on a new stack; Postgres's log lines that tell of a crash or a terminated session are added to
 * `incidents`, and on a failure the end of that log is logged, as evidence.
 */
async function onStack(tiny: boolean, log: (line: string) => void, options: ContextOptions, incidents: string[], work: (ctx: BenchContext) => Promise<void>): Promise<void> {
  const ctx = await BenchContext.start(tiny, log, options);
  const postgresLog = () => readFileSync(join(ctx.stack.paths.logs, 'postgres.log'), 'utf8').split('\n');
  try {
    await work(ctx);
    incidents.push(...postgresLog().filter((line) => /PANIC|was terminated by signal|terminating connection because of crash|out of memory/.test(line)).slice(0, 5));
  } catch (err) {
    log(`the benchmark failed: ${String((err as Error)?.stack ?? err)}\nthe end of Postgres's log:\n${postgresLog().slice(-40).join('\n')}`);
    throw err;
  } finally {
    await ctx.stop();
  }
}

/** Sections 1 to 7, on one stack (max_connections = 100 for the floors), in the order they share it best. */
async function serviceSections(ctx: BenchContext, runs: (section: Section) => boolean, results: Results): Promise<void> {
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
}

export async function runBenchmark(options: BenchOptions): Promise<string> {
  const log = options.log ?? (() => {});
  const runs = (section: Section) => !options.only || options.only.includes(section);
  const results: Results = {};
  const incidents: string[] = [];
  if (SECTIONS.some((section) => section !== 'pooler' && runs(section))) {
    await onStack(options.tiny, log, { sizes: options.sizes }, incidents, (ctx) => serviceSections(ctx, runs, results));
  }
  // 8 on a stack of its own: the repo's postgres.conf as is (50 connections), what the apps' door is sized for.
  if (runs('pooler')) {
    await onStack(options.tiny, log, { sizes: options.sizes, productionConnections: true }, incidents, async (ctx) => {
      results.pooler = await pooler(ctx);
    });
  }
  results.postgresIncidents = incidents.slice(0, 5);
  const sizes = { ...(options.tiny ? TINY : FULL), ...options.sizes };
  const text = renderReport(results, sizes, options.tiny, options.only, options.sizes).join('\n');
  if (options.out) writeFileSync(options.out, text);
  return text;
}
