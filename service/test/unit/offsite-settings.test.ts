// The off-site copy's settings and words: the local stack passes OFFSITE_REMOTE and RCLONE_CONFIG to the service
// as it passes every other setting (scripts/lib/stack-environment.ts), OFFSITE_REMOTE names a remote and never
// carries a connection string's parameters, and rclone's stderr becomes one of our categories (its text goes
// nowhere). The copy itself runs against a real SFTP remote: test/stack/offsite.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { serviceSettings } from '../../scripts/lib/stack-environment.js';
import { rcloneFailureCategory } from '../../src/db/offsite/rclone.js';
import { loadConfig } from '../../src/shared/config.js';

describe('off-site settings', () => {
  it('reach the service from the environment or .env, as every other setting does', () => {
    const passed = serviceSettings({ OFFSITE_REMOTE: 'offsite:pg-provisioner', RCLONE_CONFIG: '/etc/pg-provisioner/rclone.conf', OFFSITE_SCHEDULE: 'every 1h', STACK_DIR: '.stack' });
    assert.deepEqual(passed, { OFFSITE_REMOTE: 'offsite:pg-provisioner', RCLONE_CONFIG: '/etc/pg-provisioner/rclone.conf', OFFSITE_SCHEDULE: 'every 1h' });
  });

  it('OFFSITE_REMOTE: empty is off; a remote by name is taken; a connection string or a plain path is refused', () => {
    assert.equal(loadConfig({ POSTGRES_PASSWORD: 'x', OFFSITE_REMOTE: '' }).OFFSITE_REMOTE, undefined);
    for (const good of ['offsite:pg-provisioner', 'b2-eu:bucket/pg', 'nas:/srv/backups', 'offsite:']) assert.equal(loadConfig({ POSTGRES_PASSWORD: 'x', OFFSITE_REMOTE: good }).OFFSITE_REMOTE, good);
    for (const bad of [':sftp,host=h,pass=p:dir', 's3,access_key_id=AK,secret_access_key=SK:bucket', ':s3:bucket', '/mnt/usb', 'pg-provisioner']) {
      assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'x', OFFSITE_REMOTE: bad }), /OFFSITE_REMOTE is invalid/, bad);
    }
  });

  it("rclone's failures become our categories (from the messages rclone 1.60 prints)", () => {
    const cases: Array<[string, string]> = [
      ['Failed to create file system for "offsite:/x": NewFs: couldn\'t connect SSH: dial tcp 127.0.0.1:2222: connect: connection refused', 'unreachable'],
      ['NewFs: couldn\'t connect SSH: dial tcp: lookup sftp.example.com: no such host', 'unreachable'],
      ['NewFs: couldn\'t connect SSH: ssh: handshake failed: ssh: unable to authenticate, attempted methods [none publickey], no supported methods remain', 'auth_refused'],
      ['NewFs: couldn\'t connect SSH: ssh: handshake failed: knownhosts: key mismatch', 'host_key_rejected'],
      ['NewFs: couldn\'t connect SSH: ssh: handshake failed: knownhosts: key is unknown', 'host_key_rejected'],
      ['Failed to create file system for "nope:/x": didn\'t find section in config file', 'remote_not_configured'],
      ['Failed to copy: AccessDenied: Access Denied\n\tstatus code: 403', 'auth_refused'],
      ['Failed to copy: something else entirely', 'other'],
    ];
    for (const [stderr, category] of cases) assert.equal(rcloneFailureCategory(stderr), category, stderr);
  });
});
