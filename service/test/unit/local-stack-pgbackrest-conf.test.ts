// The local stack's pgbackrest.conf (scripts/lib/local-postgres.ts): the repo's, which compose mounts as is, with
// only the paths and the port changed, so that what the stack's WAL archiving and backups test is what compose runs.
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { LocalPostgres, REPO_ROOT } from '../../scripts/lib/local-postgres.js';
import { assertKeptAsIs, assertSameLines, changedSettings } from '../helpers/config-lines.js';

const DIR = '/tmp/pgprov-unit';
const PG_PORT = 15432;

function postgres(dir = DIR): LocalPostgres {
  return new LocalPostgres(
    { dir, pgPort: PG_PORT, postgresPassword: 'pa:ss\\word', pgBinDir: '/usr/lib/postgresql/15/bin', pgOsUser: process.env.STACK_PG_OS_USER || 'postgres' },
    () => {
      throw new Error('nothing is started here');
    },
  );
}

/** `key=value` of a line of pgbackrest.conf, or undefined for comments, blank lines and section headers. */
function setting(line: string): { key: string; value: string } | undefined {
  const match = /^([a-z0-9-]+)=(.*)$/.exec(line);
  return match ? { key: match[1]!, value: match[2]! } : undefined;
}

describe("the local stack's pgbackrest.conf", () => {
  const repo = readFileSync(join(REPO_ROOT, 'pgbackrest.conf'), 'utf8').split('\n');
  const local = postgres().pgbackrestConfig().split('\n');

  it("is the repo's line for line: comments, sections, every setting and its order", () => {
    assertSameLines(repo, local, setting);
  });

  it("changes only paths (into the stack's directory) and the port (the stack's)", () => {
    const changed = changedSettings(repo, local, setting);
    assert.deepEqual(Object.fromEntries(changed), {
      'repo1-path': join(DIR, 'pgbackrest', 'repo'),
      'lock-path': join(DIR, 'pgbackrest', 'lock'),
      'pg1-path': join(DIR, 'pgdata'),
      'pg1-socket-path': join(DIR, 'run'),
      'pg1-port': String(PG_PORT),
    });
    // What decides what is kept and how is compose's exactly.
    assertKeptAsIs(local, changed, ['repo1-retention-full', 'repo1-retention-full-type', 'compress-type', 'repo1-bundle', 'process-max', 'start-fast', 'archive-async', 'pg1-user', 'log-level-file'], setting);
    assert.ok(local.includes('[pgprov]'), "the stanza postgres.conf's archive_command names");
    assert.match(readFileSync(join(REPO_ROOT, 'postgres.conf'), 'utf8'), /^archive_command = 'pgbackrest --stanza=pgprov archive-push %p'$/m);
  });

  it('tells the service where the repository is, and the postmaster where the file and the password are', () => {
    const pg = postgres();
    assert.equal(pg.serviceSettings().PGBACKREST_REPO_PATH, setting(local.find((line) => line.startsWith('repo1-path='))!)!.value);
    assert.deepEqual(pg.pgbackrestEnvironment(), { PGBACKREST_CONFIG: join(DIR, 'pgbackrest', 'pgbackrest.conf'), PGPASSFILE: join(DIR, 'pgbackrest', 'pgpass') });
  });

  it('is written by prepare(), readable by the Postgres OS user, its repository 0750', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgprov-unit-pgbackrest-'));
    chmodSync(dir, 0o755); // reachable by the Postgres OS user
    try {
      const pg = postgres(dir);
      pg.prepare();
      assert.equal(readFileSync(pg.paths.pgbackrestConfig, 'utf8'), pg.pgbackrestConfig());
      assert.equal(statSync(pg.paths.pgbackrestRepo).mode & 0o777, 0o750);
      assert.equal(statSync(pg.paths.pgbackrestConfig).mode & 0o777, 0o640);
      if (process.getuid?.() === 0) {
        const uid = Number(readFileSync('/etc/passwd', 'utf8').split('\n').find((line) => line.startsWith(`${pg.settings.pgOsUser}:`))!.split(':')[2]);
        for (const path of [pg.paths.pgbackrest, pg.paths.pgbackrestRepo, pg.paths.pgbackrestLocks, pg.paths.pgbackrestConfig]) assert.equal(statSync(path).uid, uid, path);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
