// The in-process tests' Postgres (test/app/): one real Postgres 15 per test process, started the way the local stack
// starts its Postgres part (scripts/lib/local-postgres.ts: the repo's postgres.conf and pg_hba.conf, initdb, init/),
// on the first call, and stopped once the process's tests are done. node --test runs each test file in a process
// of its own, so each file has a Postgres of its own; the apps a file builds (test/helpers/app.ts) share it.
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import type pg from 'pg';
import { checkPostgresBinaries, LocalPostgres } from '../../scripts/lib/local-postgres.js';
import { freePort } from '../../scripts/lib/parts.js';
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

async function startPostgres(): Promise<TestPostgres> {
  const pgBinDir = process.env.PG_BIN_DIR || '/usr/lib/postgresql/15/bin';
  checkPostgresBinaries(pgBinDir);
  const dir = mkdtempSync(join(tmpdir(), 'pgprov-app-'));
  chmodSync(dir, 0o755); // reachable by the unprivileged OS user Postgres runs as
  const postgres = new LocalPostgres({
    dir,
    pgPort: await freePort(),
    postgresPassword: 'test-superuser-password-Zq81',
    pgBinDir,
    pgOsUser: process.env.STACK_PG_OS_USER || 'postgres',
  });
  started = postgres;
  postgres.prepare();
  await postgres.start();
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
