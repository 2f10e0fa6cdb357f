// The point-in-time restore drill from the off-site copy alone (issue #14, "Restore drills"). The service does
// everything by itself, as in production: its scheduler takes the cluster's first full backup (pgBackRest) and
// copies pgBackRest's repository off the machine (OFFSITE_SCHEDULE) to a real SFTP remote (Debian's OpenSSH, sshd of
// the test's own on loopback: test/helpers/sftp-remote.ts). An app writes through its own connection string (the
// pooler's), a moment T is noted on the server's clock, the app writes more and then destroys its table; once that
// WAL is archived and on the remote, the disaster: Postgres stopped and the local repository deleted. The operator's
// runbooks, run as documented for the local stack (as root): runbooks/fetch-offsite.sh fetches the repository back,
// runbooks/restore-cluster.sh restores a scratch cluster to T from it, and every row of T is checked, nothing later.
// Each step's duration is reported (t.diagnostic), never asserted. Needs root (its own sshd; the runbooks), as CI.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
import { asApp } from '../helpers/app-sessions.js';
import { eventually } from '../helpers/conditions.js';
import { startSftpRemote, type SftpRemote } from '../helpers/sftp-remote.js';
import { assertRepositoryModes, PG_OS_USER, pitrTools, run, STANZA, timedStep } from '../helpers/pitr.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let remote: SftpRemote;
let t: TestStack;

before(async () => {
  assert.equal(process.getuid?.(), 0, 'the runbooks are run as root here, as on the VM; the SFTP remote is an sshd of our own');
  remote = await startSftpRemote();
  t = await startTestStack({
    serviceEnv: {
      LOG_PRETTY: 'false',
      LOG_LEVEL: 'info',
      READY_POOL_SIZE: '0',
      // The service's own schedules: a full backup at once (there is none yet), then every hour; the copy off the
      // machine after it and every 2 s (every hour by default).
      CLUSTER_BACKUP_SCHEDULE: 'every 1h',
      OFFSITE_SCHEDULE: 'every 2s',
      OFFSITE_REMOTE: `${remote.remote}/pitr`,
      RCLONE_CONFIG: remote.rcloneConfig,
      BACKUP_SCHEDULER_TICK_MS: '200',
      BACKUP_RETRY_DELAY_MS: '500',
    },
  });
});
after(async () => {
  await t?.stop();
  await remote?.stop();
});

const { pgbackrest, archiver, switchAndWaitArchived, serverNow, inScratchCluster } = pitrTools(() => t);
const step = timedStep;

/** Files under `dir` whose base name starts with `prefix` (none when `dir` is missing). */
function filesStartingWith(dir: string, prefix: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((name) => name.startsWith(prefix));
}

type Row = { id: number; note: string; amount: string; payload: unknown; at: Date };
const SELECT_ROWS = 'SELECT id, note, amount::text AS amount, payload, at FROM entries ORDER BY id';

describe('point-in-time restore drill: from the off-site copy alone', () => {
  it('writes, notes T, writes more and destroys it; the service backs up and copies off-site by itself; the local repository deleted, fetched back with fetch-offsite.sh, restored to T with restore-cluster.sh: every row of T, nothing later', { timeout: 600_000 }, async (ctx) => {
    const repo = t.stack.postgres.paths.pgbackrestRepo;
    const remoteRepo = join(remote.dir, 'pitr', 'pgbackrest');

    // The service's first cluster backup (a full: there is none), made by its own scheduler.
    const backedUp = await step(ctx, "the service's first cluster backup (full, by its scheduler)", () =>
      t.waitForServiceLine(/"msg":"cluster backup \(pgBackRest\) finished"/, 0, 300_000),
    );
    assert.match(backedUp, /"type":"full"/);

    // pgBackRest picks the backup to restore from by its stop time, in whole seconds, strictly before TARGET_TIME's
    // whole second: a T in the very second the backup stopped finds none ("unable to find backup set with stop time
    // less than …", seen here). An operator's T is never that close; the drill's can be: wait until the server's
    // clock has left that second.
    const [stanzaInfo] = JSON.parse(await pgbackrest('--output=json', 'info')) as Array<{ backup: Array<{ timestamp: { stop: number } }> }>;
    const stopped = stanzaInfo!.backup[0]!.timestamp.stop;
    await step(ctx, "until the server's clock is past the backup's stop second", () =>
      eventually(() => t.superuser(async (c) => Number((await c.query<{ s: string }>('SELECT floor(extract(epoch FROM clock_timestamp())) AS s')).rows[0]!.s)), (s) => s > stopped, 10_000),
    );

    // An app, and its data written as an app writes it: node-postgres with the string the service returned.
    const app = await step(ctx, 'provision', () => t.provision('drill'));
    const written1 = await step(ctx, 'write 1 (500 rows)', () =>
      asApp(app.connection_string, async (c) => {
        await c.query('CREATE TABLE entries (id int PRIMARY KEY, note text NOT NULL, amount numeric(12,2) NOT NULL, payload jsonb NOT NULL, at timestamptz NOT NULL)');
        await c.query(
          `INSERT INTO entries
             SELECT i, 'row ' || i || E' – café ✓ \\\\ ''quoted'' ' || md5(i::text), round((i * 7.31)::numeric, 2),
                    jsonb_build_object('i', i, 'tags', jsonb_build_array('a', i % 7)), timestamptz '2026-12-01 00:00:00+00' + i * interval '1 minute'
             FROM generate_series(1, 500) AS i`,
        );
        return (await c.query<Row>(SELECT_ROWS)).rows;
      }),
    );
    assert.equal(written1.length, 500);
    const T = await serverNow(); // after write 1's commit, before write 2 begins
    ctx.diagnostic(`T (server clock): ${T}`);

    // Write 2: more rows, changes to rows of write 1, then the table destroyed. None of it may come back.
    await step(ctx, 'write 2 (100 rows, 10 updated, 1 deleted), then DROP TABLE', () =>
      asApp(app.connection_string, async (c) => {
        await c.query(
          `INSERT INTO entries SELECT i, 'after T ' || i, 0, '{}'::jsonb, now() FROM generate_series(501, 600) AS i`,
        );
        await c.query("UPDATE entries SET note = 'changed after T' WHERE id <= 10");
        await c.query('DELETE FROM entries WHERE id = 250');
        await c.query('DROP TABLE entries');
      }),
    );

    // Everything up to the DROP archived, then on the remote by the service's own copy.
    const wal = await step(ctx, 'pg_switch_wal until archived (pg_stat_archiver)', switchAndWaitArchived);
    const remoteWalDir = join(remoteRepo, 'archive', STANZA, '15-1', wal.slice(0, 16));
    await step(ctx, `until the service's off-site copy holds ${wal} on the remote`, () =>
      eventually(async () => filesStartingWith(remoteWalDir, `${wal}-`), (files) => files.length > 0, 180_000),
    );
    assert.equal(filesStartingWith(remoteWalDir, `${wal}-`).length, 1, `${wal} is on the remote (${remoteWalDir})`);
    // rclone's sftp writes a file in place: a copy finishing after we saw it is one that sent it whole. (The first
    // copy of a full backup is a handful of files, pgBackRest bundling the small ones: repo1-bundle.)
    const seen = t.serviceLines.length;
    await step(ctx, 'until an off-site copy finishes after that', () => t.waitForServiceLine(/"msg":"off-site copy finished"/, seen, 180_000));
    ctx.diagnostic(`the remote's repository: ${readdirSync(remoteRepo, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).length} files`);
    for (const info of [['backup', STANZA, 'backup.info'], ['archive', STANZA, 'archive.info']]) {
      assert.ok(existsSync(join(remoteRepo, ...info)), `${info.join('/')} is on the remote`);
    }

    // The disaster: Postgres stopped, the local repository gone (every backup, every archived segment).
    await step(ctx, 'stop Postgres (fast)', () => t.stack.stopPostgres());
    const lost = t.serviceLines.length;
    await step(ctx, 'delete the local repository', () => {
      for (const name of readdirSync(repo)) rmSync(join(repo, name), { recursive: true, force: true });
    });
    assert.deepEqual(readdirSync(repo), []);
    // The service, still running, refuses to copy a repository that looks lost: the remote keeps everything.
    const refused = await step(ctx, "until the service's next copy refuses the lost repository", () =>
      t.waitForServiceLine(/"msg":"off-site copy failed; it will be tried again"/, lost, 60_000),
    );
    assert.match(refused, /looks lost or empty/);
    assert.equal(filesStartingWith(remoteWalDir, `${wal}-`).length, 1, 'the remote still has the segment');

    // The operator's runbook: the repository fetched back from the remote alone.
    const fetched = await step(ctx, 'fetch-offsite.sh (the repository back from the remote)', () =>
      run('sh', [join(REPO_ROOT, 'runbooks', 'fetch-offsite.sh')], {
        env: {
          PATH: process.env.PATH,
          RCLONE_CONFIG: remote.rcloneConfig,
          OFFSITE_REMOTE: `${remote.remote}/pitr`,
          BACKUP_DIR: t.stack.paths.backups,
          PGBACKREST_REPO_PATH: repo,
          PG_OS_USER,
        },
      }),
    );
    assert.match(fetched.stdout, new RegExp(`repository: \\d+ files, owned by ${PG_OS_USER}`));
    // As pgBackRest makes them (pitr.test.ts checks the same of a repository it wrote): the Postgres OS user's,
    // directories 0750 and files 0640 (compose's service reads the volume through the group).
    const pgData = statSync(t.stack.paths.pgData);
    assertRepositoryModes(repo);
    for (const entry of readdirSync(repo, { recursive: true, withFileTypes: true })) {
      const stat = statSync(join(entry.parentPath ?? entry.path, entry.name));
      assert.equal(stat.uid, pgData.uid, `${entry.name} is the Postgres OS user's`);
      assert.equal(stat.gid, pgData.gid, `${entry.name} is the Postgres OS user's group's`);
    }
    assert.ok(filesStartingWith(join(repo, 'archive', STANZA, '15-1', wal.slice(0, 16)), `${wal}-`).length === 1, `${wal} was fetched`);

    // pgBackRest reads the fetched repository: the service's full backup, and the archive up to the segment.
    const [info] = await step(ctx, 'pgbackrest info (the fetched repository)', async () =>
      JSON.parse(await pgbackrest('--output=json', 'info')) as Array<{ status: { code: number }; backup: Array<{ type: string; label: string }>; archive: Array<{ max: string }> }>,
    );
    assert.equal(info!.status.code, 0, JSON.stringify(info!.status));
    assert.deepEqual(info!.backup.map((b) => b.type), ['full']);
    assert.ok(info!.archive[0]!.max >= wal, `the archive reaches ${wal} (max ${info!.archive[0]!.max})`);

    // restore-cluster.sh, scratch, at T, from the fetched repository.
    await inScratchCluster(ctx, T, 'app_drill', async (client) => {
      const rows = await step(ctx, 'read and check every row of T (500)', async () => (await client.query<Row>(SELECT_ROWS)).rows);
      assert.equal(rows.length, written1.length);
      assert.deepEqual(rows, written1, 'every row of write 1, every column, as written; nothing of write 2');
      assert.equal((await client.query('SELECT pg_is_in_recovery() AS r')).rows[0].r, false, 'promoted');
    });

    // The live cluster back up: it archives into the fetched repository as before (the table is still dropped there).
    await step(ctx, 'start Postgres again', () => t.stack.startPostgres());
    const next = await step(ctx, 'pg_switch_wal until archived into the fetched repository', switchAndWaitArchived);
    assert.ok(next > wal);
    assert.equal((await archiver()).failed_count, '0');
  });
});
