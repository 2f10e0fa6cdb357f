// A hostile tenant against the backups that run by themselves (src/domain/backups/schedules.ts), on the real
// stack, schedules of seconds and one lane for scheduled dumps (BACKUP_SCHEDULED_CONCURRENCY=1): it must not
// make other apps' scheduled dumps fail or starve, must not get its text into what the service reports, and
// retention must keep each app's dumps to that app, look-alike names included (SECURITY.md, promises 5, 8, 12).
// Through the pooler: the tenant's sessions only set the stage for work the service does with its own connections.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { asApp, connectAs } from '../helpers/app-sessions.js';
import { eventually } from '../helpers/conditions.js';
import type { ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

const KEEP_LAST = 2;
const LOCK_WAIT_MS = 2_000;
let t: TestStack;
before(async () => {
  t = await startTestStack({
    serviceEnv: {
      LOG_PRETTY: 'false',
      RECONCILE_INTERVAL_MS: '1000',
      BACKUP_SCHEDULE: 'every 2s',
      BACKUP_SPREAD_MINUTES: '0',
      BACKUP_SCHEDULER_TICK_MS: '200',
      BACKUP_SCHEDULED_CONCURRENCY: '1',
      BACKUP_KEEP_LAST: String(KEEP_LAST),
      BACKUP_KEEP_DAYS: '0',
      BACKUP_RETRY_DELAY_MS: '60000',
      BACKUP_LOCK_WAIT_TIMEOUT_MS: String(LOCK_WAIT_MS),
    },
  });
});
after(async () => {
  await t?.stop();
});

const sql = (app: ProvisionedApp, text: string) => asApp(app.connection_string, (c) => c.query(text));
const dumpsOf = (appName: string) =>
  readdirSync(t.stack.paths.backups)
    .filter((file) => new RegExp(`^app_${appName}-[0-9a-f]{16}-\\d{8}T\\d{9}Z\\.dump$`).test(file))
    .sort();
/** /metrics is served on the service's own port only, never through nginx. */
const metricsText = async () => (await fetch(`${t.stack.serviceUrl}/metrics`)).text();
const failingOf = async (appName: string) => (await t.admin('GET', `/apps/${appName}`)).body.backup_failing as Record<string, unknown> | null;

/** Waits until `count` scheduled dumps of `appName` were written after `since` (file names sort by time). */
async function newDumps(appName: string, since: string[], count: number, timeoutMs = 60_000): Promise<string[]> {
  const before = new Set(since);
  const seen = new Set<string>();
  return eventually(
    async () => {
      for (const file of dumpsOf(appName)) if (!before.has(file)) seen.add(file);
      return [...seen];
    },
    (files) => files.length >= count,
    timeoutMs,
  );
}

/** A tenant session granting on its own table to `role`, as fast as it can, until stopped; counts the grants that held. */
function grantLoop(client: pg.Client, table: string, role: string): { stop: () => Promise<number> } {
  let stopped = false;
  let grants = 0;
  const loop = (async () => {
    while (!stopped) {
      await client.query(`GRANT SELECT ON ${table} TO ${role}`).then(
        () => grants++,
        () => {}, // the role does not exist right now
      );
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      await loop;
      return grants;
    },
  };
}

describe('a hostile tenant and the scheduled dumps of other apps', () => {
  it("keeps another app's scheduled dumps working while a tenant grants to that app's dump agent as fast as it can", { timeout: 120_000 }, async () => {
    await t.provision('prey');
    const granter = await t.provision('granter');
    await sql(granter, 'CREATE TABLE snare (x int)');
    const session = await connectAs(granter.connection_string);
    const loop = grantLoop(session, 'snare', 'pgprov_dump_prey');
    let grants = 0;
    try {
      // Each scheduled dump of prey makes, then drops, its agent; the tenant re-grants between DROP OWNED and DROP
      // ROLE, so the agent outlives a dump: the next dump must still be made (before the fix, every one failed).
      await newDumps('prey', dumpsOf('prey'), 4);
    } finally {
      grants = await loop.stop();
      await session.end().catch(() => {});
    }
    assert.ok(grants > 0, 'the tenant did grant to the agent');
    assert.equal(await failingOf('prey'), null, "prey's scheduled dumps are not failing");
    // Once the tenant stops, the reconciler (or the next dump) removes the agent.
    const agents = await eventually(
      () => t.superuser(async (db) => (await db.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'pgprov\\_dump\\_prey'")).rows),
      (rows) => rows.length === 0,
      30_000,
    );
    assert.deepEqual(agents, []);
  });

  it("bounds a tenant that holds a lock for ever: other apps' dumps go on in the one lane, and only the holder is reported failing", { timeout: 120_000 }, async () => {
    const staller = await t.provision('staller');
    await t.provision('bystander');
    await sql(staller, 'CREATE TABLE held (x int)');
    const holder = await connectAs(staller.connection_string);
    try {
      await holder.query('BEGIN; SET LOCAL idle_in_transaction_session_timeout = 0; LOCK TABLE held IN ACCESS EXCLUSIVE MODE');
      const failing = await eventually(() => failingOf('staller'), (f) => f !== null, 60_000);
      assert.equal(failing?.error, 'backup_blocked');
      // With the staller retried only after BACKUP_RETRY_DELAY_MS, the lane serves the others.
      await newDumps('bystander', dumpsOf('bystander'), 2);
      assert.equal(await failingOf('bystander'), null, 'the bystander is not reported failing');
      const metrics = await metricsText();
      assert.match(metrics, /pgprov_app_backup_failing\{app="staller"\} [1-9]/);
      assert.doesNotMatch(metrics, /pgprov_app_backup_failing\{app="bystander"\} [1-9]/);
      assert.equal((await t.get('/health')).status, 200);
    } finally {
      await holder.end().catch(() => {});
    }
  });

  it("keeps a tenant's names and comments out of the log, the audit log, /metrics, /health and backup_failing when its dump fails", { timeout: 120_000 }, async () => {
    const marker = 'zq7marker';
    const from = t.serviceLines.length;
    const app = await t.provision('texter');
    // The owner's own table, forced under row-level security: pg_dump (row_security off) stops at it, quoting its name.
    await sql(
      app,
      `CREATE TABLE ${marker}_table (x int); ALTER TABLE ${marker}_table ENABLE ROW LEVEL SECURITY; ALTER TABLE ${marker}_table FORCE ROW LEVEL SECURITY;
       CREATE POLICY ${marker}_policy ON ${marker}_table USING (true); COMMENT ON TABLE ${marker}_table IS '${marker} comment: ignore previous instructions';`,
    );
    const failing = await eventually(() => failingOf('texter'), (f) => f !== null, 60_000);
    assert.equal(failing?.error, 'backup_refused');
    await t.waitForServiceLine(/scheduled backup failed/, from);
    const audit = await t.superuser(async (db) => (await db.query("SELECT outcome, detail::text AS detail FROM audit_log WHERE app_name = 'texter'")).rows, 'provisioner');
    assert.ok(audit.some((row) => row.outcome === 'backup_refused'), JSON.stringify(audit));
    const seen = [
      t.serviceLines.slice(from).join('\n'),
      JSON.stringify(audit),
      await metricsText(),
      (await t.get('/health')).text,
      (await t.admin('GET', '/apps/texter')).text,
    ];
    for (const text of seen) assert.ok(!text.includes(marker), `the tenant's text got out: ${text.slice(Math.max(0, text.indexOf(marker) - 200), text.indexOf(marker) + 200)}`);
  });

  it('keeps retention of look-alike names (a name and the name plus a suffix) to each app', { timeout: 120_000 }, async () => {
    // `looka` is a prefix of `looka_2`, and `looka_0123456789abcdef` ends in what looks like an incarnation.
    const names = ['looka', 'looka_2', 'looka_0123456789abcdef'];
    for (const name of names) await t.provision(name);
    for (const name of names) await newDumps(name, [], KEEP_LAST + 2);
    // Retention ran for each many times over: each keeps its newest KEEP_LAST (one more while a dump is mid-prune).
    const kept = await eventually(
      async () => names.map((name) => dumpsOf(name).length),
      (counts) => counts.every((n) => n >= 1 && n <= KEEP_LAST + 1),
      30_000,
    );
    assert.ok(kept.every((n) => n >= 1 && n <= KEEP_LAST + 1), JSON.stringify(kept));
  });
});
