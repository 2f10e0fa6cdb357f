// The local stack's pgbouncer.ini (scripts/lib/local-pgbouncer.ts): the repo's, which compose mounts as is, with
// only the addresses, ports and file paths changed, so that what the stack tests is what compose runs.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { LocalPgBouncer, type PgBouncerSettings } from '../../scripts/lib/local-pgbouncer.js';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
import { tlsFiles } from '../../scripts/lib/local-tls.js';
import { assertKeptAsIs, assertSameLines, changedSettings } from '../helpers/config-lines.js';

const DIR = '/tmp/pgprov-unit';
const PORT = 16432;
const PG_PORT = 15432;

function pgbouncer(overrides: Partial<PgBouncerSettings> = {}): LocalPgBouncer {
  const settings: PgBouncerSettings = {
    dir: DIR,
    port: PORT,
    pgPort: PG_PORT,
    osUser: process.env.STACK_PG_OS_USER || 'postgres',
    tls: tlsFiles(join(DIR, 'tls')),
    ...overrides,
  };
  return new LocalPgBouncer(settings, () => {
    throw new Error('nothing is started here');
  });
}

/**
 * `key = value` of a line of an ini file (an `%include file` line as key `%include`), or undefined for comments,
 * blank lines and section headers.
 */
function setting(line: string): { key: string; value: string } | undefined {
  const include = /^%include\s+(.*)$/.exec(line);
  if (include) return { key: '%include', value: include[1]! };
  const match = /^([^;#[\s%][^=]*?)\s*=\s*(.*)$/.exec(line);
  return match ? { key: match[1]!, value: match[2]! } : undefined;
}

describe("the local stack's pgbouncer.ini", () => {
  const repo = readFileSync(join(REPO_ROOT, 'pgbouncer.ini'), 'utf8').split('\n');
  const local = pgbouncer().configFile().split('\n');

  it("is the repo's line for line: comments, sections, every setting and its order", () => {
    assertSameLines(repo, local, setting);
  });

  it('changes only addresses (to 127.0.0.1), ports (the stack\'s) and file paths (into the stack\'s directory)', () => {
    const changed = changedSettings(repo, local, setting);
    const tls = tlsFiles(join(DIR, 'tls'));
    assert.deepEqual(Object.fromEntries(changed), {
      '%include': join(DIR, 'pooler-auth', 'databases.ini'), // [databases], written by the service
      listen_addr: '127.0.0.1',
      listen_port: String(PORT),
      unix_socket_dir: join(DIR, 'pgbouncer-run'),
      auth_hba_file: join(DIR, 'pooler-auth', 'pgbouncer-hba.conf'), // rendered by the service from the repo's
      auth_file: join(DIR, 'pooler-auth', 'userlist.txt'),
      client_tls_cert_file: tls.serverCertificate,
      client_tls_key_file: tls.pgbouncerKey,
      client_tls_ca_file: tls.caCertificate,
    });
    // What decides how apps are pooled and let in is compose's exactly (and an app's pool stays 2).
    assertKeptAsIs(local, changed, ['pool_mode', 'auth_type', 'default_pool_size', 'max_db_connections', 'max_client_conn', 'client_login_timeout', 'client_tls_sslmode', 'admin_users', 'ignore_startup_parameters'], setting);
  });

  it("tells the service the same door it runs: the auth_file, the admin console's socket and port, 127.0.0.1", () => {
    const door = pgbouncer();
    const value = (key: string) => local.map(setting).find((s) => s?.key === key)?.value;
    assert.deepEqual(door.serviceSettings(), {
      POOLER_AUTH_FILE: value('auth_file'),
      POOLER_HBA_TEMPLATE: join(REPO_ROOT, 'pgbouncer-hba.conf'),
      POOLER_SERVER_HOST: '127.0.0.1', // Postgres as PgBouncer reaches it: compose's "postgres:5432"
      POOLER_SERVER_PORT: String(PG_PORT),
      POOLER_ADMIN_HOST: value('unix_socket_dir'),
      POOLER_ADMIN_PORT: value('listen_port'),
      PUBLIC_DB_HOST: value('listen_addr'),
      PUBLIC_DB_PORT: value('listen_port'),
    });
  });

  it('takes the benchmark\'s extra settings in place, or adds them to [pgbouncer]', () => {
    const sized = pgbouncer({ extraSettings: { default_pool_size: '4', stats_users: 'bench' } }).configFile().split('\n');
    assert.equal(sized.length, repo.length + 1);
    assert.ok(sized.includes('default_pool_size = 4'));
    assert.ok(!sized.includes('default_pool_size = 2'));
    assert.equal(sized[sized.indexOf('[pgbouncer]') + 1], 'stats_users = bench');
  });

  it("has the service render the repo's pgbouncer-hba.conf beside the auth_file, where its pgbouncer.ini looks", () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgprov-unit-pgbouncer-'));
    try {
      const door = pgbouncer({ dir, tls: tlsFiles(join(dir, 'tls')) });
      door.prepare();
      const ini = readFileSync(join(door.paths.config, 'pgbouncer.ini'), 'utf8');
      assert.match(ini, new RegExp(`^auth_hba_file = ${join(door.paths.authDir, 'pgbouncer-hba.conf').replaceAll('/', '\\/')}$`, 'm'));
      assert.match(readFileSync(join(REPO_ROOT, 'pgbouncer-hba.conf'), 'utf8'), /^# @app-logins$/m, 'the template has the place for the apps\' lines');
      assert.equal(readFileSync(join(door.paths.config, 'pgbouncer.ini'), 'utf8'), door.configFile());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
