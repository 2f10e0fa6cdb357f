// Backups that run by themselves (src/domain/backups/schedules.ts), in process against a real Postgres, on a
// schedule of seconds: each app dumped on its turn, the dump verified and its checksum beside it; retention
// (the newest N kept, the newest never removed) logged and audited; a deleted app's dumps kept for the grace
// period, then removed, and restorable into a new app meanwhile; a failed dump retried and reported (log, audit,
// /metrics, GET /apps/:name); provisioning never starved; /health saying backups stay on this disk.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, renameSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SAME_DISK_WARNING } from '../../src/domain/provisioner.js';
import { buildTestApp, type TestApp } from '../helpers/app.js';
import { asApp, connectAs } from '../helpers/app-sessions.js';
import { eventually } from '../helpers/conditions.js';

const KEEP_LAST = 2;
let t: TestApp;
before(async () => {
  t = await buildTestApp({
    env: {
      BACKUP_SCHEDULE: 'every 2s',
      BACKUP_SPREAD_MINUTES: '0',
      BACKUP_SCHEDULER_TICK_MS: '200',
      BACKUP_KEEP_LAST: String(KEEP_LAST),
      BACKUP_KEEP_DAYS: '0',
      DELETED_APP_BACKUP_GRACE_DAYS: '30',
      BACKUP_RETRY_DELAY_MS: '300',
      BACKUP_LOCK_WAIT_TIMEOUT_MS: '1500',
    },
  });
});
after(async () => {
  await t?.close();
});

interface AuditRow {
  action: string;
  app_name: string;
  outcome: string;
  client: string | null;
  detail: Record<string, unknown> | null;
}
const auditOf = (appName: string) =>
  t.superuser(async (db) => (await db.query<AuditRow>('SELECT action, app_name, outcome, client, detail FROM audit_log WHERE app_name = $1 ORDER BY id', [appName])).rows, 'provisioner');
const dumpsOf = (appName: string) => readdirSync(t.backupDir).filter((file) => file.startsWith(`app_${appName}-`) && file.endsWith('.dump'));
const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

async function newestBackupOf(appName: string): Promise<Record<string, unknown> | null> {
  const found = await eventually(
    async () => (await t.admin('GET', `/apps/${appName}`)).body.newest_backup as Record<string, unknown> | null,
    (backup) => backup !== null,
    30_000,
  );
  return found;
}

describe('scheduled dumps', () => {
  it("dumps each app on its turn, verified and with its SHA-256 beside it, audited as the scheduler's", async () => {
    const shop = await t.provision('sched_shop');
    await asApp(shop.connection_string, async (db) => {
      await db.query('CREATE TABLE orders (id int PRIMARY KEY, item text)');
      await db.query(`INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 500) g`);
    });
    const newest = await newestBackupOf('sched_shop');
    assert.ok(newest, 'a scheduled backup was made');
    const path = join(t.backupDir, String(newest.file));
    assert.match(String(newest.sha256), /^[0-9a-f]{64}$/);
    assert.equal(newest.sha256, sha256(path), 'the recorded checksum is the file’s');
    assert.equal(readFileSync(`${path}.sha256`, 'utf8'), `${newest.sha256}  ${newest.file}\n`, 'sha256sum -c reads it');
    execFileSync('sha256sum', ['-c', `${newest.file}.sha256`], { cwd: t.backupDir });
    const contents = execFileSync(t.config.PG_RESTORE_PATH, ['--list', path], { encoding: 'utf8' });
    assert.match(contents, /TABLE DATA public orders/);
    const entries = await auditOf('sched_shop');
    const scheduled = entries.find((e) => e.action === 'backup' && e.client === 'scheduler' && e.outcome === 'ok');
    assert.ok(scheduled, 'the scheduled backup is in the audit log');
    assert.equal(scheduled.detail?.scheduled, true);
    assert.match(String(scheduled.detail?.sha256), /^[0-9a-f]{64}$/);
  });

  it(`keeps the newest ${KEEP_LAST} of each app and removes the rest, logged and audited, never the newest`, async () => {
    const pruned = await eventually(
      async () => (await auditOf('sched_shop')).filter((e) => e.action === 'prune_backups'),
      (entries) => entries.length >= 2,
      60_000,
    );
    assert.ok(pruned.length >= 2, 'retention ran at least twice');
    for (const entry of pruned) {
      assert.equal(entry.client, 'scheduler');
      assert.deepEqual(entry.detail?.reasons, ['retention']);
      for (const file of entry.detail?.files as string[]) {
        assert.ok(!existsSync(join(t.backupDir, file)), `${file} was removed`);
        assert.ok(!existsSync(join(t.backupDir, `${file}.sha256`)), `${file}'s checksum was removed with it`);
      }
    }
    // A dump may have just been written, its retention not yet run: never more than one over the limit.
    assert.ok(dumpsOf('sched_shop').length <= KEEP_LAST + 1, dumpsOf('sched_shop').join(', '));
    const newest = await newestBackupOf('sched_shop');
    assert.ok(existsSync(join(t.backupDir, String(newest!.file))));
    assert.ok(t.logLines().some((line) => line.msg === 'retention removed backups' && line.app === 'sched_shop'));
  });
});

describe("a deleted app's dumps", () => {
  it('are kept for the grace period after the last one, restorable into a new app meanwhile, then removed', async () => {
    // Two deleted apps: one deleted 40 days ago (its dumps' names say so), one 10 days ago.
    const stamp = (daysAgo: number) => new Date(Date.now() - daysAgo * 86_400_000).toISOString().replace(/[-:.]/g, '');
    const backdated: Record<string, string> = {};
    for (const [name, daysAgo] of [['long_gone', 40], ['just_gone', 10]] as const) {
      const made = await t.provision(name);
      await asApp(made.connection_string, (db) => db.query(`CREATE TABLE notes AS SELECT g AS id, 'note ' || g AS body FROM generate_series(1, 50) g`));
      const deleted = await t.admin('DELETE', `/apps/${name}`);
      assert.equal(deleted.status, 200);
      const file = String(deleted.body.backup);
      const renamed = file.replace(/\d{8}T\d{9}Z\.dump$/, `${stamp(daysAgo)}.dump`);
      renameSync(join(t.backupDir, file), join(t.backupDir, renamed));
      renameSync(join(t.backupDir, `${file}.sha256`), join(t.backupDir, `${renamed}.sha256`));
      backdated[name] = renamed;
    }
    const expired = await eventually(
      async () => (await auditOf('long_gone')).find((e) => e.action === 'prune_backups'),
      (entry) => entry !== undefined,
      30_000,
    );
    assert.deepEqual(expired?.detail?.reasons, ['deleted_app_grace_expired']);
    assert.deepEqual(expired?.detail?.files, [backdated.long_gone]);
    assert.ok(!existsSync(join(t.backupDir, backdated.long_gone!)));
    // Within its grace: still there, and it restores into a new app.
    assert.ok(existsSync(join(t.backupDir, backdated.just_gone!)));
    const heir = await t.provision('heir_of_just_gone');
    const restored = await t.admin('POST', '/apps/heir_of_just_gone/restore', { file: backdated.just_gone, from_deleted_app: true });
    assert.equal(restored.status, 200, JSON.stringify(restored.body));
    const rows = await asApp(heir.connection_string, async (db) => (await db.query('SELECT id, body FROM notes ORDER BY id')).rows);
    assert.deepEqual(rows, Array.from({ length: 50 }, (_, i) => ({ id: i + 1, body: `note ${i + 1}` })));
  });
});

describe('a scheduled dump that fails', () => {
  it('is retried and reported (log, audit, /metrics, GET /apps/:name), never silent, and succeeds once it can', async () => {
    const ledger = await t.provision('sched_blocked');
    const tenant = await connectAs(ledger.connection_string);
    try {
      await tenant.query('CREATE TABLE entries (id int)');
      await tenant.query('BEGIN');
      await tenant.query('LOCK TABLE entries IN ACCESS EXCLUSIVE MODE'); // pg_dump cannot read it while this lasts
      const failing = await eventually(
        async () => (await t.admin('GET', '/apps/sched_blocked')).body.backup_failing as Record<string, unknown> | null,
        (state) => state !== null && Number(state.failures) >= 2,
        60_000,
      );
      assert.ok(failing, 'GET /apps/:name says the scheduled backups fail');
      assert.equal(failing.error, 'backup_blocked');
      assert.ok(Number(failing.failures) >= 2, 'tried again after the first failure');
      const metrics = String((await t.get('/metrics')).text);
      assert.match(metrics, /pgprov_scheduled_backup_failures_total\{work="app_dump"\} [1-9]/);
      assert.match(metrics, /pgprov_app_backup_failing\{app="sched_blocked"\} [1-9]/);
      assert.ok(t.logLines().some((line) => line.level === 50 && line.msg === 'scheduled backup failed; it will be tried again' && line.app === 'sched_blocked'));
      assert.ok((await auditOf('sched_blocked')).some((e) => e.action === 'backup' && e.client === 'scheduler' && e.outcome === 'backup_blocked'));
    } finally {
      await tenant.query('ROLLBACK').catch(() => {});
      await tenant.end();
    }
    const recovered = await eventually(
      async () => (await t.admin('GET', '/apps/sched_blocked')).body,
      (body) => body.backup_failing === null && body.newest_backup !== null,
      60_000,
    );
    assert.equal(recovered.backup_failing, null);
    assert.ok(recovered.newest_backup);
    assert.doesNotMatch(String((await t.get('/metrics')).text), /pgprov_app_backup_failing\{app="sched_blocked"\}/);
  });
});

describe('an app deleted while its scheduled dumps fail', () => {
  it('is no longer reported failing once it is gone', async () => {
    const doomed = await t.provision('sched_doomed');
    const tenant = await connectAs(doomed.connection_string);
    try {
      await tenant.query('CREATE TABLE entries (id int)');
      await tenant.query('BEGIN');
      await tenant.query('LOCK TABLE entries IN ACCESS EXCLUSIVE MODE');
      await eventually(async () => String((await t.get('/metrics')).text), (text) => /pgprov_app_backup_failing\{app="sched_doomed"\} [1-9]/.test(text), 60_000);
      // Deleted while the lock still holds its dumps back (the delete ends the tenant's session): no dump can
      // succeed in between and clear the report by itself.
      assert.equal((await t.admin('DELETE', '/apps/sched_doomed?backup=false')).status, 200);
    } finally {
      await tenant.query('ROLLBACK').catch(() => {});
      await tenant.end().catch(() => {});
    }
    const metrics = await eventually(async () => String((await t.get('/metrics')).text), (text) => !text.includes('app="sched_doomed"'), 30_000);
    assert.doesNotMatch(metrics, /pgprov_app_backup_failing\{app="sched_doomed"\}/);
  });
});

describe('what a dump cut short leaves', () => {
  it('is removed once older than any dump may take, and a dump under way is left alone', async () => {
    const stale = 'app_cut_short-0123456789abcdef-20261101T000000000Z.dump';
    const fresh = 'app_under_way-0123456789abcdef-20261207T000000000Z.dump';
    for (const file of [stale, fresh]) {
      writeFileSync(join(t.backupDir, `${file}.partial`), 'half a dump', { mode: 0o600 });
      writeFileSync(join(t.backupDir, `${file}.sha256`), `${'0'.repeat(64)}  ${file}\n`, { mode: 0o600 });
    }
    const longAgo = new Date(Date.now() - t.config.BACKUP_TIMEOUT_MS - 3_600_000);
    utimesSync(join(t.backupDir, `${stale}.partial`), longAgo, longAgo);
    // The sweep has finished once it has said so (it removes the checksum, then the .partial, then logs).
    await eventually(
      async () => t.logLines().some((line) => line.msg === 'removed what dumps cut short left behind'),
      (logged) => logged,
      30_000,
    );
    assert.ok(!existsSync(join(t.backupDir, `${stale}.partial`)));
    assert.ok(!existsSync(join(t.backupDir, `${stale}.sha256`)));
    assert.ok(existsSync(join(t.backupDir, `${fresh}.partial`)), 'a dump that may still be running is kept');
  });
});

describe('budgets and visibility', () => {
  it('never starves provisioning: a burst of provisions all succeed while scheduled dumps run', async () => {
    const names = Array.from({ length: 12 }, (_, i) => `burst_${i}`);
    const answers = await Promise.all(names.map((name) => t.post('/provision', { app_name: name, admin_key: t.adminKey })));
    assert.deepEqual(
      answers.map((a) => a.status),
      names.map(() => 201),
    );
    // …and the burst's apps get their own scheduled dumps in turn.
    for (const name of names.slice(0, 3)) assert.ok(await newestBackupOf(name));
  });

  it("shows each app's newest backup's age in /metrics, and says in /health that backups stay on this disk", async () => {
    const metrics = String((await t.get('/metrics')).text);
    assert.match(metrics, /pgprov_app_newest_backup_age_seconds\{app="sched_shop"\} \d/);
    assert.match(metrics, /pgprov_apps_without_backup \d/);
    assert.match(metrics, /pgprov_offsite_configured 0/);
    assert.match(metrics, /pgprov_offsite_copy_last_success_age_seconds \+Inf/, 'never copied off the machine: an infinite age, which any age alert catches');
    const health = await t.get('/health');
    assert.equal(health.status, 200);
    assert.deepEqual(health.body.backups, { offsite: 'none', warning: SAME_DISK_WARNING });
  });
});
