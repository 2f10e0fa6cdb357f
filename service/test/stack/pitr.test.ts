// The whole cluster's backups and point-in-time recovery, on a real local stack whose Postgres archives its WAL with
// pgBackRest exactly as compose's (the repo's postgres.conf and pgbackrest.conf, paths and port aside), and the
// runbooks (runbooks/restore-cluster.sh, runbooks/recover-app.sh) run as an operator runs them, as root with the
// local stack's values. pgBackRest runs as the Postgres OS user with the stack's PGBACKREST_CONFIG, as the service's
// COPY … FROM PROGRAM runs it (test/app/cluster-backup.test.ts checks that path). Every drill writes through the
// app's own connection string (the pooler's), notes a moment T on the server's clock between two writes, destroys,
// and gets back exactly the rows of T. Each step's duration is reported (t.diagnostic), never asserted.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
import { asApp } from '../helpers/app-sessions.js';
import { eventually } from '../helpers/conditions.js';
import { assertRepositoryModes, pitrTools, run, timedStep } from '../helpers/pitr.js';
import { freePort, startTestStack, type TestStack } from '../helpers/stack.js';
import type { ProvisionedApp } from '../helpers/service-client.js';

let t: TestStack;
let app: ProvisionedApp;

before(async () => {
  assert.equal(process.getuid?.(), 0, 'the runbooks are run as root here, as on the VM (pgBackRest and Postgres then run as the Postgres OS user)');
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', READY_POOL_SIZE: '0' } });
  await t.waitForServiceLine(/"msg":"cluster backups: the pgBackRest stanza is ready/, 0, 30_000);
  app = await t.provision('ledger');
  await asApp(app.connection_string, (c) => c.query("CREATE TABLE entries (id int PRIMARY KEY, note text NOT NULL)"));
});
after(async () => {
  await t?.stop();
});

const { runbookEnv, pgbackrest, archiver, switchAndWaitArchived, serverNow, inScratchCluster } = pitrTools(() => t);
const step = timedStep;

/** Writes `rows` through the app's own connection string (the pooler's), then the server's clock after the commit. */
async function write(rows: Array<[number, string]>): Promise<string> {
  await asApp(app.connection_string, async (c) => {
    for (const [id, note] of rows) await c.query('INSERT INTO entries VALUES ($1, $2)', [id, note]);
  });
  return serverNow();
}

const entries = (connectionString = app.connection_string) => asApp(connectionString, async (c) => (await c.query<{ id: number; note: string }>('SELECT id, note FROM entries ORDER BY id')).rows);
const rowsOf = (rows: Array<[number, string]>) => rows.map(([id, note]) => ({ id, note }));

describe('WAL archiving and cluster backups (pgBackRest)', () => {
  it('archives WAL: pg_stat_archiver advances after pg_switch_wal, and no push fails', async (ctx) => {
    const before = await archiver();
    await write([[0, 'a segment to archive']]);
    const wal = await step(ctx, 'pg_switch_wal until archived', switchAndWaitArchived);
    const now = await archiver();
    assert.ok(Number(now.archived_count) > Number(before.archived_count));
    assert.equal(now.failed_count, '0');
    const info = JSON.parse(await pgbackrest('--output=json', 'info')) as Array<{ archive: Array<{ max: string }> }>;
    assert.ok(info[0]!.archive[0]!.max >= wal, 'the repository has it');
    await asApp(app.connection_string, (c) => c.query('DELETE FROM entries'));
  });

  it('takes a full, then an incremental backup as the Postgres OS user; the files are the Postgres user\'s, the repository 0750', async (ctx) => {
    await step(ctx, 'full backup (pgbackrest backup --type=full)', () => pgbackrest('backup', '--type=full'));
    await step(ctx, 'incremental backup (pgbackrest backup --type=incr)', () => pgbackrest('backup', '--type=incr'));
    const [info] = JSON.parse(await pgbackrest('--output=json', 'info')) as Array<{ backup: Array<{ type: string; label: string; prior: string | null; info: { size: number; repository: { size: number } } }> }>;
    assert.deepEqual(info!.backup.map((b) => b.type), ['full', 'incr']);
    assert.equal(info!.backup[1]!.prior, info!.backup[0]!.label);
    ctx.diagnostic(`full backup: ${info!.backup[0]!.info.size} bytes of cluster, ${info!.backup[0]!.info.repository.size} bytes in the repository (zst)`);
    const repo = t.stack.postgres.paths.pgbackrestRepo;
    assert.equal(statSync(repo).mode & 0o777, 0o750);
    const pgUid = statSync(t.stack.paths.pgData).uid;
    for (const sub of readdirSync(repo)) assert.equal(statSync(join(repo, sub)).uid, pgUid, `${sub} is the Postgres OS user's`);
    // Group-readable throughout (files 0640, directories 0750): compose's service reads the volume through group 999.
    assertRepositoryModes(repo);
  });

  it('restore-cluster.sh into a scratch directory at T: every row written before T is there, the later one is not', async (ctx) => {
    const before: Array<[number, string]> = Array.from({ length: 50 }, (_, i) => [i + 1, `row ${i + 1} with a backslash \\ and 'quotes'`]);
    const T = await write(before);
    await write([[1000, 'written after T']]);
    await step(ctx, 'archive the later write', switchAndWaitArchived);
    await asApp(app.connection_string, (c) => c.query('DROP TABLE entries'));

    await inScratchCluster(ctx, T, 'app_ledger', async (client) => {
      const rows = (await client.query<{ id: number; note: string }>('SELECT id, note FROM entries ORDER BY id')).rows;
      assert.deepEqual(rows, rowsOf(before), 'exactly the rows of T');
      assert.equal((await client.query('SELECT pg_is_in_recovery() AS r')).rows[0].r, false, 'promoted');
      assert.equal((await client.query('SHOW archive_mode')).rows[0].archive_mode, 'off', 'it never archives into the live repository');
    });
    // The live stack was not touched: the table is still gone there, until recover-app.sh (next test).
    assert.equal((await archiver()).failed_count, '0');
  });

  it('recover-app.sh brings one app back as it was at T, through the service (as the app\'s own agent)', async (ctx) => {
    // The table was dropped by the test before; T is the one noted there: note a new one, for this test alone.
    await asApp(app.connection_string, (c) => c.query('CREATE TABLE entries (id int PRIMARY KEY, note text NOT NULL)'));
    const before: Array<[number, string]> = [[1, 'kept'], [2, 'kept too']];
    const T = await write(before);
    await write([[3, 'written after T']]);
    await switchAndWaitArchived();
    await asApp(app.connection_string, (c) => c.query('DELETE FROM entries'));
    const other = await t.provision('bystander');
    await asApp(other.connection_string, (c) => c.query("CREATE TABLE mine AS SELECT 'made after T' AS v"));

    const work = join(t.stack.paths.dir, 'recover');
    const { stdout } = await step(ctx, 'recover-app.sh: scratch restore to T, pg_dump, restore through the service', async () =>
      run('sh', [join(REPO_ROOT, 'runbooks', 'recover-app.sh')], {
        env: runbookEnv({ APP: 'ledger', TARGET_TIME: T, BACKUP_DIR: t.stack.paths.backups, WORK_DIR: work, SCRATCH_PORT: String(await freePort()), BASE: t.stack.httpUrl, ADMIN_KEY: t.adminKey }),
      }),
    );
    assert.match(stdout, /restored app 'ledger' as it was at/);
    assert.doesNotMatch(stdout, new RegExp(t.adminKey), 'the admin key is never printed');
    assert.deepEqual(await entries(), rowsOf(before), 'the live app has exactly the rows of T');
    const dumps = readdirSync(t.stack.paths.backups).filter((f) => f.startsWith('app_ledger-') && f.endsWith('.dump'));
    assert.equal(dumps.length, 1);
    assert.match(dumps[0]!, /^app_ledger-[0-9a-f]{16}-\d{8}T\d{9}Z\.dump$/);
    assert.equal(statSync(join(t.stack.paths.backups, dumps[0]!)).mode & 0o777, 0o600);
    // Its checksum beside it, as the service writes its own: sha256sum -c checks it, and the service shows it.
    await run('sha256sum', ['-c', `${dumps[0]}.sha256`], { cwd: t.stack.paths.backups });
    assert.equal(statSync(join(t.stack.paths.backups, `${dumps[0]}.sha256`)).mode & 0o777, 0o600);
    const listed = await t.admin('GET', '/apps/ledger/backups');
    assert.ok(JSON.stringify(listed.body).includes(dumps[0]!), 'the service lists it as one of the app\'s backups');
    assert.match(String((listed.body.backups as Array<{ sha256: unknown }>)[0]?.sha256), /^[0-9a-f]{64}$/, 'with its checksum');
    assert.deepEqual(await asApp(other.connection_string, async (c) => (await c.query('SELECT v FROM mine')).rows), [{ v: 'made after T' }], 'every other app is as it is now');
    assert.deepEqual(readdirSync(work), [], 'the scratch cluster is stopped and removed');
    assert.match(stdout, /the scratch cluster is stopped and removed/);
  });

  it('restore-cluster.sh in place: Postgres stopped, restored to T, started; the service finds it again by itself', async (ctx) => {
    await write([[10, 'before the in-place T']]);
    const expected = await entries();
    const T = await serverNow();
    await write([[11, 'after the in-place T']]);
    await switchAndWaitArchived();
    await asApp(app.connection_string, (c) => c.query('TRUNCATE entries'));
    const reserve = join(t.stack.paths.pgData, 'disk-reserve');
    assert.ok(existsSync(reserve), 'the stack has its disk reserve');

    await step(ctx, 'stop Postgres (fast)', () => t.stack.stopPostgres());
    await step(ctx, 'restore-cluster.sh (in place, --delta)', () =>
      run('sh', [join(REPO_ROOT, 'runbooks', 'restore-cluster.sh')], { env: runbookEnv({ MODE: 'in-place', TARGET_TIME: T, DISK_RESERVE_MB: '256' }) }),
    );
    await step(ctx, 'start Postgres (it answers read-only once consistent, before it reaches T)', () => t.stack.startPostgres());
    // Until it has replayed up to T and promoted itself, it answers reads of an earlier moment and refuses writes.
    const promoted = await step(ctx, 'until recovered to T and promoted', () =>
      eventually(() => t.superuser(async (c) => (await c.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]!.r).catch(() => true), (inRecovery) => !inRecovery, 60_000),
    );
    assert.equal(promoted, false, 'promoted');
    const health = await step(ctx, 'until the service answers /health 200 again', () => eventually(() => t.get('/health'), (r) => r.status === 200, 30_000));
    assert.equal(health.status, 200, health.text);
    assert.deepEqual(await entries(), expected, "the rows of T, through the app's own connection string");
    assert.equal(statSync(reserve).size, 256 * 2 ** 20, 'the disk reserve is back');
    // The new timeline is archived as usual from here on.
    await write([[12, 'after the restore']]);
    const wal = await switchAndWaitArchived();
    assert.match(wal, /^00000002/, 'a new timeline');
    assert.equal((await t.admin('POST', '/provision', { app_name: 'after_restore' })).status, 201);
  });
});
