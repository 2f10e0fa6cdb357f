// Owns what keeps one local stack to its STACK_DIR and its ports: $STACK_DIR/stack.lock, which names the
// running stack (its pid, its ports, its parts' pids) so that a second start on the same directory says what
// runs there and starts nothing; the check that the ports are free before anything starts; and reading a
// process's identity from /proc, so a pid the system has reused is not taken for a running stack.
import { spawnSync } from 'node:child_process';
import { linkSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';

export type StackPart = 'postgres' | 'service' | 'pgbouncer' | 'nginx';

export interface StackLockInfo {
  pid: number;
  /** The process's start time (/proc/<pid>/stat), which a later process reusing the pid does not share. */
  started: string;
  ports: { http: number; pg: number; service: number; pooler?: number };
  parts: Partial<Record<StackPart, number>>;
}

export interface ProcessStat {
  ppid: number;
  pgrp: number;
  /** Clock ticks since boot at which the process started. */
  started: string;
}

/** A live process's parent, process group and start time; undefined if it has exited (a zombie included). */
export function processStat(pid: number): ProcessStat | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // After "pid (comm) ", fields 3 onward: state, ppid, pgrp, …, starttime (field 22).
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z' || fields[19] === undefined) return undefined;
  return { ppid: Number(fields[1]), pgrp: Number(fields[2]), started: fields[19] };
}

export function lockFile(stackDir: string): string {
  return join(stackDir, 'stack.lock');
}

/** The lock's contents if its stack is still running; undefined if there is none or it was left by a dead one. */
export function runningStack(stackDir: string): StackLockInfo | undefined {
  let info: StackLockInfo;
  try {
    info = JSON.parse(readFileSync(lockFile(stackDir), 'utf8')) as StackLockInfo;
  } catch {
    return undefined;
  }
  return processStat(info.pid)?.started === info.started ? info : undefined;
}

export class StackLock {
  private readonly stackDir: string;
  private readonly info: StackLockInfo;

  private constructor(stackDir: string, info: StackLockInfo) {
    this.stackDir = stackDir;
    this.info = info;
  }

  /**
   * Takes $STACK_DIR/stack.lock for this process, or returns what the running stack that holds it wrote. A lock
   * left by a stack that died without removing it (SIGKILL, power loss) is taken over.
   */
  static take(stackDir: string, ports: StackLockInfo['ports']): StackLock | StackLockInfo {
    const path = lockFile(stackDir);
    const info: StackLockInfo = { pid: process.pid, started: processStat(process.pid)!.started, ports, parts: {} };
    const draft = `${path}.${process.pid}`;
    writeFileSync(draft, `${JSON.stringify(info)}\n`);
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          linkSync(draft, path); // atomic, and fails if the lock exists: a reader never sees half a lock
          return new StackLock(stackDir, info);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt === 3) throw err;
        }
        const holder = runningStack(stackDir);
        if (holder) return holder;
        rmSync(path, { force: true });
      }
    } finally {
      rmSync(draft, { force: true });
    }
  }

  /** Records a part's pid as it starts, so the lock names every process of the stack. */
  recordPart(part: StackPart, pid: number | undefined): void {
    this.info.parts[part] = pid;
    const path = lockFile(this.stackDir);
    writeFileSync(`${path}.${process.pid}`, `${JSON.stringify(this.info)}\n`);
    renameSync(`${path}.${process.pid}`, path); // atomic: a reader sees the old lock or the new one
  }

  /** Removes the lock, if it is still this process's. */
  release(): void {
    if (runningStack(this.stackDir)?.pid === process.pid) rmSync(lockFile(this.stackDir), { force: true });
  }
}

/** Why `port` cannot be listened on at 127.0.0.1 (e.g. "in use by nginx, pid 123"); undefined if it can. */
export async function portProblem(port: number): Promise<string | undefined> {
  const code = await new Promise<string | undefined>((resolve) => {
    const server = createServer();
    server.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? String(err)));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(undefined)));
  });
  if (code !== 'EADDRINUSE') return code;
  const listener = /users:\(\("([^"]+)",pid=(\d+)/.exec(spawnSync('ss', ['-Hltnp', `sport = :${port}`], { encoding: 'utf8' }).stdout ?? '');
  return listener ? `in use by ${listener[1]}, pid ${listener[2]}` : 'in use';
}
