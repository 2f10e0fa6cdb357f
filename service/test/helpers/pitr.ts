// What the point-in-time recovery drills (test/stack/pitr.test.ts, pitr-offsite.test.ts) do on a test stack, as an
// operator does it there (README: the local stack's variants, as root): the runbooks' settings, pgBackRest as the
// Postgres OS user with the stack's configuration, WAL forced out and waited for, the server's clock as a
// TARGET_TIME, and a scratch cluster restored to T by runbooks/restore-cluster.sh, looked into, then stopped and
// removed as the script says. Each step's duration goes to the test's diagnostics, never into an assertion.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { promisify } from 'node:util';
import pg from 'pg';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
import { eventually } from './conditions.js';
import { freePort, type TestStack } from './stack.js';

export const run = promisify(execFile);
export const PG_OS_USER = process.env.STACK_PG_OS_USER || 'postgres';
export const STANZA = 'pgprov';

/** Runs `work`; its duration goes to the test's diagnostics (for RELIABILITY.md), never into an assertion. */
export async function timedStep<T>(ctx: TestContext, what: string, work: () => Promise<T> | T): Promise<T> {
  const started = process.hrtime.bigint();
  const result = await work();
  ctx.diagnostic(`${what}: ${Number((process.hrtime.bigint() - started) / 1_000_000n)} ms`);
  return result;
}

/** Runs a program as the Postgres OS user (setpriv), as the runbooks do as root. */
export function asPostgresUser(program: string, args: string[], options: { env?: NodeJS.ProcessEnv } = {}) {
  return run('setpriv', ['--reuid', PG_OS_USER, '--regid', PG_OS_USER, '--init-groups', '--', program, ...args], options);
}

/** pgBackRest's modes throughout a repository: directories 0750, files 0640 (compose's service reads it through the group). */
export function assertRepositoryModes(repo: string): void {
  assert.equal(statSync(repo).mode & 0o777, 0o750);
  for (const entry of readdirSync(repo, { recursive: true, withFileTypes: true })) {
    const path = join(entry.parentPath ?? entry.path, entry.name);
    const stat = statSync(path); // through a symbolic link (backup/pgprov/latest) to what it names
    assert.equal(stat.mode & 0o777, stat.isDirectory() ? 0o750 : 0o640, `${path} is ${(stat.mode & 0o777).toString(8)}`);
  }
}

export type Archiver = { last_archived_wal: string | null; archived_count: string; failed_count: string };

/** The drills' tools on one test stack (`stack()`: the file's, once started). */
export function pitrTools(stack: () => TestStack) {
  /** The runbooks' settings for this stack (README: the local stack's variant). */
  const runbookEnv = (extra: Record<string, string>): NodeJS.ProcessEnv => {
    const { stack: local } = stack();
    return {
      PATH: process.env.PATH,
      ...local.postgres.pgbackrestEnvironment(),
      PG_OS_USER,
      PG_BIN_DIR: local.settings.pgBinDir,
      POSTGRES_CONF: join(local.paths.pgConf, 'postgres.conf'),
      STANZA,
      ...extra,
    };
  };

  /** pgBackRest as the Postgres OS user, with the stack's configuration: as archive_command and the service run it. */
  const pgbackrest = async (...args: string[]): Promise<string> =>
    (await asPostgresUser('pgbackrest', [`--stanza=${STANZA}`, ...args], { env: { PATH: process.env.PATH, ...stack().stack.postgres.pgbackrestEnvironment() } })).stdout;

  const archiver = () => stack().superuser(async (c) => (await c.query<Archiver>('SELECT last_archived_wal, archived_count, failed_count FROM pg_stat_archiver')).rows[0]!);

  /** Ends the current WAL segment and waits until pgBackRest has it: everything committed so far is in the repository. */
  const switchAndWaitArchived = async (): Promise<string> => {
    const wal = await stack().superuser(async (c) => (await c.query<{ wal: string }>('SELECT pg_walfile_name(pg_switch_wal()) AS wal')).rows[0]!.wal);
    const status = await eventually(archiver, (s) => (s.last_archived_wal ?? '') >= wal, 60_000);
    assert.ok((status.last_archived_wal ?? '') >= wal, `WAL segment ${wal} was archived (last: ${status.last_archived_wal})`);
    return wal;
  };

  /** The server's clock now (after whatever was committed before), as restore-cluster.sh's TARGET_TIME takes it. */
  const serverNow = () =>
    stack().superuser(async (c) => (await c.query<{ now: string }>("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' AS now")).rows[0]!.now);

  /**
   * Restores the cluster as at `target` into a scratch directory with runbooks/restore-cluster.sh, connects to
   * `database` there as the superuser (over its socket), runs `work` with that connection, then stops the scratch
   * cluster (pg_ctl -m fast, as the Postgres OS user) and removes it, whatever happened.
   */
  const inScratchCluster = async <T>(ctx: TestContext, target: string, database: string, work: (client: pg.Client) => Promise<T>): Promise<T> => {
    const scratchRoot = mkdtempSync(join(stack().stack.paths.dir, 'scratch-'));
    chmodSync(scratchRoot, 0o755); // reachable by the Postgres OS user
    const scratch = join(scratchRoot, 'pgdata');
    const port = await freePort();
    try {
      const { stdout } = await timedStep(ctx, 'restore-cluster.sh (scratch): restore and recover to T, started', () =>
        run('sh', [join(REPO_ROOT, 'runbooks', 'restore-cluster.sh')], { env: runbookEnv({ MODE: 'scratch', TARGET_TIME: target, SCRATCH_DIR: scratch, SCRATCH_PORT: String(port) }) }),
      );
      assert.match(stdout, /the scratch cluster is up, as at/);
      const client = new pg.Client({ host: `${scratch}.run`, port, user: 'postgres', database });
      await client.connect();
      try {
        return await work(client);
      } finally {
        await client.end();
      }
    } finally {
      // As the runbook says: pg_ctl -m fast stop as the Postgres OS user, then remove the directory and its .run.
      await timedStep(ctx, 'stop the scratch cluster, remove it', async () => {
        await asPostgresUser(join(stack().stack.settings.pgBinDir, 'pg_ctl'), ['-D', scratch, '-m', 'fast', '-w', 'stop']).catch(() => {});
        rmSync(scratchRoot, { recursive: true, force: true });
      });
    }
  };

  return { runbookEnv, pgbackrest, archiver, switchAndWaitArchived, serverNow, inScratchCluster };
}
