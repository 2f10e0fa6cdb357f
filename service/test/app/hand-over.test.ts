// The hand-over's store steps (src/db/system-store/ready-set-rows.ts) against a real Postgres: the locks a claim
// takes are let go only once the app's new state is committed. A session-level advisory lock is released at
// once, not at commit, so an unlock in the same transaction as the state would let the reconciler take the
// app's lock and still read `creating`, and remove an app the client was just handed. The window is made wide
// here by a trigger that delays the commit (on a scratch copy of the registry), so the test fails every time
// the order is wrong.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { appLockKey, tryLock, unlock } from '../../src/db/system-store/locks.js';
import { claimReadySet, endClaim } from '../../src/db/system-store/ready-set-rows.js';
import { buildTestApp, type TestApp } from '../helpers/app.js';

let t: TestApp;
before(async () => {
  t = await buildTestApp({ env: { READY_POOL_SIZE: '0' } });
});
after(async () => {
  await t?.close();
});

describe("the hand-over's last step in the system store", () => {
  it('lets the app lock go only after the app reads ready, however slow the commit', async () => {
    // Two sessions, as the claiming hand-over and the reconciler hold them.
    await t.superuser((claimer) => t.superuser((reconciler) => race(claimer, reconciler), 'provisioner'), 'provisioner');
  });
});

async function race(claimer: pg.ClientBase, reconciler: pg.ClientBase): Promise<void> {
  try {
    // A prepared set's entry (its objects are not needed for the store's steps), and a commit made slow.
    await claimer.query(`INSERT INTO ready_pool (id, state) VALUES ('slowcommit01', 'ready')`);
    await claimer.query(`
      CREATE OR REPLACE FUNCTION test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
      CREATE CONSTRAINT TRIGGER test_slow_commit AFTER UPDATE ON apps DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW WHEN (NEW.app_name = 'slow_commit') EXECUTE FUNCTION test_slow_commit();`);
    const claim = await claimReadySet(claimer, 'slow_commit', ['slowcommit01']);
    assert.ok(claim && claim.appLocked && claim.setLocked, 'claimed, both locks taken');
    const ending = endClaim(claimer, 'slow_commit', claim, 'ready');
    // As the reconciler does: take the app's lock when it is free, then read the app's state.
    let state: string | undefined;
    for (;;) {
      if (await tryLock(reconciler, appLockKey('slow_commit'))) {
        state = (await reconciler.query<{ state: string }>(`SELECT state FROM apps WHERE app_name = 'slow_commit'`)).rows[0]?.state;
        await unlock(reconciler, appLockKey('slow_commit'));
        break;
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    await ending;
    assert.equal(state, 'ready', 'whoever takes the lock next sees the app ready, never creating');
  } finally {
    await claimer.query(`DROP TRIGGER IF EXISTS test_slow_commit ON apps; DROP FUNCTION IF EXISTS test_slow_commit(); DELETE FROM apps WHERE app_name = 'slow_commit'`).catch(() => {});
  }
}
