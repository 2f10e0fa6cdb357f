// CPU profiles under wrk of the service answering GET /health through nginx, and of the minimal server that is
// its reference (the ceiling): where each one's time per request goes. scripts/profile-health.ts prints them; the
// benchmark (scripts/lib/bench/) puts them in BENCHMARKS.md.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LocalStack } from './local-stack.js';
import type { HealthCeiling } from './minimal-health-server.js';
import { wrk } from './wrk.js';

export interface ProfileShare {
  name: string;
  /** Share of the profile's samples, 0..1. */
  share: number;
}

export interface ProfileSummary {
  /** Self time by where the code comes from: an npm package, Node's core, the service, or V8 ((idle), (garbage collector), native calls such as writev). */
  byOrigin: ProfileShare[];
  /** Self time by function. */
  byFunction: ProfileShare[];
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

function origin({ url, functionName }: ProfileNode['callFrame']): string {
  const fromPackage = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
  if (fromPackage) return fromPackage[1]!;
  if (url.startsWith('node:')) return "Node's core (JavaScript)";
  if (url.includes('/dist/')) return 'the service (dist/)';
  if (url === '') return functionName || '(native)';
  return url;
}

function topShares(samples: Map<string, number>, total: number, count: number): ProfileShare[] {
  return [...samples.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([name, n]) => ({ name, share: n / total }));
}

/**
 * Reads a .cpuprofile (V8's format, as `node --cpu-prof` writes it) and sums self time by origin and function,
 * leaving out the samples of the first `skipFirstMs` (the process starting up, before the load).
 */
export function summarizeCpuProfile(file: string, skipFirstMs = 0, count = 12): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] };
  const samplesByNode = new Map<number, number>();
  let elapsedUs = 0;
  let total = 0;
  profile.samples.forEach((id, i) => {
    elapsedUs += profile.timeDeltas[i] ?? 0;
    if (elapsedUs < skipFirstMs * 1000) return;
    samplesByNode.set(id, (samplesByNode.get(id) ?? 0) + 1);
    total++;
  });
  const byOrigin = new Map<string, number>();
  const byFunction = new Map<string, number>();
  for (const node of profile.nodes) {
    const samples = samplesByNode.get(node.id) ?? 0;
    if (samples === 0) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const where = url.replace(/^.*node_modules\//, '').replace(/^.*\/service\/dist\//, 'dist/');
    const name = where ? `${functionName || '(anonymous)'} (${where}:${lineNumber + 1})` : functionName || '(native)';
    byOrigin.set(origin(node.callFrame), (byOrigin.get(origin(node.callFrame)) ?? 0) + samples);
    byFunction.set(name, (byFunction.get(name) ?? 0) + samples);
  }
  return { byOrigin: topShares(byOrigin, total, count), byFunction: topShares(byFunction, total, count) };
}

export interface ProfiledProcess {
  /** Starts the process with the given node flags. */
  start(nodeFlags: string[]): Promise<void>;
  /** Ends it normally (the profile is written as it exits). */
  stop(): Promise<void>;
}

/**
 * Runs `target` under `node --cpu-prof` while wrk (2 threads, 64 connections) loads `url` for `seconds`, and
 * returns the profile's summary.
 */
export async function profileUnderLoad(target: ProfiledProcess, url: string, seconds: number): Promise<ProfileSummary> {
  const profileDir = mkdtempSync(join(tmpdir(), 'pgprov-profile-'));
  try {
    const started = Date.now();
    await target.start(['--cpu-prof', `--cpu-prof-dir=${profileDir}`]);
    const startupMs = Date.now() - started;
    try {
      await wrk(url, seconds);
    } finally {
      await target.stop();
    }
    const file = readdirSync(profileDir).find((name) => name.endsWith('.cpuprofile'));
    if (!file) throw new Error('no CPU profile was written');
    return summarizeCpuProfile(join(profileDir, file), startupMs);
  } finally {
    rmSync(profileDir, { recursive: true, force: true });
  }
}

/** The service of `stack` under load on GET /health through nginx; it runs unprofiled again afterwards. */
export async function profileServiceHealth(stack: LocalStack, seconds: number): Promise<ProfileSummary> {
  await stack.stopService();
  try {
    return await profileUnderLoad({ start: (flags) => stack.startService({}, flags), stop: () => stack.stopService() }, `${stack.httpUrl}/health`, seconds);
  } finally {
    await stack.startService();
  }
}

/** The ceiling's minimal server under the same load; it runs unprofiled again afterwards. */
export async function profileMinimalServer(ceiling: HealthCeiling, seconds: number): Promise<ProfileSummary> {
  await ceiling.stopServer();
  try {
    return await profileUnderLoad({ start: (flags) => ceiling.startServer(flags), stop: () => ceiling.stopServer() }, ceiling.url, seconds);
  } finally {
    await ceiling.startServer();
  }
}

/** Both summaries as one markdown table per view: the minimal server's share next to the service's. */
export function compareProfiles(minimal: ProfileSummary, service: ProfileSummary): string[] {
  const table = (heading: string, view: (summary: ProfileSummary) => ProfileShare[]) => {
    // Entries under half a percent on both sides are noise at this sampling rate.
    const names = [...new Set([...view(service), ...view(minimal)].filter(({ share }) => share >= 0.005).map(({ name }) => name))];
    const share = (summary: ProfileSummary, name: string) => {
      const found = view(summary).find((entry) => entry.name === name);
      return found ? `${(100 * found.share).toFixed(1)}%` : '·';
    };
    return [`| ${heading} | minimal server | service |`, '| --- | --- | --- |', ...names.map((name) => `| ${name.replace(/\|/g, '\\|')} | ${share(minimal, name)} | ${share(service, name)} |`)];
  };
  return [...table('self time by origin', (summary) => summary.byOrigin), '', ...table('self time by function', (summary) => summary.byFunction)];
}
