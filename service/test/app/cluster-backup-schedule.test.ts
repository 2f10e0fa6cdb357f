// The whole cluster's backups on their schedule (src/domain/backups/schedules.ts → pgBackRest), in process against
// a real Postgres that archives its WAL: with no backup yet, a full one at once; then incremental ones on every
// slot until the last full is older than CLUSTER_FULL_BACKUP_EVERY_DAYS; and what /metrics says of them and of
// the WAL archiving.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { buildTestApp, type TestApp } from '../helpers/app.js';
import { eventually } from '../helpers/conditions.js';

let t: TestApp;
before(async () => {
  t = await buildTestApp({ env: { READY_POOL_SIZE: '0', CLUSTER_BACKUP_SCHEDULE: 'every 5s', CLUSTER_FULL_BACKUP_EVERY_DAYS: '7', BACKUP_SCHEDULER_TICK_MS: '500' } });
});
after(async () => {
  await t?.close();
});

const finished = () => t.logLines().filter((line) => line.msg === 'cluster backup (pgBackRest) finished');

describe('cluster backups on their schedule', () => {
  it('takes a full backup at once when there is none, then incremental ones on each slot', async () => {
    const backups = await eventually(async () => finished(), (lines) => lines.length >= 2, 120_000);
    assert.ok(backups.length >= 2, `two cluster backups finished (${backups.length})`);
    assert.equal(backups[0]!.type, 'full', 'the first is full: there was none');
    assert.equal(backups[1]!.type, 'incr', 'the next is incremental: the full one is recent');
    assert.ok(!t.logLines().some((line) => line.msg === 'cluster backup (pgBackRest) failed; it will be tried again'));
  });

  it('says in /metrics when the last cluster backup and the last archived WAL segment were, and that none failed', async () => {
    await t.superuser((db) => db.query('SELECT pg_switch_wal() FROM (SELECT pg_logical_emit_message(false, $1, $2)) AS written', ['test', 'x']));
    const metrics = await eventually(
      async () => String((await t.get('/metrics')).text),
      (text) => /pgprov_wal_archive_last_success_age_seconds \d/.test(text),
      30_000,
    );
    assert.match(metrics, /pgprov_cluster_backup_last_success_age_seconds\{type="(full|incr)"\} \d/);
    assert.match(metrics, /pgprov_wal_archive_last_success_age_seconds \d/);
    assert.match(metrics, /pgprov_wal_archive_failures_total \d/);
    assert.match(metrics, /pgprov_scheduled_backup_failures_total\{work="cluster_backup"\} 0/);
  });
});
