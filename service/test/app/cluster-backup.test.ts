// The service's own way to pgBackRest (src/db/postgres-server/cluster-backup.ts), against this process's real
// Postgres, which archives its WAL as compose's does (test/helpers/postgres.ts: the repo's postgres.conf and
// pgbackrest.conf). The service makes the stanza by itself at start (Provisioner.start); a backup, an
// incremental one after it, what the repository holds and how archiving fares go through the same PostgresServer
// the provisioner builds (openStoreAndServer), as the backup schedule calls them. And the other side of
// COPY … FROM PROGRAM (SECURITY.md, "Cluster backups"): an app can never run a program on the server.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { ClusterBackup } from '../../src/db/postgres-server/cluster-backup.js';
import { openStoreAndServer } from '../../src/domain/provisioner.js';
import { ClusterBackupFailedError } from '../../src/shared/errors.js';
import { asApp } from '../helpers/app-sessions.js';
import { buildTestApp, type TestApp } from '../helpers/app.js';
import { eventually, rejectionOf } from '../helpers/conditions.js';

let t: TestApp;
let opened: ReturnType<typeof openStoreAndServer>;

before(async () => {
  t = await buildTestApp({ env: { READY_POOL_SIZE: '0' } });
  opened = openStoreAndServer(t.config, pino({ level: 'silent' }));
});
after(async () => {
  await opened?.server.close();
  await opened?.store.close();
  await t?.close();
});

const clusterBackup = () => {
  const found = opened.server.clusterBackup;
  assert.ok(found, 'PGBACKREST_STANZA is pgprov by default: the server has its cluster backups');
  return found;
};

describe('cluster backups through the service (pgBackRest by COPY … FROM PROGRAM)', () => {
  it('makes the stanza at start by itself, and from then on every finished WAL segment is archived', async (ctx) => {
    await t.waitForServiceLine(/"msg":"cluster backups: the pgBackRest stanza is ready/, 0, 30_000);
    const backups = clusterBackup();
    const before = await backups.archiverStatus();
    const started = Date.now();
    const switched = await t.superuser(async (c) => (await c.query<{ wal: string }>("SELECT pg_walfile_name(pg_switch_wal()) AS wal FROM (SELECT pg_logical_emit_message(false, 'test', 'x')) AS written")).rows[0]!.wal);
    const status = await eventually(() => backups.archiverStatus(), (s) => (s.lastArchivedWal ?? '') >= switched, 30_000);
    ctx.diagnostic(`a switched WAL segment archived in ${Date.now() - started} ms`);
    assert.ok((status.lastArchivedWal ?? '') >= switched, `segment ${switched} archived (last: ${status.lastArchivedWal})`);
    assert.ok(status.archivedCount > before.archivedCount, 'the archiver counted it');
    assert.equal(status.failedCount, before.failedCount, 'no push failed');
    assert.match(status.currentWalLsn, /^[0-9A-F]+\/[0-9A-F]+$/);
    assert.ok(status.currentWalFile >= switched, 'the server writes on past the switched segment');
  });

  it('takes a full backup, then an incremental one on top of it, and tells what the repository holds', async (ctx) => {
    const backups = clusterBackup();
    let started = Date.now();
    const full = await backups.backup('full');
    ctx.diagnostic(`full backup: ${Date.now() - started} ms, ${full.sizeBytes} bytes of cluster, ${full.repositorySizeBytes} in the repository`);
    assert.equal(full.type, 'full');
    assert.equal(full.prior, null);
    assert.match(full.label, /^\d{8}-\d{6}F$/);
    assert.ok(full.repositorySizeBytes > 0 && full.repositorySizeBytes < full.sizeBytes, 'compressed');
    assert.ok(full.stoppedAt >= full.startedAt);
    started = Date.now();
    const incr = await backups.backup('incr');
    ctx.diagnostic(`incremental backup: ${Date.now() - started} ms, ${incr.deltaBytes} bytes copied`);
    assert.equal(incr.type, 'incr');
    assert.equal(incr.prior, full.label);
    assert.ok(incr.deltaBytes < full.deltaBytes, 'only what changed');
    const info = await backups.info();
    assert.equal(info.status.code, 0, info.status.message);
    assert.deepEqual(info.backups.map((b) => b.label), [full.label, incr.label]);
    assert.ok(info.archive.min && info.archive.max && info.archive.min <= full.walStart && info.archive.max >= incr.walStop, 'the WAL both need is archived');
  });

  it("turns pgBackRest's failure into the service's own error: the exit code, never the program's words", async () => {
    const connections = opened.server.connections;
    const nowhere = new ClusterBackup({ stanza: 'no_such_stanza', timeoutMs: 60_000, connect: () => connections.connect('postgres'), pool: connections.pool });
    const err = await rejectionOf(nowhere.backup('full'));
    assert.ok(err instanceof ClusterBackupFailedError, String(err));
    assert.equal(err.code, 'CLUSTER_BACKUP_FAILED');
    assert.equal(typeof err.exitCode, 'number');
    assert.equal(err.message, `pgBackRest stanza-create failed with exit code ${err.exitCode}: its message is in Postgres's log`);
    assert.throws(() => new ClusterBackup({ stanza: "x'; DROP", timeoutMs: 1, connect: () => connections.connect(), pool: connections.pool }), /not a pgBackRest stanza name/);
  });

  it('never lets an app run a program on the server: COPY … FROM PROGRAM is refused, pg_execute_server_program never granted', async () => {
    const app = await t.provision('no_programs');
    const err = await rejectionOf(asApp(app.connection_string, (c) => c.query("COPY (SELECT 1) TO PROGRAM 'id'")));
    assert.equal(err.code, '42501', String(err));
    const holders = await t.superuser(async (c) =>
      (await c.query<{ rolname: string }>("SELECT r.rolname FROM pg_roles r WHERE pg_has_role(r.oid, 'pg_execute_server_program', 'MEMBER') AND NOT r.rolsuper AND r.rolname <> 'pg_execute_server_program'")).rows.map((r) => r.rolname),
    );
    assert.deepEqual(holders, [], 'no role but the superuser may run programs on the server');
  });
});
