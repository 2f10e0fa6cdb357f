// Crash safety of the storage quota (src/domain/storage-quota.ts): the service is killed (CRASH_AT) after it made
// an app's login role read-only and before it ended the app's sessions, so a session opened before still writes.
// Restarted, its next check finds the enforcement in the catalog without its audit entry and finishes it: the
// old session is ended, new ones are read-only, and the enforcement is audited.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { asApp, connectAs, doorString } from '../helpers/app-sessions.js';
import { SYSTEM_DATABASE } from '../helpers/catalog.js';
import { eventually } from '../helpers/conditions.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

const QUOTA = { APP_STORAGE_LIMIT: '16MB', STORAGE_CHECK_INTERVAL_MS: '300' };

let t: TestStack;

before(async () => {
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', READY_POOL_SIZE: '0', ...QUOTA } });
});
after(async () => {
  await t?.stop();
});

const storageAudit = (app: string) =>
  t.superuser(
    async (c) => (await c.query<{ action: string; detail: Record<string, unknown> }>(`SELECT action, detail FROM audit_log WHERE app_name = $1 AND action LIKE 'storage\\_%' ORDER BY id`, [app])).rows,
    SYSTEM_DATABASE,
  );

describe('a crash between making an app read-only and ending its sessions', () => {
  it('at storage:after-enforce-roles: the next check after a restart ends the sessions opened before and audits it', { timeout: 120_000 }, async () => {
    const app = await t.provision('crashy');
    const direct = doorString(app, 'direct');
    await asApp(app.connection_string, (c) => c.query('CREATE TABLE notes (n int, body text)'));

    // The app grows past its limit while the service is down (its doors stay open: Postgres and PgBouncer), with a
    // session of its own open from before, as a long-lived worker's.
    await t.stack.stopService();
    const worker = await connectAs(direct);
    await worker.query(`INSERT INTO notes SELECT g, repeat(md5(g::text), 50) FROM generate_series(1, 5000) g`);

    // The service's first check makes the role read-only, and the service dies there.
    await t.stack.startService({ ...QUOTA, CRASH_AT: 'storage:after-enforce-roles' }).catch(() => {});
    await t.stack.serviceExited();
    const flag = await t.superuser(async (c) => (await c.query(`SELECT rolconfig FROM pg_roles WHERE rolname = 'app_crashy_user'`)).rows[0].rolconfig as string[]);
    assert.ok(flag.includes('default_transaction_read_only=on') && flag.includes('pgprov.storage_enforcement=read_only'), JSON.stringify(flag));
    await worker.query("INSERT INTO notes VALUES (0, 'the gap: a session from before still writes')");
    assert.deepEqual(await storageAudit('crashy'), [], 'nothing audited: the enforcement was cut short');

    // Restarted: the next check finishes it.
    await t.stack.startService(QUOTA);
    const audit = await eventually(() => storageAudit('crashy'), (rows) => rows.length > 0, 20_000);
    assert.equal(audit.length, 1);
    assert.equal(audit[0]!.action, 'storage_read_only');
    assert.equal(audit[0]!.detail.completed, true);
    assert.ok(Number(audit[0]!.detail.sessions_ended) >= 1, JSON.stringify(audit[0]));
    const workerAnswer = await worker.query("INSERT INTO notes VALUES (0, 'after')").then(
      () => 'written',
      (err: Error) => err.message,
    );
    assert.notEqual(workerAnswer, 'written', 'the session from before the crash was ended');
    await worker.end().catch(() => {});
    const fresh = await asApp(direct, (c) => c.query("INSERT INTO notes VALUES (0, 'fresh')")).catch((err: { code?: string }) => err.code);
    assert.equal(fresh, '25006');
    assert.equal(await asApp(direct, async (c) => (await c.query('SELECT count(*)::int AS n FROM notes')).rows[0].n), 5001, 'every row kept');

    // Decided again at every check, it is carried out once: no second entry after more checks have run.
    const since = Date.now();
    const lastCheckAt = async () => {
      const age = /^pgprov_storage_last_check_age_seconds (\S+)$/m.exec(await (await fetch(`${t.stack.serviceUrl}/metrics`)).text())?.[1];
      return Date.now() - Number(age) * 1000;
    };
    assert.ok((await eventually(lastCheckAt, (at) => at > since + 1_000, 20_000)) > since + 1_000, 'checks ran since');
    assert.equal((await storageAudit('crashy')).length, 1);
  });
});
