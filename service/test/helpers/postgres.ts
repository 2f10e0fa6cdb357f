// The in-process tests' Postgres (test/app/): one real Postgres 15 per test process, started the way the local stack
// starts its Postgres part (scripts/lib/local-postgres.ts: the repo's postgres.conf and pg_hba.conf, initdb, init/),
// on the first call, and stopped once the process's tests are done. node --test runs each test file in a process
// of its own, so each file has a Postgres of its own; the apps a file builds (test/helpers/app.ts) share it.
// Its files live in memory (/dev/shm, where there is one): on this kind of virtual machine initdb, CREATE and DROP
// DATABASE take several times longer on disk, and nothing here tests the disk. For the same reason init/'s disk
// reserve is 0 MB (DISK_RESERVE_MB): the stack's tests keep the 256 MB reserve, and test/stack/disk-full.test.ts
// fills a disk. initdb and init/ run once, for a template each process copies (dataDirectoryTemplate).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after } from 'node:test';
import type pg from 'pg';
import { checkPostgresBinaries, LocalPostgres, REPO_ROOT, SERVICE_DIR, type PostgresSettings } from '../../scripts/lib/local-postgres.js';
import { freePort } from '../../scripts/lib/parts.js';
import { trustAuthority } from './app-sessions.js';
import { asSuperuser } from './service-client.js';

export interface TestPostgres {
  postgres: LocalPostgres;
  /** Its TCP port on 127.0.0.1: where apps connect. */
  port: number;
  /** The settings that point the service at it (src/shared/config.ts), as the local stack gives them. */
  serviceSettings(): Record<string, string>;
  /** A superuser connection (TCP 127.0.0.1, as the operator's psql), for checking the catalogs. */
  superuser<T>(work: (client: pg.Client) => Promise<T>, database?: string): Promise<T>;
  /** What Postgres has logged so far. */
  log(): string;
}

let shared: Promise<TestPostgres> | undefined;
let started: LocalPostgres | undefined;

/** This process's Postgres, started on the first call. */
export function sharedPostgres(): Promise<TestPostgres> {
  shared ??= startPostgres();
  return shared;
}

/** A directory in memory (tmpfs) to make Postgres's in, if this machine has one. */
function inMemory(): string | undefined {
  const shm = '/dev/shm';
  return existsSync(shm) && statSync(shm).isDirectory() ? shm : undefined;
}

const PASSWORD = 'test-superuser-password-Zq81';
const PG_BIN_DIR = process.env.PG_BIN_DIR || '/usr/lib/postgresql/15/bin';

/** How every process's Postgres is set up: only the directory and the port differ. */
function postgresSettings(base: string, pgPort: number): PostgresSettings {
  const dir = mkdtempSync(join(base, 'pgprov-app-'));
  chmodSync(dir, 0o755); // reachable by the unprivileged OS user Postgres runs as
  return { dir, pgPort, postgresPassword: PASSWORD, pgBinDir: PG_BIN_DIR, pgOsUser: process.env.STACK_PG_OS_USER || 'postgres', diskReserveMb: 0 };
}

/**
 * A data directory made once as the stack makes one (initdb, then init/ on the running server) and kept in `base`
 * under a name that changes with what makes it (init/, scripts/lib/local-postgres.ts, the Postgres version): each
 * process's Postgres starts from a copy of it instead of running initdb again. Made aside and renamed into place,
 * so that a process never copies half of one; when two make it at once, the second rename fails and its copy goes.
 */
async function dataDirectoryTemplate(base: string): Promise<string> {
  const hash = createHash('sha256').update(spawnSync(join(PG_BIN_DIR, 'postgres'), ['--version'], { encoding: 'utf8' }).stdout ?? '').update(PASSWORD);
  for (const file of [join(SERVICE_DIR, 'scripts', 'lib', 'local-postgres.ts'), ...readdirSync(join(REPO_ROOT, 'init')).sort().map((name) => join(REPO_ROOT, 'init', name))]) {
    if (statSync(file).isFile()) hash.update(relative(REPO_ROOT, file)).update(readFileSync(file));
  }
  const template = join(base, `pgprov-test-pgdata-${hash.digest('hex').slice(0, 16)}`);
  if (existsSync(join(template, 'PG_VERSION'))) return template;
  const maker = new LocalPostgres(postgresSettings(base, await freePort()));
  try {
    maker.prepare();
    await maker.start();
    await maker.stop();
    try {
      renameSync(maker.paths.pgData, template);
    } catch (err) {
      if (!existsSync(join(template, 'PG_VERSION'))) throw err;
    }
  } finally {
    await maker.stop();
    maker.closeLogs();
    rmSync(maker.paths.dir, { recursive: true, force: true });
  }
  return template;
}

async function startPostgres(): Promise<TestPostgres> {
  checkPostgresBinaries(PG_BIN_DIR);
  const base = inMemory() ?? tmpdir();
  const postgres = new LocalPostgres(postgresSettings(base, await freePort()));
  started = postgres;
  postgres.prepare();
  // A copy of the template, owner and modes kept: Postgres finds a data directory made and initialised, as after a restart.
  const copied = spawnSync('cp', ['-a', await dataDirectoryTemplate(base), postgres.paths.pgData], { encoding: 'utf8' });
  if (copied.status !== 0) throw new Error(`could not copy the data directory template: ${copied.stderr}`);
  await postgres.start();
  trustAuthority(postgres.tlsFiles().caCertificate);
  return {
    postgres,
    port: postgres.settings.pgPort,
    serviceSettings: () => postgres.serviceSettings(),
    superuser: (work, database = 'postgres') => asSuperuser(postgres.superuserConnection(database), work),
    log: () => readFileSync(join(postgres.paths.logs, 'postgres.log'), 'utf8'),
  };
}

// After every test of this process (a hook on the root test of the file that imported this module).
after(async () => {
  if (!started) return;
  await started.stop();
  started.closeLogs();
  rmSync(started.paths.dir, { recursive: true, force: true });
});
