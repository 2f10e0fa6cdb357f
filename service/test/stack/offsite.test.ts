// Backups leave the machine: OffsiteCopy (src/domain/backups/offsite-copy.ts) against a real remote, an SFTP server
// (Debian's OpenSSH, sshd of the test's own on loopback: test/helpers/sftp-remote.ts) reached by rclone with a
// pinned host key and a client key; no mock anywhere. Then the restore drill: data written through an app's own
// connection string, backed up through the API, copied off-site, destroyed, every local dump deleted, fetched back
// from the remote alone with the operator's runbook (runbooks/fetch-offsite.sh, run exactly as documented),
// restored through the API, and every row checked. Needs root (its own sshd), as CI runs.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
import { OffsiteCopy } from '../../src/domain/backups/offsite-copy.js';
import { loadConfig } from '../../src/shared/config.js';
import { OffsiteCopyFailedError, OffsiteCopyRefusedError } from '../../src/shared/errors.js';
import { asApp } from '../helpers/app-sessions.js';
import { eventually, rejectionOf } from '../helpers/conditions.js';
import { startSftpRemote, type SftpRemote } from '../helpers/sftp-remote.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

const RUNBOOK = join(REPO_ROOT, 'runbooks', 'fetch-offsite.sh');

/** A logger whose lines the test reads (what the service would log). */
function capturedLogger(): { log: pino.Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      done();
    },
  });
  return { log: pino({ level: 'info' }, sink), lines };
}

/** OffsiteCopy as the service builds it, from its settings: this remote, this rclone config. */
function offsiteCopy(remote: SftpRemote, path: string, extra: Record<string, string> = {}) {
  const config = loadConfig({ POSTGRES_PASSWORD: 'unused-here', OFFSITE_REMOTE: `${remote.remote}/${path}`, RCLONE_CONFIG: remote.rcloneConfig, OFFSITE_TIMEOUT_MS: '120000', ...extra });
  const { log, lines } = capturedLogger();
  return { copy: new OffsiteCopy(config, log), lines, config };
}

/** sha256sum's line for a file: `<hex>  <file name>`. */
function sidecarOf(path: string): string {
  return `${createHash('sha256').update(readFileSync(path)).digest('hex')}  ${path.split('/').at(-1)}\n`;
}

/** Every file under `dir`, relative, sorted (empty when `dir` is missing). */
function filesIn(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath ?? entry.path, entry.name).slice(dir.length + 1))
    .sort();
}

function write(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text, { mode: 0o600 });
}

const DUMP_A = 'app_alpha-0123456789abcdef-20261201T030000000Z.dump';
const DUMP_B = 'app_alpha-0123456789abcdef-20261202T030000000Z.dump';
const DUMP_C = 'app_beta-fedcba9876543210-20261202T031500000Z.dump';

describe('OffsiteCopy against a real SFTP remote (sshd on 127.0.0.1, rclone sftp, host key pinned)', () => {
  let remote: SftpRemote;
  let local: string;
  before(async () => {
    remote = await startSftpRemote();
    local = mkdtempSync(join(tmpdir(), 'pgprov-offsite-local-'));
  });
  after(async () => {
    await remote?.stop();
    if (local) rmSync(local, { recursive: true, force: true });
  });

  it('is off without OFFSITE_REMOTE, and describes the remote as configured (never a connection string)', () => {
    const off = new OffsiteCopy(loadConfig({ POSTGRES_PASSWORD: 'x' }), pino({ level: 'silent' }));
    assert.equal(off.enabled, false);
    assert.deepEqual(off.describe(), { remote: null });
    const { copy } = offsiteCopy(remote, 'described');
    assert.equal(copy.enabled, true);
    assert.deepEqual(copy.describe(), { remote: `${remote.remote}/described` });
    // A connection string would put credentials into rclone's argv and into what /health shows: refused at start.
    for (const bad of [':sftp,host=h,pass=secret:backups', 's3,secret_access_key=abc:bucket', '/mnt/same-disk']) {
      assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'x', OFFSITE_REMOTE: bad }), /OFFSITE_REMOTE is invalid: use <remote name>:<path>/);
    }
  });

  it('copies finished dumps and their sidecars, never .partial nor anything else; an emptied local directory removes nothing remotely', async () => {
    const dir = join(local, 'dumps-copy');
    for (const file of [DUMP_A, DUMP_B]) {
      write(join(dir, file), `dump ${file}\n`);
      write(join(dir, `${file}.sha256`), sidecarOf(join(dir, file)));
    }
    write(join(dir, `${DUMP_C}.partial`), 'half a dump');
    write(join(dir, 'notes.txt'), 'not a backup');
    const { copy, lines } = offsiteCopy(remote, 'copy');
    const remoteDumps = join(remote.dir, 'copy', 'dumps');

    assert.deepEqual(await copy.copyDumps(dir), { copied: 4 });
    assert.deepEqual(filesIn(remoteDumps), [DUMP_A, `${DUMP_A}.sha256`, DUMP_B, `${DUMP_B}.sha256`]);
    for (const file of [DUMP_A, DUMP_B]) assert.equal(readFileSync(join(remoteDumps, file), 'utf8'), `dump ${file}\n`);
    assert.match(lines.at(-1)!, /off-site copy of the dumps done/);

    // Again: nothing new to send.
    assert.deepEqual(await copy.copyDumps(dir), { copied: 0 });
    // The local files lost (all of them, then the directory): the remote keeps every one.
    rmSync(join(dir, DUMP_A));
    rmSync(join(dir, `${DUMP_A}.sha256`));
    assert.deepEqual(await copy.copyDumps(dir), { copied: 0 });
    for (const file of readdirSync(dir)) rmSync(join(dir, file));
    assert.deepEqual(await copy.copyDumps(dir), { copied: 0 });
    rmSync(dir, { recursive: true });
    const lost = await rejectionOf(copy.copyDumps(dir));
    assert.ok(lost instanceof OffsiteCopyFailedError && lost.category === 'local_missing', lost.message);
    assert.deepEqual(filesIn(remoteDumps), [DUMP_A, `${DUMP_A}.sha256`, DUMP_B, `${DUMP_B}.sha256`], 'every remote file is still there');
  });

  it('removes exactly the dumps it is told to (with their sidecars); names not there are fine; anything but a dump name is refused', async () => {
    const dir = join(local, 'dumps-remove');
    for (const file of [DUMP_A, DUMP_B, DUMP_C]) {
      write(join(dir, file), `dump ${file}\n`);
      write(join(dir, `${file}.sha256`), sidecarOf(join(dir, file)));
    }
    const { copy } = offsiteCopy(remote, 'remove');
    const remoteDumps = join(remote.dir, 'remove', 'dumps');
    // Nothing copied yet: the remote directory is missing, and removing is still fine.
    await copy.removeDumps([DUMP_A]);
    assert.deepEqual(await copy.copyDumps(dir), { copied: 6 });

    await copy.removeDumps([DUMP_A, 'app_gone-0123456789abcdef-20200101T000000000Z.dump']);
    assert.deepEqual(filesIn(remoteDumps), [DUMP_B, `${DUMP_B}.sha256`, DUMP_C, `${DUMP_C}.sha256`]);
    await copy.removeDumps([]);
    for (const bad of ['*.dump', '../x.dump', `${DUMP_B}.sha256`, 'notes.txt']) {
      await assert.rejects(copy.removeDumps([bad]), TypeError, bad);
    }
    assert.deepEqual(filesIn(remoteDumps), [DUMP_B, `${DUMP_B}.sha256`, DUMP_C, `${DUMP_C}.sha256`], 'nothing else was removed');
  });

  it('refuses to sync a pgBackRest repository that looks lost or empty, and syncs a real-looking one, .info files included, following expire', async () => {
    // A repository laid out as pgBackRest 2.45 lays one out (made by hand here: this checks what is copied and
    // removed, not pgBackRest), for the stanza of the service's setting (PGBACKREST_STANZA, default pgprov).
    const repo = join(local, 'repo');
    const { copy } = offsiteCopy(remote, 'cluster');
    const remoteRepo = join(remote.dir, 'cluster', 'pgbackrest');
    const refused = async (why: RegExp) => {
      const err = await rejectionOf(copy.copyClusterRepo(repo));
      assert.ok(err instanceof OffsiteCopyRefusedError, err.message);
      assert.match(err.message, why);
      assert.match(err.message, /nothing was sent or removed/);
    };
    const backupInfo = (labels: string[]) =>
      `[backrest]\nbackrest-format=5\nbackrest-version="2.45"\n\n[backup:current]\n${labels.map((label) => `${label}={"backup-type":"full"}`).join('\n')}\n\n[db]\ndb-id=1\n`;
    const addBackup = (label: string) => {
      write(join(repo, 'backup', 'pgprov', label, 'backup.manifest'), `[backup]\nbackup-label="${label}"\n`);
      write(join(repo, 'backup', 'pgprov', label, 'pg_data', 'base', '1', '1259.gz'), `data of ${label}`);
    };

    await refused(/is missing: it looks lost/);
    mkdirSync(repo);
    await refused(/no backup\/pgprov\/backup.info/);
    write(join(repo, 'backup', 'pgprov', 'backup.info'), backupInfo([]));
    await refused(/no archive\/pgprov\/archive.info/);
    write(join(repo, 'archive', 'pgprov', 'archive.info'), '[backrest]\nbackrest-format=5\n\n[db]\ndb-id=1\n');
    await refused(/names no backup/);
    write(join(repo, 'backup', 'pgprov', 'backup.info'), backupInfo(['20261201-010000F']));
    await refused(/backup 20261201-010000F, which backup.info names, is not in backup\/pgprov/);
    assert.deepEqual(filesIn(remoteRepo), [], 'nothing was sent while refused');

    addBackup('20261201-010000F');
    write(join(repo, 'backup', 'pgprov', 'backup.info.copy'), backupInfo(['20261201-010000F']));
    write(join(repo, 'archive', 'pgprov', '15-1', '0000000100000000', '000000010000000000000001-aaaa.gz'), 'wal 1');
    symlinkSync('20261201-010000F', join(repo, 'backup', 'pgprov', 'latest'));
    await copy.copyClusterRepo(repo);
    const first = filesIn(repo).filter((file) => !file.endsWith('latest'));
    assert.deepEqual(filesIn(remoteRepo), first, 'the whole repository, the `latest` link skipped');
    assert.equal(readFileSync(join(remoteRepo, 'backup', 'pgprov', 'backup.info'), 'utf8'), backupInfo(['20261201-010000F']));

    // A new backup and more WAL, then expire removes the first backup and its WAL: the remote follows.
    addBackup('20261208-010000F');
    write(join(repo, 'archive', 'pgprov', '15-1', '0000000100000000', '000000010000000000000002-bbbb.gz'), 'wal 2');
    rmSync(join(repo, 'backup', 'pgprov', '20261201-010000F'), { recursive: true });
    rmSync(join(repo, 'archive', 'pgprov', '15-1', '0000000100000000', '000000010000000000000001-aaaa.gz'));
    for (const info of ['backup.info', 'backup.info.copy']) write(join(repo, 'backup', 'pgprov', info), backupInfo(['20261208-010000F']));
    await copy.copyClusterRepo(repo);
    assert.deepEqual(filesIn(remoteRepo), filesIn(repo).filter((file) => !file.endsWith('latest')));
    assert.equal(readFileSync(join(remoteRepo, 'backup', 'pgprov', 'backup.info'), 'utf8'), backupInfo(['20261208-010000F']));

    // The local disk wiped: refused, and the remote keeps everything.
    const before = filesIn(remoteRepo);
    rmSync(repo, { recursive: true });
    mkdirSync(repo);
    await refused(/no backup\/pgprov\/backup.info/);
    assert.deepEqual(filesIn(remoteRepo), before);
  });

  it('says why when the remote is unreachable or refuses us, in its own words and never rclone\'s, and works again once it is back', async () => {
    const dir = join(local, 'dumps-outage');
    write(join(dir, DUMP_A), 'dump a\n');
    const { copy, lines } = offsiteCopy(remote, 'outage');
    await remote.makeUnreachable();
    try {
      const err = await rejectionOf(copy.copyDumps(dir));
      assert.ok(err instanceof OffsiteCopyFailedError, err.message);
      assert.equal(err.category, 'unreachable');
      assert.equal(typeof err.exitCode, 'number');
      assert.match(err.message, /^the off-site copy \(dumps\) failed \[unreachable\]: the remote could not be reached/);
      assert.doesNotMatch(err.message, /dial tcp|127\.0\.0\.1|NewFs|couldn't connect|Failed to create file system/i, "none of rclone's words");
    } finally {
      await remote.makeReachable();
    }
    assert.deepEqual(await copy.copyDumps(dir), { copied: 1 });
    assert.deepEqual(filesIn(join(remote.dir, 'outage', 'dumps')), [DUMP_A]);

    // A key the remote does not know, and a host key that is not the remote's: told apart, nothing of rclone's said.
    const strangerKey = join(local, 'stranger_ed25519');
    assert.equal(spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', strangerKey]).status, 0);
    const conf = readFileSync(remote.rcloneConfig, 'utf8');
    const otherConfig = join(local, 'rclone-other.conf');
    writeFileSync(otherConfig, conf.replace(/^key_file = .*$/m, `key_file = ${strangerKey}`), { mode: 0o600 });
    const stranger = offsiteCopy(remote, 'outage', { RCLONE_CONFIG: otherConfig }).copy;
    const refused = await rejectionOf(stranger.copyDumps(dir));
    assert.ok(refused instanceof OffsiteCopyFailedError && refused.category === 'auth_refused', refused.message);
    const otherHosts = join(local, 'known_hosts_other');
    const strangerPub = readFileSync(`${strangerKey}.pub`, 'utf8').split(' ');
    const port = /^port = (\d+)$/m.exec(conf)![1];
    writeFileSync(otherHosts, `[127.0.0.1]:${port} ${strangerPub[0]} ${strangerPub[1]}\n`, { mode: 0o600 });
    writeFileSync(otherConfig, conf.replace(/^known_hosts_file = .*$/m, `known_hosts_file = ${otherHosts}`), { mode: 0o600 });
    const spoofed = await rejectionOf(offsiteCopy(remote, 'outage', { RCLONE_CONFIG: otherConfig }).copy.copyDumps(dir));
    assert.ok(spoofed instanceof OffsiteCopyFailedError && spoofed.category === 'host_key_rejected', spoofed.message);
    const unknown = await rejectionOf(offsiteCopy(remote, 'outage', { RCLONE_CONFIG: join(local, 'no-such.conf') }).copy.copyDumps(dir));
    assert.ok(unknown instanceof OffsiteCopyFailedError && unknown.category === 'remote_not_configured', unknown.message);

    // What was logged names no key, no path of a key, nothing rclone said.
    const logged = lines.join('\n');
    assert.doesNotMatch(logged, /PRIVATE KEY|_ed25519|dial tcp|knownhosts/);
  });
});

describe('restore drill: from the off-site copy alone', () => {
  const ROWS = 2_000;
  let remote: SftpRemote;
  let t: TestStack;
  before(async () => {
    remote = await startSftpRemote();
    t = await startTestStack({
      // The service's own scheduler copies off the machine, every 2 s here (every hour by default).
      serviceEnv: {
        LOG_PRETTY: 'false',
        LOG_LEVEL: 'info',
        READY_POOL_SIZE: '1',
        OFFSITE_REMOTE: `${remote.remote}/drill`,
        RCLONE_CONFIG: remote.rcloneConfig,
        OFFSITE_SCHEDULE: 'every 2s',
        BACKUP_SCHEDULER_TICK_MS: '200',
        BACKUP_RETRY_DELAY_MS: '500',
      },
    });
  });
  after(async () => {
    await t?.stop();
    await remote?.stop();
  });

  it('writes data, backs it up, copies it off-site, destroys it and every local dump, fetches it back with runbooks/fetch-offsite.sh, restores it, and finds every row', { timeout: 300_000 }, async (test) => {
    const step = async <T>(name: string, work: () => Promise<T> | T): Promise<T> => {
      const started = performance.now();
      const result = await work();
      test.diagnostic(`${name}: ${Math.round(performance.now() - started)} ms`);
      return result;
    };
    const backups = t.stack.paths.backups;
    const rowsOf = (connectionString: string) =>
      asApp(connectionString, async (c) => (await c.query('SELECT id, note, amount::text AS amount, payload, at FROM ledger ORDER BY id')).rows);

    // An app, and its data written as an app writes it: node-postgres with the string the service returned.
    const app = await step('provision', () => t.provision('drill'));
    const written = await step(`write ${ROWS} rows`, () =>
      asApp(app.connection_string, async (c) => {
        await c.query('CREATE TABLE ledger (id int PRIMARY KEY, note text NOT NULL, amount numeric(12,2) NOT NULL, payload jsonb NOT NULL, at timestamptz NOT NULL)');
        await c.query(
          `INSERT INTO ledger
             SELECT i, 'row ' || i || ' – café ✓ ' || md5(i::text), round((i * 7.31)::numeric, 2),
                    jsonb_build_object('i', i, 'tags', jsonb_build_array('a', i % 7)), timestamptz '2026-12-01 00:00:00+00' + i * interval '1 minute'
             FROM generate_series(1, $1::int) AS i`,
          [ROWS],
        );
        return (await c.query('SELECT id, note, amount::text AS amount, payload, at FROM ledger ORDER BY id')).rows;
      }),
    );
    assert.equal(written.length, ROWS);

    const backup = await step('backup through the API', () => t.admin('POST', '/apps/drill/backups'));
    assert.equal(backup.status, 201, backup.text);
    const file = String(backup.body.file);
    const sidecar = join(backups, `${file}.sha256`);
    assert.equal(readFileSync(sidecar, 'utf8'), sidecarOf(join(backups, file)), 'the service wrote the checksum beside the dump');

    // The copy off the machine: the service's scheduler makes it by itself (OFFSITE_SCHEDULE).
    const config = loadConfig({ ...t.stack.serviceEnvironment() });
    assert.equal(config.BACKUP_DIR, backups);
    const remoteDumps = join(remote.dir, 'drill', 'dumps');
    await step('wait for the scheduled copy off-site', () =>
      eventually(async () => existsSync(join(remoteDumps, file)) && existsSync(join(remoteDumps, `${file}.sha256`)), (there) => there, 60_000),
    );
    assert.ok(existsSync(join(remoteDumps, `${file}.sha256`)), 'the dump and its checksum are off the machine');
    const health = await eventually(async () => (await t.get('/health')).body, (body) => (body.backups as { offsite?: string }).offsite === 'ok', 30_000);
    assert.deepEqual(health.backups, { offsite: 'ok' });
    const metrics = await (await fetch(`${t.stack.serviceUrl}/metrics`)).text(); // the service's port: nginx does not route /metrics
    assert.match(metrics, /pgprov_offsite_configured 1/);
    assert.match(metrics, /pgprov_offsite_copy_last_success_age_seconds \d/);
    test.diagnostic(`the data's time, noted: ${new Date().toISOString()}`);

    // Disaster: the data destroyed, and every local dump with it.
    await step('destroy the data', () => asApp(app.connection_string, (c) => c.query('DROP TABLE ledger')));
    await step('delete every local dump', () => {
      for (const name of readdirSync(backups)) rmSync(join(backups, name), { recursive: true, force: true });
    });
    assert.deepEqual(readdirSync(backups), []);
    assert.deepEqual((await t.admin('GET', '/apps/drill/backups')).body.backups ?? [], [], 'the service has no backup left');

    // The runbook, exactly as documented for the local stack.
    const fetched = await step('fetch from the remote (runbooks/fetch-offsite.sh)', () =>
      spawnSync('sh', [RUNBOOK], {
        encoding: 'utf8',
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', RCLONE_CONFIG: remote.rcloneConfig, OFFSITE_REMOTE: config.OFFSITE_REMOTE!, BACKUP_DIR: backups },
      }),
    );
    assert.equal(fetched.status, 0, `${fetched.stdout}\n${fetched.stderr}`);
    assert.match(fetched.stdout, new RegExp(`^  ok +${file.replaceAll('.', '\\.')}$`, 'm'));
    assert.match(fetched.stdout, /dumps: 1 verified, 0 without a checksum, 0 not matching/);
    assert.equal(statSync(join(backups, file)).mode & 0o777, 0o600);
    assert.equal(statSync(backups).mode & 0o777, 0o700);

    const restored = await step('restore through the API', () => t.admin('POST', '/apps/drill/restore', { file }));
    assert.equal(restored.status, 200, restored.text);

    const rows = await step(`read and check every row (${ROWS})`, () => rowsOf(app.connection_string));
    assert.equal(rows.length, ROWS);
    assert.deepEqual(rows, written, 'every row, every column, as written');
  });

  it('reports a remote that is away (/health failing, a failure counted and logged), retries, and is ok once it is back', { timeout: 180_000 }, async () => {
    await t.admin('POST', '/apps/drill/backups'); // something new to copy
    const from = t.serviceLines.length;
    await remote.makeUnreachable();
    try {
      const away = await eventually(async () => (await t.get('/health')).body, (body) => (body.backups as { offsite?: string }).offsite === 'failing', 60_000);
      assert.deepEqual(away.backups, { offsite: 'failing' });
      assert.equal((await t.get('/health')).status, 200, 'a remote away does not make the service unhealthy');
      const metrics = await (await fetch(`${t.stack.serviceUrl}/metrics`)).text();
      assert.match(metrics, /pgprov_scheduled_backup_failures_total\{work="offsite_copy"\} [1-9]/);
      const line = await t.waitForServiceLine(/off-site copy failed; it will be tried again/, from);
      assert.match(line, /"level":50/);
      assert.match(line, /the remote could not be reached/);
      assert.doesNotMatch(line, /Failed to create file system|dial tcp|ssh: |NewFs/i, "rclone's own words never reach the log");
    } finally {
      await remote.makeReachable();
    }
    const back = await eventually(async () => (await t.get('/health')).body, (body) => (body.backups as { offsite?: string }).offsite === 'ok', 120_000);
    assert.deepEqual(back.backups, { offsite: 'ok' });
  });

  it('the runbook refuses a dump that does not match its sidecar, and says which', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgprov-fetch-'));
    try {
      const remoteDumps = join(remote.dir, 'tampered', 'dumps');
      write(join(remoteDumps, DUMP_A), 'the dump as it was\n');
      write(join(remoteDumps, `${DUMP_A}.sha256`), sidecarOf(join(remoteDumps, DUMP_A)));
      write(join(remoteDumps, DUMP_A), 'the dump, changed since\n');
      write(join(remoteDumps, DUMP_B), 'a dump without a sidecar\n');
      const fetched = spawnSync('sh', [RUNBOOK], {
        encoding: 'utf8',
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', RCLONE_CONFIG: remote.rcloneConfig, OFFSITE_REMOTE: `${remote.remote}/tampered`, BACKUP_DIR: join(dir, 'backups') },
      });
      assert.equal(fetched.status, 1, fetched.stdout + fetched.stderr);
      assert.match(fetched.stdout, new RegExp(`MISMATCH  ${DUMP_A.replaceAll('.', '\\.')}`));
      assert.match(fetched.stdout, new RegExp(`unchecked ${DUMP_B.replaceAll('.', '\\.')}`));
      assert.deepEqual(readdirSync(join(dir, 'backups')).sort(), [`${DUMP_A}.corrupt`, `${DUMP_A}.sha256`, DUMP_B].sort(), 'the bad dump is set aside: the service does not list it');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
