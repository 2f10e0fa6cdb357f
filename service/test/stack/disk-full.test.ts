// One tenant fills Postgres's disk. Postgres's data directory sits on a small filesystem of its own (a tmpfs,
// mounted here: this test needs root, as CI runs it), with the disk reserve of init/00-disk-reserve.sh.
// What must hold: the service answers clear JSON 503s and leaves nothing half-made while the disk is full;
// the operator's way back in (README: "The disk is full") works: delete the reserve, restart Postgres, delete
// or shrink the tenant through the API; the service recovers by itself, and every other app kept its data.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
import { asApp, connectAs } from '../helpers/app-sessions.js';
import { catalogOf } from '../helpers/catalog.js';
import { eventually } from '../helpers/conditions.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

const DISK_MB = 160;
const RESERVE_MB = 48;

let t: TestStack;
let mountDir: string;
const catalog = catalogOf(() => t);

before(async () => {
  assert.equal(process.getuid?.(), 0, 'this test mounts a small tmpfs for Postgres\'s data directory and needs root (CI runs as root)');
  mountDir = mkdtempSync(join(tmpdir(), 'pgprov-disk-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${DISK_MB}m,mode=0755`, 'tmpfs', mountDir]);
  t = await startTestStack({ pgDataDir: join(mountDir, 'pgdata'), diskReserveMb: RESERVE_MB, serviceEnv: { LOG_PRETTY: 'false', READY_POOL_SIZE: '0' } });
});
after(async () => {
  await t?.stop();
  if (mountDir) {
    execFileSync('umount', ['--lazy', mountDir]);
    rmSync(mountDir, { recursive: true, force: true });
  }
});

const freeMb = () => Number(execFileSync('df', ['--output=avail', '-m', mountDir], { encoding: 'utf8' }).split('\n')[1]);

describe('one tenant fills the disk', () => {
  it('gets clear 503s and nothing half-made, and the reserve, a Postgres restart and a DELETE bring everything back', async () => {
    const reserve = join(t.stack.paths.pgData, 'disk-reserve');
    assert.equal(statSync(reserve).size, RESERVE_MB * 2 ** 20, 'init/00-disk-reserve.sh set the reserve aside');
    const hog = await t.provision('hog');
    const steady = await t.provision('steady');
    await asApp(steady.connection_string, async (c) => {
      await c.query('CREATE TABLE kept (note text)');
      await c.query("INSERT INTO kept VALUES ('written before the disk filled')");
    });

    // The tenant writes until Postgres refuses (disk full) or stops (it could not write its WAL).
    const filler = await connectAs(hog.connection_string);
    await filler.query('CREATE TABLE fill (x text)');
    let stoppedBy: (Error & { code?: string }) | undefined;
    for (let batch = 0; batch < 500 && !stoppedBy; batch++) {
      await filler.query("INSERT INTO fill SELECT md5(random()::text) || repeat('x', 2000) FROM generate_series(1, 1000)").catch((err: Error) => (stoppedBy = err));
    }
    await filler.end().catch(() => {});
    assert.ok(stoppedBy, 'the tenant was stopped');
    assert.ok(freeMb() < 20, `the disk is full: less than one WAL segment (16 MB) free, ${freeMb()} MB`);

    // While the disk is full: a JSON 503 in the service's own words, never a Postgres message.
    const duringFull = await t.admin('POST', '/provision', { app_name: 'during_full' });
    assert.equal(duringFull.status, 503);
    assert.match(String(duringFull.body.message), /^the database (server is out of disk space|is unavailable)/);
    assert.doesNotMatch(duringFull.text, /pg_wal|No space left|xlog/);

    // The operator's way back in: delete the reserve, restart Postgres (compose: docker compose restart postgres).
    rmSync(reserve);
    await t.stack.stopPostgres();
    await t.stack.startPostgres();
    const health = await eventually(() => t.get('/health'), (r) => r.status === 200, 20_000);
    assert.equal(health.status, 200, 'the service found Postgres again by itself');
    const deleted = await t.admin('DELETE', '/apps/hog?backup=false');
    assert.equal(deleted.status, 200, deleted.text);
    // Postgres keeps up to min_wal_size (80 MB) of used WAL files for reuse, so not all of the tenant's
    // space shows as free; enough does to set the reserve aside again, with the README's command.
    assert.ok(freeMb() > RESERVE_MB + 4, `deleting the tenant freed its space (${freeMb()} MB free)`);
    execFileSync('sh', [join(REPO_ROOT, 'init', '00-disk-reserve.sh')], { env: { PATH: process.env.PATH, PGDATA: t.stack.paths.pgData, DISK_RESERVE_MB: String(RESERVE_MB) } });
    assert.equal(statSync(reserve).size, RESERVE_MB * 2 ** 20, 'the reserve is back');

    // Everything works again, and nothing was lost or left half-made.
    const after = await t.provision('after_full');
    await asApp(after.connection_string, (c) => c.query('SELECT 1'));
    const kept = await asApp(steady.connection_string, (c) => c.query('SELECT note FROM kept'));
    assert.deepEqual(kept.rows, [{ note: 'written before the disk filled' }]);
    const leftovers = [
      ...(await catalog.existingDatabases(['app_hog', 'app_during_full'])),
      ...(await catalog.rolesLike('app\\_hog%')),
      ...(await catalog.rolesLike('app\\_during\\_full%')),
    ];
    const listed = (await t.admin('GET', '/apps')).body.apps as Array<{ app_name: string }>;
    assert.ok(!listed.some((app) => app.app_name === 'during_full'), 'an app whose provisioning answered 503 is not listed');
    assert.deepEqual(leftovers, [], 'no database or role of the deleted tenant or of the refused app remains');
  });
});
