// `docker compose up -d` alone works on a fresh clone: nothing to set or chown first. There is no Docker engine
// here, so: the compose files are parsed and their wiring checked (no required variable; the password file shared
// by setup, Postgres and the service; ./backups given to the service's user; the apps' door: PgBouncer on the apps'
// network with the repo's pgbouncer.ini and pgbouncer-hba.conf, Postgres off it unless the direct door is opted in,
// the TLS certificate and the auth_file reaching who reads them; memory within the VM); `docker-compose config -q`
// runs without POSTGRES_PASSWORD; the PgBouncer image is Debian's package, the one the local stack runs; and the
// two scripts the containers run are run for real: init/setup/setup.sh with only the capabilities compose grants it
// (the password, the TLS certificate, the auth_file's directory), and the service image's entrypoint exactly as its
// ENTRYPOINT and CMD say, against a local stack whose Postgres was initialised with the password read as the
// postgres image reads it. And pgBackRest's wiring (WAL archiving, the cluster's backups): Postgres's own image
// with Debian's pgBackRest (the version the local stack runs), the repo's pgbackrest.conf, the pgpass file setup
// writes for Postgres's uid, the repository's volume (Postgres's, read-only and group-readable for the service).
import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { adminKeyInLogLine } from '../../src/shared/secrets.js';
import { findPgBouncer } from '../../scripts/lib/local-pgbouncer.js';
import { REPO_ROOT, SERVICE_DIR } from '../../scripts/lib/local-stack.js';
import { eventually } from '../helpers/conditions.js';
import { request } from '../helpers/service-client.js';
import { startTestStack } from '../helpers/stack.js';

interface ComposeService {
  image?: string;
  group_add?: Array<string | number>;
  build?: string | { context: string };
  entrypoint?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  networks?: string[];
  depends_on?: Record<string, { condition: string }>;
  cap_drop?: string[];
  cap_add?: string[];
  security_opt?: string[];
  restart?: string;
  mem_limit?: string;
  ulimits?: { nofile?: number | { soft: number; hard: number } };
}

interface ComposeFile {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
  networks?: Record<string, { name?: string; internal?: boolean } | null>;
}

/** The optional files an operator adds to docker-compose.yml with -f (README). */
const OVERRIDES = ['docker-compose.host-postgres.yml', 'docker-compose.direct-postgres.yml', 'docker-compose.offsite.yml'];
const COMPOSE_FILES = ['docker-compose.yml', ...OVERRIDES];
const readCompose = (file: string) => parseYaml(readFileSync(join(REPO_ROOT, file), 'utf8')) as ComposeFile;
const compose = readCompose('docker-compose.yml') as Required<ComposeFile>;
const { setup, postgres, service, pgbouncer, nginx } = compose.services as Record<'setup' | 'postgres' | 'service' | 'pgbouncer' | 'nginx', ComposeService>;

/** A compose value with each ${NAME:-default} as compose fills it in: from `given`, else its default. */
function composeValue(value: string, given: Record<string, string> = {}): string {
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*):?-([^}]*)\}/g, (_all, name: string, fallback: string) => given[name] || fallback);
}

/** The settings of an ini file (pgbouncer.ini) or of postgres.conf: `key = value`, comments and quotes left out. */
function settingsOf(file: string): Map<string, string> {
  const settings = new Map<string, string>();
  for (const line of readFileSync(join(REPO_ROOT, file), 'utf8').split('\n')) {
    const match = /^\s*([^;#[\s][^=]*?)\s*=\s*([^#;]*?)\s*(?:[#;].*)?$/.exec(line);
    if (match) settings.set(match[1]!, match[2]!.replace(/^'(.*)'$/, '$1'));
  }
  return settings;
}
const pgbouncerIni = settingsOf('pgbouncer.ini');
const postgresConf = settingsOf('postgres.conf');

/** KEY_COPIES of setup ("file=uid:gid,…"): each server's own copy of the TLS key. */
function keyCopies(value: string): Array<{ file: string; uid: number; gid: number }> {
  return value.split(',').map((entry) => {
    const [file = '', owner = ''] = entry.split('=');
    const [uid, gid] = owner.split(':').map(Number);
    return { file, uid: uid!, gid: gid! };
  });
}

/** The PgBouncer image's Dockerfile (pgbouncer-image/), which setup runs in too. */
const PGBOUNCER_DOCKERFILE = readFileSync(join(REPO_ROOT, 'pgbouncer-image', 'Dockerfile'), 'utf8');
/** Its USER as uid and gid: whom setup gives PgBouncer's key and the auth_file's group. */
function pgbouncerImageUser(): { uid: number; gid: number } {
  const match = /^USER (\d+):(\d+)$/m.exec(PGBOUNCER_DOCKERFILE);
  assert.ok(match, 'the PgBouncer image runs as a numeric uid:gid');
  return { uid: Number(match[1]), gid: Number(match[2]) };
}
/** The postgres image's (postgres:15-bookworm) user "postgres": uid and gid 999. */
const POSTGRES_IMAGE_USER = { uid: 999, gid: 999 };

/** A size as compose's mem_limit writes it (600m, 1g, 48m), in MB. */
function megabytes(limit: string): number {
  const match = /^(\d+)([kmg])b?$/i.exec(limit);
  assert.ok(match, `a mem_limit compose reads: ${limit}`);
  return Number(match[1]) * { k: 1 / 1024, m: 1, g: 1024 }[match[2]!.toLowerCase() as 'k' | 'm' | 'g'];
}

/** A service's volume mounts as [source, target, mode]. */
function mounts(of: ComposeService): Array<[string, string, string]> {
  return (of.volumes ?? []).map((v) => {
    const [source = '', target = '', mode = 'rw'] = v.split(':');
    return [source, target, mode];
  });
}

function mountAt(of: ComposeService, target: string): [string, string, string] | undefined {
  return mounts(of).find(([, t]) => t === target);
}

const isRoot = process.getuid?.() === 0;

/** The Dockerfile's final ENTRYPOINT and CMD (exec form). */
function dockerfileCommand(): { entrypoint: string[]; cmd: string[] } {
  const text = readFileSync(join(SERVICE_DIR, 'Dockerfile'), 'utf8');
  const last = (instruction: string) => {
    const lines = text.split('\n').filter((line) => line.startsWith(`${instruction} [`));
    assert.ok(lines.length > 0, `the Dockerfile has no ${instruction} in exec form`);
    return JSON.parse(lines.at(-1)!.slice(instruction.length + 1)) as string[];
  };
  return { entrypoint: last('ENTRYPOINT'), cmd: last('CMD') };
}

/**
 * The service image's command as it runs on this machine: ENTRYPOINT without tini (the init process), then
 * CMD, with the image's /app being service/.
 */
function imageCommand(cmd?: string[]): string[] {
  const { entrypoint, cmd: imageCmd } = dockerfileCommand();
  assert.deepEqual(entrypoint.slice(0, 2), ['/usr/bin/tini', '--']);
  return [...entrypoint.slice(2), ...(cmd ?? imageCmd)].map((arg) => arg.replace(/^\/app\//, `${SERVICE_DIR}/`));
}

/** Where setup's volumes are, in a test's directory (empty, as a new volume is at the first start). */
interface SetupPaths {
  passwordFile: string;
  backupDir: string;
  tlsDir: string;
  authDir: string;
  socketDir: string;
  pgpassFile: string;
  repoDir: string;
}

function setupPaths(dir: string): SetupPaths {
  const paths = {
    passwordFile: join(dir, 'secrets', 'postgres-password'),
    backupDir: join(dir, 'backups'),
    tlsDir: join(dir, 'tls'),
    authDir: join(dir, 'pooler-auth'),
    socketDir: join(dir, 'pooler-socket'),
    pgpassFile: join(dir, 'secrets', 'pgbackrest.pgpass'),
    repoDir: join(dir, 'pgbackrest-repo'),
  };
  for (const volume of [dirname(paths.passwordFile), paths.tlsDir, paths.authDir, paths.socketDir, paths.repoDir]) mkdirSync(volume, { mode: 0o755 });
  mkdirSync(paths.backupDir, { mode: 0o755 }); // as a fresh clone has it: the cloning user's (here: this process's)
  return paths;
}

/**
 * The ids setup gives things to, as compose sets them when this process is root; otherwise this process's own
 * (only root may give a file away), in the same places.
 */
function setupIds(): {
  service: { uid: number; gid: number };
  poolerUid: number;
  poolerGid: number;
  postgres: { uid: number; gid: number };
  keys: Array<{ file: string; uid: number; gid: number }>;
} {
  const env = setup.environment!;
  const copies = keyCopies(env.KEY_COPIES!);
  if (isRoot) {
    return {
      service: { uid: Number(env.SERVICE_UID), gid: Number(env.SERVICE_GID) },
      poolerUid: Number(env.POOLER_UID),
      poolerGid: Number(env.POOLER_GID),
      postgres: { uid: Number(env.PG_UID), gid: Number(env.PG_GID) },
      keys: copies,
    };
  }
  const own = { uid: process.getuid!(), gid: process.getgid!() };
  return { service: own, poolerUid: own.uid, poolerGid: own.gid, postgres: own, keys: copies.map(({ file }) => ({ file, ...own })) };
}

/**
 * Runs init/setup/setup.sh as compose's setup container would: its environment (the container's paths moved into
 * the test's directory), and (as root) only its capabilities, or only `capabilities` when given.
 */
function runSetup(paths: SetupPaths, options: { password?: string; given?: Record<string, string>; capabilities?: string[] } = {}): SpawnSyncReturns<string> {
  const script = join(REPO_ROOT, 'init', 'setup', 'setup.sh');
  const ids = setupIds();
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    PASSWORD_FILE: paths.passwordFile,
    BACKUP_DIR: paths.backupDir,
    SERVICE_UID: String(ids.service.uid),
    SERVICE_GID: String(ids.service.gid),
    TLS_DIR: paths.tlsDir,
    TLS_HOSTS: composeValue(setup.environment!.TLS_HOSTS!, options.given),
    KEY_COPIES: ids.keys.map(({ file, uid, gid }) => `${file}=${uid}:${gid}`).join(','),
    POOLER_AUTH_DIR: paths.authDir,
    POOLER_SOCKET_DIR: paths.socketDir,
    POOLER_UID: String(ids.poolerUid),
    POOLER_GID: String(ids.poolerGid),
    PG_UID: String(ids.postgres.uid),
    PG_GID: String(ids.postgres.gid),
    PGBACKREST_PGPASS_FILE: paths.pgpassFile,
    PGBACKREST_REPO: paths.repoDir,
    ...(options.password !== undefined ? { POSTGRES_PASSWORD: options.password } : {}),
  };
  const capabilities = (options.capabilities ?? setup.cap_add ?? []).map((cap) => `+${cap.toLowerCase()}`).join(',');
  const command = isRoot
    ? ['setpriv', '--no-new-privs', '--inh-caps=-all', `--bounding-set=-all${capabilities ? `,${capabilities}` : ''}`, 'sh', script]
    : ['sh', script];
  return spawnSync(command[0]!, command.slice(1), { encoding: 'utf8', env });
}

/** A file's text as the postgres image's entrypoint reads POSTGRES_PASSWORD_FILE: bash's "$(< file)". */
function readAsPostgresImage(file: string): string {
  const result = spawnSync('bash', ['-c', 'printf %s "$(< "$1")"', '_', file], { encoding: 'utf8' });
  assert.equal(result.status, 0, result.stderr);
  return result.stdout;
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgprov-compose-'));
  chmodSync(dir, 0o755); // the service's uid must reach what is inside, as in the volumes
  return dir;
}

describe('docker-compose.yml: `docker compose up -d` needs nothing set first', () => {
  it('requires no variable: every ${…} in the compose files has a default', () => {
    for (const file of COMPOSE_FILES) {
      const text = readFileSync(join(REPO_ROOT, file), 'utf8').replaceAll('$$', '');
      for (const [, expression = ''] of text.matchAll(/\$\{([^}]*)\}/g)) {
        assert.match(expression, /^[A-Za-z_][A-Za-z0-9_]*:?-/, `${file}: \${${expression}} has no default (a fresh clone would have to set it)`);
      }
      for (const [bare] of text.matchAll(/\$[A-Za-z_][A-Za-z0-9_]*/g)) assert.fail(`${file}: ${bare} has no default`);
    }
  });

  it('passes `docker-compose config -q` with no POSTGRES_PASSWORD anywhere in the environment, alone and with each optional file', () => {
    const version = spawnSync('docker-compose', ['version'], { encoding: 'utf8' });
    assert.equal(version.status, 0, 'docker-compose is installed (.ci/run installs it): the files are validated by the tool operators run');
    const env = { ...process.env };
    delete env.POSTGRES_PASSWORD;
    for (const files of [['docker-compose.yml'], ...OVERRIDES.map((file) => ['docker-compose.yml', file])]) {
      const result = spawnSync('docker-compose', [...files.flatMap((f) => ['-f', f]), 'config', '-q'], { cwd: REPO_ROOT, env, encoding: 'utf8' });
      assert.equal(result.status, 0, `docker-compose ${files.join(' + ')} config -q:\n${result.stderr}`);
    }
    // As docker-compose merges the direct door's file: Postgres joins the apps' network, and the service names it.
    const merged = spawnSync('docker-compose', ['-f', 'docker-compose.yml', '-f', 'docker-compose.direct-postgres.yml', 'config'], { cwd: REPO_ROOT, env, encoding: 'utf8' });
    assert.equal(merged.status, 0, merged.stderr);
    const direct = (parseYaml(merged.stdout) as { services: Record<string, { networks?: Record<string, unknown> | string[]; environment?: Record<string, string> }> }).services;
    const networksOf = (of: { networks?: Record<string, unknown> | string[] }) => (Array.isArray(of.networks) ? of.networks : Object.keys(of.networks ?? {})).sort();
    assert.deepEqual(networksOf(direct.postgres!), ['apps', 'backend']);
    assert.equal(direct.service!.environment?.DIRECT_DB_HOST, 'postgres');
  });

  it('copies off the machine only with docker-compose.offsite.yml: rclone in the image, its config read-only, a way out of its own', () => {
    const dockerfile = readFileSync(join(SERVICE_DIR, 'Dockerfile'), 'utf8');
    assert.match(dockerfile, /apt-get install [^\n]*\brclone\b[^\n]*\bca-certificates\b/, "Debian's rclone (the tests' one), and the CAs it checks HTTPS remotes with");
    assert.match(dockerfile, /RCLONE_PATH=\/usr\/bin\/rclone/);
    assert.equal(service.environment?.OFFSITE_REMOTE, undefined, 'off by default: backups on the same disk as the data');
    // As docker-compose merges the file.
    const env = { ...process.env };
    delete env.OFFSITE_REMOTE;
    const merged = spawnSync('docker-compose', ['-f', 'docker-compose.yml', '-f', 'docker-compose.offsite.yml', 'config'], { cwd: REPO_ROOT, env: { ...env, POSTGRES_PASSWORD: 'x' }, encoding: 'utf8' });
    assert.equal(merged.status, 0, merged.stderr);
    const config = parseYaml(merged.stdout) as {
      services: Record<string, { networks?: Record<string, unknown>; environment?: Record<string, string>; volumes?: string[] }>;
      networks: Record<string, { internal?: boolean } | null>;
    };
    const offsite = config.services.service!;
    assert.equal(offsite.environment?.OFFSITE_REMOTE, 'offsite:pg-provisioner', 'a remote named in the rclone config, by default');
    const rcloneConfig = offsite.environment?.RCLONE_CONFIG ?? '';
    const mount = mounts({ volumes: offsite.volumes }).find(([, target]) => rcloneConfig.startsWith(`${target}/`));
    assert.ok(mount, `RCLONE_CONFIG (${rcloneConfig}) is inside a mount`);
    assert.deepEqual([mount[0], mount[2]], [join(REPO_ROOT, 'offsite'), 'ro'], "the operator's ./offsite, read-only");
    assert.match(readFileSync(join(REPO_ROOT, '.gitignore'), 'utf8'), /^offsite\/$/m, 'its keys are never committed');
    assert.deepEqual(Object.keys(offsite.networks ?? {}).sort(), ['backend', 'egress', 'frontend']);
    assert.equal(config.networks.egress?.internal, undefined, 'egress has a way out');
    assert.equal(config.networks.backend?.internal, true, 'backend still has none');
    for (const [name, other] of Object.entries(config.services)) if (name !== 'service') assert.ok(!Object.keys(other.networks ?? {}).includes('egress'), `${name} is not on egress`);
    const offsiteEnv = spawnSync('docker-compose', ['-f', 'docker-compose.yml', '-f', 'docker-compose.offsite.yml', 'config'], { cwd: REPO_ROOT, env: { ...env, POSTGRES_PASSWORD: 'x', OFFSITE_REMOTE: 's3remote:bucket/pgprov' }, encoding: 'utf8' });
    assert.match(offsiteEnv.stdout, /OFFSITE_REMOTE: s3remote:bucket\/pgprov/, 'OFFSITE_REMOTE from .env or the environment');
  });

  it('passes the superuser password from setup to Postgres and the service through one file in the secrets volume', () => {
    const passwordFile = setup.environment?.PASSWORD_FILE;
    assert.ok(passwordFile, 'setup is told where to keep the password (PASSWORD_FILE)');
    const secretsDir = dirname(passwordFile);
    assert.ok('secrets' in compose.volumes, 'a named volume "secrets" keeps the password across restarts');
    assert.deepEqual(mountAt(setup, secretsDir), ['secrets', secretsDir, 'rw']);
    for (const [name, consumer] of [['postgres', postgres], ['service', service]] as const) {
      assert.equal(consumer.environment?.POSTGRES_PASSWORD_FILE, passwordFile, `${name} reads the password from setup's file`);
      assert.equal(consumer.environment?.POSTGRES_PASSWORD, undefined, `${name} is given no password of its own`);
      assert.deepEqual(mountAt(consumer, secretsDir), ['secrets', secretsDir, 'ro'], `${name} mounts the secrets volume read-only`);
      assert.equal(consumer.depends_on?.setup?.condition, 'service_completed_successfully', `${name} starts after setup has finished`);
    }
    assert.equal(setup.environment?.POSTGRES_PASSWORD, '${POSTGRES_PASSWORD:-}', 'setup takes POSTGRES_PASSWORD from .env when it is set, and needs none');
    // Setup needs openssl (make-tls.sh): it runs in the image PgBouncer runs, built once, nothing more to pull.
    assert.equal(setup.image, pgbouncer.image, 'setup runs in the PgBouncer image');
    assert.deepEqual(setup.build, pgbouncer.build, 'built from the same directory');
    assert.match(PGBOUNCER_DOCKERFILE, /apt-get install [^\n]*\bopenssl\b/, 'which has openssl');
    assert.equal(setup.restart, 'no');
  });

  it("runs init/setup/setup.sh in setup, with capabilities over files' owners and modes only", () => {
    const [entry, script] = setup.entrypoint ?? [];
    assert.equal(entry, 'sh');
    assert.ok(script, 'setup runs a script');
    const mount = mounts(setup).find(([, target]) => script.startsWith(`${target}/`));
    assert.ok(mount, `${script} is mounted into setup`);
    assert.equal(mount[2], 'ro');
    assert.equal(join(REPO_ROOT, mount[0], script.slice(mount[1].length)), join(REPO_ROOT, 'init', 'setup', 'setup.sh'));
    // make-tls.sh, which setup.sh runs, beside it in the same mount.
    assert.ok(existsSync(join(REPO_ROOT, mount[0], 'make-tls.sh')));
    assert.deepEqual(setup.cap_drop, ['ALL']);
    // Only capabilities over files' owners and modes (the password file, ./backups, the keys and the auth dir go to
    // their users); which of them it needs, each one: "needs each capability compose grants it", below.
    assert.ok((setup.cap_add ?? []).includes('CHOWN'), setup.cap_add?.join(', '));
    for (const cap of setup.cap_add ?? []) assert.ok(['CHOWN', 'FOWNER', 'FSETID'].includes(cap), `${cap} is more than setup needs`);
    assert.deepEqual(setup.security_opt, ['no-new-privileges:true']);
    // Not one of Postgres's init scripts: the image's entrypoint and the local stack run only init/*.sh and *.sql.
    assert.ok(statSync(join(REPO_ROOT, 'init', 'setup')).isDirectory());
  });

  it("gives ./backups to the service's user: setup owns the same directory the service mounts to that user's uid", () => {
    const backupDir = setup.environment?.BACKUP_DIR;
    assert.ok(backupDir);
    const setupMount = mountAt(setup, backupDir);
    const serviceMount = mountAt(service, '/backups');
    assert.ok(setupMount && serviceMount);
    assert.equal(setupMount[0], serviceMount[0], 'setup and the service mount the same host directory');
    const dockerfile = readFileSync(join(SERVICE_DIR, 'Dockerfile'), 'utf8');
    assert.match(dockerfile, /^USER node$/m, 'the service runs as the node image\'s user "node", uid and gid 1000');
    assert.equal(setup.environment?.SERVICE_UID, '1000');
    assert.equal(setup.environment?.SERVICE_GID, '1000');
  });

  it("starts the service image through its entrypoint wrapper, then the local stack's command", () => {
    const { entrypoint, cmd } = dockerfileCommand();
    assert.deepEqual(entrypoint, ['/usr/bin/tini', '--', '/bin/sh', '/app/docker-entrypoint.sh']);
    assert.deepEqual(cmd, ['node', 'dist/server.js']);
    assert.match(readFileSync(join(SERVICE_DIR, 'Dockerfile'), 'utf8'), /^COPY docker-entrypoint\.sh \.\/$/m);
  });
});

describe("docker-compose.yml: the apps' door (PgBouncer), its networks, its files", () => {
  it("puts PgBouncer on the apps' network and Postgres off it, unless docker-compose.direct-postgres.yml opts in", () => {
    const apps = compose.networks.apps;
    assert.equal(apps?.name, 'pg-provisioner-apps', "apps join it by this name from their own compose files (README)");
    assert.equal(apps?.internal, true);
    assert.deepEqual([...(pgbouncer.networks ?? [])].sort(), ['apps', 'backend'], 'PgBouncer: apps in, Postgres out');
    assert.deepEqual(postgres.networks, ['backend'], "Postgres is not on the apps' network by default");
    for (const [name, other] of [['service', service], ['nginx', nginx]] as const) assert.ok(!(other.networks ?? []).includes('apps'), `${name} is not on the apps' network`);
    assert.equal(compose.networks.backend?.internal, true, 'the backend network has no way out');
    // The direct door: Postgres joins the apps' network as well, and the service hands out strings naming it.
    const direct = readCompose('docker-compose.direct-postgres.yml').services;
    assert.deepEqual([...(direct.postgres?.networks ?? [])].sort(), ['apps', 'backend']);
    assert.equal(direct.service?.environment?.DIRECT_DB_HOST, 'postgres', "the direct door is the compose service's name");
    assert.equal(composeValue(service.environment!.DIRECT_DB_HOST!), '', 'off by default');
    assert.equal(service.environment?.DIRECT_DB_PORT, '5432');
  });

  it("hands out strings naming PgBouncer as apps reach it, and PgBouncer reaches Postgres by its compose name", () => {
    assert.equal(composeValue(service.environment!.PUBLIC_DB_HOST!), 'pgbouncer', "the compose service's name on the apps' network");
    assert.equal(composeValue(service.environment!.PUBLIC_DB_PORT!), pgbouncerIni.get('listen_port'));
    assert.equal(composeValue(service.environment!.PUBLIC_DB_SSLMODE!), 'require');
    // pgbouncer.ini's [databases]: the service's entries, to the compose service postgres; no wildcard.
    assert.equal(pgbouncerIni.get('*'), undefined);
    assert.equal(composeValue(service.environment!.POOLER_SERVER_HOST!), 'postgres');
    assert.equal(composeValue(service.environment!.POOLER_SERVER_PORT!), '5432');
    assert.match(readFileSync(join(REPO_ROOT, 'pgbouncer.ini'), 'utf8'), new RegExp(`^%include ${posix.join(posix.dirname(service.environment!.POOLER_AUTH_FILE!), 'databases.ini').replaceAll('/', '\\/')}$`, 'm'));
    assert.equal(pgbouncerIni.get('listen_addr'), '*');
    // The certificate names every host a string or a client may name: PgBouncer, Postgres (the direct door), PUBLIC_DB_HOST.
    const hosts = composeValue(setup.environment!.TLS_HOSTS!, { PUBLIC_DB_HOST: 'db.example.com' }).split(',');
    for (const host of ['pgbouncer', 'postgres', 'db.example.com']) assert.ok(hosts.includes(host), `TLS_HOSTS names ${host}`);
    assert.deepEqual(pgbouncer.depends_on, { postgres: { condition: 'service_healthy' }, service: { condition: 'service_healthy' } }, 'started once the service has written the auth_file');
  });

  it("mounts the repo's pgbouncer.ini read-only where the image's command looks, and pgbouncer-hba.conf into the service, which renders it where the ini looks", () => {
    assert.match(PGBOUNCER_DOCKERFILE, /^CMD \["pgbouncer", "\/etc\/pgbouncer\/pgbouncer\.ini"\]$/m);
    assert.deepEqual(mountAt(pgbouncer, '/etc/pgbouncer/pgbouncer.ini'), ['./pgbouncer.ini', '/etc/pgbouncer/pgbouncer.ini', 'ro']);
    const hba = pgbouncerIni.get('auth_hba_file')!;
    assert.equal(pgbouncerIni.get('auth_type'), 'hba');
    // The rendered file: beside the auth_file, in the volume the service writes and PgBouncer reads.
    assert.equal(posix.dirname(hba), posix.dirname(pgbouncerIni.get('auth_file')!));
    assert.deepEqual(mountAt(pgbouncer, posix.dirname(hba)), ['pooler_auth', posix.dirname(hba), 'ro']);
    const template = service.environment?.POOLER_HBA_TEMPLATE ?? '/etc/pgprov/pgbouncer-hba.conf';
    assert.deepEqual(mountAt(service, template), ['./pgbouncer-hba.conf', template, 'ro']);
    for (const [source] of mounts(pgbouncer).filter(([s]) => s.startsWith('./'))) assert.ok(existsSync(join(REPO_ROOT, source)), `${source} is in the repo`);
  });

  it('shares the auth_file: the service writes it where setup prepared its directory, PgBouncer reads it there', () => {
    const authFile = pgbouncerIni.get('auth_file')!;
    const authDir = posix.dirname(authFile);
    assert.equal(service.environment?.POOLER_AUTH_FILE, authFile);
    assert.equal(setup.environment?.POOLER_AUTH_DIR, authDir);
    assert.deepEqual(mountAt(setup, authDir), ['pooler_auth', authDir, 'rw']);
    assert.deepEqual(mountAt(service, authDir), ['pooler_auth', authDir, 'rw']);
    assert.deepEqual(mountAt(pgbouncer, authDir), ['pooler_auth', authDir, 'ro']);
    // The directory is the service's (uid 1000) and PgBouncer's group's: the image's gid.
    assert.equal(Number(setup.environment?.POOLER_GID), pgbouncerImageUser().gid);
    // The admin console: PgBouncer's socket, in a volume only the service shares, on the port PgBouncer listens on.
    const socketDir = pgbouncerIni.get('unix_socket_dir')!;
    assert.equal(service.environment?.POOLER_ADMIN_HOST, socketDir);
    assert.equal(service.environment?.POOLER_ADMIN_PORT, pgbouncerIni.get('listen_port'));
    assert.deepEqual(mountAt(pgbouncer, socketDir), ['pooler_socket', socketDir, 'rw']);
    assert.deepEqual(mountAt(service, socketDir), ['pooler_socket', socketDir, 'rw']);
    // Beside setup, which gives the directory to PgBouncer's user before either starts.
    assert.deepEqual(mountAt(setup, socketDir), ['pooler_socket', socketDir, 'rw']);
    assert.equal(setup.environment?.POOLER_SOCKET_DIR, socketDir);
    assert.equal(Number(setup.environment?.POOLER_UID), pgbouncerImageUser().uid);
    const sharing = Object.entries(compose.services).filter(([, s]) => mounts(s).some(([source]) => source === 'pooler_socket')).map(([name]) => name);
    assert.deepEqual(sharing.sort(), ['pgbouncer', 'service', 'setup']);
    for (const volume of ['pooler_auth', 'pooler_socket', 'tls']) assert.ok(volume in compose.volumes, `a named volume ${volume}`);
  });

  it('gives each server the certificate and its own copy of the key, owned by the user it runs as', () => {
    const tlsDir = setup.environment!.TLS_DIR!;
    assert.deepEqual(mountAt(setup, tlsDir), ['tls', tlsDir, 'rw']);
    for (const [name, reader] of [['postgres', postgres], ['pgbouncer', pgbouncer], ['service', service]] as const) {
      assert.deepEqual(mountAt(reader, tlsDir), ['tls', tlsDir, 'ro'], `${name} mounts the certificate read-only`);
    }
    const copies = keyCopies(setup.environment!.KEY_COPIES!);
    const copyFor = (path: string) => {
      assert.equal(posix.dirname(path), tlsDir, `${path} is in the tls volume`);
      return copies.find(({ file }) => file === posix.basename(path));
    };
    assert.deepEqual(copyFor(pgbouncerIni.get('client_tls_key_file')!), { file: posix.basename(pgbouncerIni.get('client_tls_key_file')!), ...pgbouncerImageUser() });
    assert.deepEqual(copyFor(postgresConf.get('ssl_key_file')!), { file: posix.basename(postgresConf.get('ssl_key_file')!), ...POSTGRES_IMAGE_USER });
    assert.equal(posix.dirname(pgbouncerIni.get('client_tls_cert_file')!), tlsDir);
    assert.equal(pgbouncerIni.get('client_tls_cert_file'), postgresConf.get('ssl_cert_file'), 'one certificate for both doors');
    assert.equal(service.environment?.TLS_CA_FILE, posix.join(tlsDir, 'ca.crt'), 'the service serves the CA (GET /tls/ca.crt)');
  });

  it('keeps the memory limits within the 1 GB VM, as the header says', () => {
    const limits = Object.entries(compose.services).filter(([, s]) => s.mem_limit).map(([name, s]) => [name, megabytes(s.mem_limit!)] as const);
    for (const name of ['postgres', 'service', 'pgbouncer', 'nginx']) assert.ok(limits.some(([n]) => n === name), `${name} has a mem_limit`);
    const total = limits.reduce((sum, [, mb]) => sum + mb, 0);
    assert.ok(total <= 1024, `the limits add up to ${total} MB`);
    const stated = /Memory limits add up to (\d+) MB/.exec(readFileSync(join(REPO_ROOT, 'docker-compose.yml'), 'utf8'));
    assert.equal(Number(stated?.[1]), total, "the compose file's header states the sum");
    // PgBouncer's file descriptors: one per client (max_client_conn) and one per server connection (Postgres's max_connections at most).
    const nofile = pgbouncer.ulimits?.nofile;
    const soft = typeof nofile === 'object' ? nofile.soft : nofile;
    assert.ok((soft ?? 0) >= Number(pgbouncerIni.get('max_client_conn')) + Number(postgresConf.get('max_connections')), `nofile ${soft}`);
  });

  it("builds PgBouncer from Debian's package, the very one the local stack and the tests run (1.18 on bookworm)", () => {
    const base = /^FROM debian:([a-z]+)(?:-slim)?$/m.exec(PGBOUNCER_DOCKERFILE);
    assert.ok(base, 'the image is Debian');
    const codename = base[1]!;
    assert.match(PGBOUNCER_DOCKERFILE, /apt-get install [^\n]*\bpgbouncer\b/, "Debian's pgbouncer package, not a build of our own");
    assert.deepEqual(pgbouncerImageUser(), { uid: 1001, gid: 1001 }, 'a user of its own (PgBouncer refuses root)');
    // What the base ships, as apt on this machine knows it when it is the same Debian release; else the release's
    // known version (Debian 12 "bookworm": 1.18.0).
    const shipped: Record<string, string> = { bookworm: '1.18' };
    const osRelease = existsSync('/etc/os-release') ? readFileSync('/etc/os-release', 'utf8') : '';
    const sameRelease = new RegExp(`^VERSION_CODENAME=${codename}$`, 'm').test(osRelease);
    const madison = sameRelease ? spawnSync('apt-cache', ['madison', 'pgbouncer'], { encoding: 'utf8' }) : undefined;
    const fromApt = (madison?.stdout ?? '').split('\n').filter((line) => line.includes(` ${codename}`)).map((line) => /\|\s*(\d+\.\d+)\./.exec(line)?.[1]).find(Boolean);
    const expected = fromApt ?? shipped[codename];
    assert.ok(expected, `the pgbouncer version Debian ${codename} ships is known`);
    const local = spawnSync(findPgBouncer(), ['--version'], { encoding: 'utf8' });
    assert.equal(local.status, 0, local.stderr);
    assert.equal(/^PgBouncer (\d+\.\d+)\./m.exec(local.stdout)?.[1], expected, `the local stack's ${findPgBouncer()}: ${local.stdout.split('\n')[0]}`);
    assert.equal(pgbouncer.image?.split(':')[1], expected, "the image's tag says the version");
    if (sameRelease) {
      const owner = spawnSync('dpkg', ['-S', findPgBouncer()], { encoding: 'utf8' });
      assert.match(owner.stdout, /^pgbouncer: /, "the local stack's pgbouncer is Debian's package too");
    }
  });
});

/** pgbackrest.conf's `key=value` settings (the first of each: the stanza's pg1-* are in its section only). */
const pgbackrestConf = new Map<string, string>();
for (const line of readFileSync(join(REPO_ROOT, 'pgbackrest.conf'), 'utf8').split('\n')) {
  const match = /^([a-z0-9-]+)=(.*)$/.exec(line);
  if (match && !pgbackrestConf.has(match[1]!)) pgbackrestConf.set(match[1]!, match[2]!);
}

describe('docker-compose.yml: WAL archiving and cluster backups (pgBackRest)', () => {
  it("runs Postgres from an image of our own: postgres:15-bookworm with Debian's pgBackRest, the very version the local stack runs", () => {
    assert.equal(postgres.build, './postgres-image');
    assert.equal(postgres.image, 'pg-provisioner-postgres:15');
    const dockerfile = readFileSync(join(REPO_ROOT, 'postgres-image', 'Dockerfile'), 'utf8');
    assert.match(dockerfile, /^FROM postgres:15-bookworm$/m);
    const pinned = /apt-get install [^\n]*\bpgbackrest=(\d+\.\d+)-\d+\b/.exec(dockerfile)?.[1];
    assert.ok(pinned, 'pgBackRest is pinned to a Debian version (the image also lists PostgreSQL\'s apt repository)');
    const local = spawnSync('pgbackrest', ['version'], { encoding: 'utf8' });
    assert.equal(local.status, 0, local.stderr);
    assert.equal(/^pgBackRest (\d+\.\d+)/.exec(local.stdout)?.[1], pinned, `the local stack's pgbackrest: ${local.stdout.trim()}`);
  });

  it("gives Postgres the repo's pgbackrest.conf and the pgpass file setup writes, through the environment archive_command inherits", () => {
    const env = postgres.environment!;
    assert.deepEqual(mountAt(postgres, env.PGBACKREST_CONFIG!), ['./pgbackrest.conf', env.PGBACKREST_CONFIG, 'ro']);
    assert.equal(env.PGPASSFILE, setup.environment!.PGBACKREST_PGPASS_FILE, 'the file setup writes');
    const secretsIn = (of: ComposeService) => mounts(of).find(([source]) => source === 'secrets')?.[1];
    assert.equal(dirname(env.PGPASSFILE!), secretsIn(postgres), 'in the secrets volume, as Postgres mounts it');
    assert.equal(dirname(setup.environment!.PGBACKREST_PGPASS_FILE!), secretsIn(setup), 'and as setup mounts it');
    assert.deepEqual({ uid: Number(setup.environment!.PG_UID), gid: Number(setup.environment!.PG_GID) }, POSTGRES_IMAGE_USER, "for the postgres image's user");
    // The stanza is postgres.conf's, and pgbackrest.conf points at this container's data directory and socket.
    assert.equal(postgresConf.get('archive_mode'), 'on');
    const stanza = /--stanza=([A-Za-z0-9_-]+) archive-push %p$/.exec(postgresConf.get('archive_command') ?? '')?.[1];
    assert.match(readFileSync(join(REPO_ROOT, 'pgbackrest.conf'), 'utf8'), new RegExp(`^\\[${stanza}\\]$`, 'm'));
    assert.equal(pgbackrestConf.get('pg1-path'), mounts(postgres).find(([source]) => source === 'postgres_data')?.[1]);
    assert.equal(pgbackrestConf.get('pg1-socket-path'), mounts(postgres).find(([source]) => source === 'postgres_socket')?.[1]);
    assert.equal(pgbackrestConf.get('pg1-port'), postgresConf.get('port'));
    assert.deepEqual(mountAt(postgres, '/runbooks'), ['./runbooks', '/runbooks', 'ro']);
  });

  it('keeps the repository in a volume of its own: Postgres writes it, setup prepares it, the service reads it (group 999)', () => {
    const repo = pgbackrestConf.get('repo1-path')!;
    assert.ok('pgbackrest_repo' in compose.volumes);
    assert.deepEqual(mountAt(postgres, repo), ['pgbackrest_repo', repo, 'rw']);
    assert.deepEqual(mountAt(setup, setup.environment!.PGBACKREST_REPO!), ['pgbackrest_repo', setup.environment!.PGBACKREST_REPO, 'rw']);
    const servicePath = service.environment!.PGBACKREST_REPO_PATH!;
    assert.deepEqual(mountAt(service, servicePath), ['pgbackrest_repo', servicePath, 'ro'], 'read-only in the service');
    assert.ok((service.group_add ?? []).map(String).includes(String(POSTGRES_IMAGE_USER.gid)), "the service is in Postgres's group, which pgBackRest's files (0640) let read");
    assert.equal(service.environment!.PGBACKREST_STANZA, undefined, 'the stanza is the default one, the one postgres.conf names');
  });
});

describe('init/setup/setup.sh, run for real', () => {
  it('makes a password on the first run and keeps it; takes POSTGRES_PASSWORD when set; chowns the backup directory', () => {
    const dir = tempDir();
    try {
      const paths = setupPaths(dir);
      const { uid, gid } = setupIds().service;

      const first = runSetup(paths);
      assert.equal(first.status, 0, first.stderr);
      const made = readAsPostgresImage(paths.passwordFile);
      assert.match(made, /^[0-9a-f]{48}$/, 'a random password, 24 bytes as hex (as the local stack makes it)');
      assert.doesNotMatch(first.stdout + first.stderr, new RegExp(made), 'never printed');
      const file = statSync(paths.passwordFile);
      assert.equal(file.mode & 0o777, 0o440);
      assert.equal(file.uid, uid, "readable by the service's user");
      assert.equal(file.gid, 0, "and by root's group (Postgres's entrypoint reads it as root)");
      const backups = statSync(paths.backupDir);
      assert.equal(backups.uid, uid);
      assert.equal(backups.gid, gid);

      const again = runSetup(paths);
      assert.equal(again.status, 0, again.stderr);
      assert.equal(readAsPostgresImage(paths.passwordFile), made, 'every later `up` keeps the password Postgres was made with');
      assert.deepEqual(readdirSync(dirname(paths.passwordFile)).sort(), ['pgbackrest.pgpass', 'postgres-password'], 'no temporary file left behind');

      const chosen = runSetup(paths, { password: 'an operator-chosen $password "with" spaces' });
      assert.equal(chosen.status, 0, chosen.stderr);
      assert.equal(readAsPostgresImage(paths.passwordFile), 'an operator-chosen $password "with" spaces');
      assert.doesNotMatch(chosen.stdout + chosen.stderr, /operator-chosen/);

      // pgBackRest's pgpass file follows the password, escaped as libpq wants; Postgres's uid only; never printed.
      assert.equal(readFileSync(paths.pgpassFile, 'utf8'), '*:*:*:postgres:an operator-chosen $password "with" spaces\n');
      const tricky = runSetup(paths, { password: 'a:b\\c' });
      assert.equal(tricky.status, 0, tricky.stderr);
      assert.equal(readFileSync(paths.pgpassFile, 'utf8'), '*:*:*:postgres:a\\:b\\\\c\n');
      const pgpass = statSync(paths.pgpassFile);
      assert.deepEqual({ uid: pgpass.uid, gid: pgpass.gid, mode: pgpass.mode & 0o777 }, { ...setupIds().postgres, mode: 0o600 });
      assert.doesNotMatch(tricky.stdout + tricky.stderr, /a:b/);
      const repo = statSync(paths.repoDir);
      assert.deepEqual({ uid: repo.uid, gid: repo.gid, mode: repo.mode & 0o7777 }, { ...setupIds().postgres, mode: 0o750 }, "pgBackRest's repository is Postgres's");
      assert.deepEqual(readdirSync(dirname(paths.passwordFile)).sort(), ['pgbackrest.pgpass', 'postgres-password'], 'no temporary file left behind');

      const twoLines = runSetup(paths, { password: 'one\ntwo' });
      assert.notEqual(twoLines.status, 0, 'a password initdb would cut at its first line is refused');
      assert.match(twoLines.stderr, /one line/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("makes the doors' certificate once and keeps it; each server's copy of the key is its own, 0600; new hosts get a new certificate from the same CA", () => {
    const dir = tempDir();
    try {
      const paths = setupPaths(dir);
      const first = runSetup(paths);
      assert.equal(first.status, 0, first.stderr);
      assert.match(first.stdout, /certificate authority made/);
      const file = (name: string) => join(paths.tlsDir, name);
      const ca = new X509Certificate(readFileSync(file('ca.crt')));
      const server = new X509Certificate(readFileSync(file('server.crt')));
      assert.equal(ca.ca, true);
      assert.ok(server.checkIssued(ca) && server.verify(ca.publicKey), 'signed by the CA apps are given (GET /tls/ca.crt)');
      assert.ok(server.checkPrivateKey(createPrivateKey(readFileSync(file('server.key')))), 'server.key is the certificate\'s');
      const hosts = composeValue(setup.environment!.TLS_HOSTS!).split(',');
      for (const host of hosts) assert.ok(/^[\d.]+$/.test(host) ? server.checkIP(host) : server.checkHost(host), `the certificate names ${host} (sslmode=verify-full)`);
      assert.doesNotMatch(first.stdout + first.stderr, /PRIVATE KEY/, 'no key is printed');

      /** Each server's copy: the server key, 0600, owned as KEY_COPIES says (Postgres refuses a key others can read). */
      const checkKeyCopies = () => {
        const key = readFileSync(file('server.key'), 'utf8');
        for (const { file: name, uid, gid } of setupIds().keys) {
          const copy = statSync(file(name));
          assert.deepEqual({ uid: copy.uid, gid: copy.gid, mode: copy.mode & 0o777 }, { uid, gid, mode: 0o600 }, name);
          assert.equal(readFileSync(file(name), 'utf8'), key, `${name} is the server key`);
        }
        for (const secret of ['ca.key', 'server.key']) assert.equal(statSync(file(secret)).mode & 0o077, 0, `${secret} is its owner's only`);
        for (const certificate of ['ca.crt', 'server.crt']) assert.equal(statSync(file(certificate)).mode & 0o777, 0o644, `${certificate} is readable by the servers' users`);
      };
      checkKeyCopies();

      // Every later `up`: the same certificate (apps keep trusting it), and the copies made again.
      const before = { ca: readFileSync(file('ca.crt'), 'utf8'), server: readFileSync(file('server.crt'), 'utf8') };
      const again = runSetup(paths);
      assert.equal(again.status, 0, again.stderr);
      assert.match(again.stdout, /certificate kept/);
      assert.deepEqual({ ca: readFileSync(file('ca.crt'), 'utf8'), server: readFileSync(file('server.crt'), 'utf8') }, before);
      checkKeyCopies();
      assert.deepEqual(readdirSync(paths.tlsDir).filter((name) => /\.new$|\.csr$|\.ext$|\.srl$/.test(name)), [], 'no temporary file left behind');

      // TLS_EXTRA_HOSTS set in .env: a new server certificate that names it, from the same CA.
      const moved = runSetup(paths, { given: { TLS_EXTRA_HOSTS: 'db.example.com' } });
      assert.equal(moved.status, 0, moved.stderr);
      assert.equal(readFileSync(file('ca.crt'), 'utf8'), before.ca, 'the CA apps have is kept');
      const remade = new X509Certificate(readFileSync(file('server.crt')));
      assert.notEqual(remade.fingerprint256, server.fingerprint256);
      assert.ok(remade.checkHost('db.example.com') && remade.checkIssued(ca));
      checkKeyCopies();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("gives the auth_file's directory to the service, for PgBouncer's group to read (2750, setgid), and PgBouncer its socket's", () => {
    const dir = tempDir();
    try {
      const paths = setupPaths(dir);
      const result = runSetup(paths);
      assert.equal(result.status, 0, result.stderr);
      const ids = setupIds();
      const expected = { uid: ids.service.uid, gid: ids.poolerGid, mode: 0o2750 };
      const authDir = () => {
        const stat = statSync(paths.authDir);
        return { uid: stat.uid, gid: stat.gid, mode: stat.mode & 0o7777 };
      };
      assert.deepEqual(authDir(), expected);
      // Every later `up` finds it given away already (and the service's file in it): the same owners and mode after.
      writeFileSync(join(paths.authDir, 'userlist.txt'), '"app_kept_user" "SCRAM-SHA-256$4096:x"\n', { mode: 0o640 });
      const again = runSetup(paths);
      assert.equal(again.status, 0, again.stderr);
      assert.deepEqual(authDir(), expected, 'and again at every `up`');
      assert.match(readFileSync(join(paths.authDir, 'userlist.txt'), 'utf8'), /app_kept_user/, "the service's file is left as it is");
      // PgBouncer's socket directory: PgBouncer's own (the service, which mounts it first, would leave it root's).
      const socket = statSync(paths.socketDir);
      assert.deepEqual({ uid: socket.uid, gid: socket.gid, mode: socket.mode & 0o7777 }, { uid: ids.poolerUid, gid: ids.poolerGid, mode: 0o755 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('needs each capability compose grants it: without any one of them it fails, or leaves its work undone', (t) => {
    // Only root runs it with a chosen set of capabilities (.ci/run and the test machines run as root); as another
    // user it ran above with none, its ids being its own.
    if (!isRoot) t.diagnostic('not root: the capabilities setup.sh needs are not checked here');
    const granted = setup.cap_add ?? [];
    for (const missing of isRoot ? granted : []) {
      const dir = tempDir();
      try {
        const paths = setupPaths(dir);
        // Twice, as at a first `up` and every later one: what is already given away is what a capability may be needed for.
        const results = [0, 1].map(() => runSetup(paths, { capabilities: granted.filter((cap) => cap !== missing) }));
        const failed = results.some((result) => result.status !== 0 && /Operation not permitted/.test(result.stderr));
        // FSETID is the one whose lack is silent: a directory's setgid bit, cleared instead of an error.
        const undone = (statSync(paths.authDir).mode & 0o7777) !== 0o2750;
        assert.ok(failed || undone, `setup.sh did all its work without ${missing}: compose need not grant it`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  });
});

describe("the service image's entrypoint, run for real", () => {
  const showEnv = ['node', '-e', 'process.stdout.write(JSON.stringify({ password: process.env.POSTGRES_PASSWORD ?? null, file: process.env.POSTGRES_PASSWORD_FILE ?? null }))'];
  const run = (env: Record<string, string>) =>
    spawnSync(imageCommand(showEnv)[0]!, imageCommand(showEnv).slice(1), { encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env } });

  it('exports the file as POSTGRES_PASSWORD, read exactly as the postgres image reads it, and runs the command', () => {
    const dir = tempDir();
    try {
      const file = join(dir, 'postgres-password');
      writeFileSync(file, '  $pass "word" with spaces\n\n');
      const result = run({ POSTGRES_PASSWORD_FILE: file });
      assert.equal(result.status, 0, result.stderr);
      assert.deepEqual(JSON.parse(result.stdout), { password: readAsPostgresImage(file), file: null });
      assert.equal(readAsPostgresImage(file), '  $pass "word" with spaces');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('changes nothing without POSTGRES_PASSWORD_FILE (the local stack passes POSTGRES_PASSWORD itself)', () => {
    const result = run({ POSTGRES_PASSWORD: 'given' });
    assert.equal(result.status, 0, result.stderr);
    assert.deepEqual(JSON.parse(result.stdout), { password: 'given', file: null });
  });

  it('stops with a message naming the problem when the file is missing or empty, or both settings are given', () => {
    const dir = tempDir();
    try {
      const empty = join(dir, 'empty');
      writeFileSync(empty, '\n');
      for (const [env, message] of [
        [{ POSTGRES_PASSWORD_FILE: join(dir, 'missing') }, /cannot read POSTGRES_PASSWORD_FILE/],
        [{ POSTGRES_PASSWORD_FILE: empty }, /is empty/],
        [{ POSTGRES_PASSWORD_FILE: empty, POSTGRES_PASSWORD: 'x' }, /exclusive/],
      ] as const) {
        const result = run(env);
        assert.notEqual(result.status, 0, JSON.stringify(env));
        assert.equal(result.stdout, '', 'the command did not run');
        assert.match(result.stderr, message);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a fresh start end to end, as compose runs it (without Docker)', () => {
  it("setup's password initialises Postgres; the service, started through its entrypoint as its own uid, provisions, keeps the auth_file and backs up in setup's directories, and serves setup's CA", { timeout: 120_000 }, async (test) => {
    const dir = tempDir();
    const paths = setupPaths(dir);
    const prepared = runSetup(paths);
    assert.equal(prepared.status, 0, prepared.stderr);

    // Postgres's data directory made with the password as the postgres image reads POSTGRES_PASSWORD_FILE.
    const t = await startTestStack({ postgresPassword: readAsPostgresImage(paths.passwordFile) });
    const lines: string[] = [];
    let child: ReturnType<typeof spawn> | undefined;
    try {
      await t.stack.stopService();
      const env: Record<string, string> = {
        ...t.stack.serviceEnvironment(),
        PATH: `${dirname(process.execPath)}:${process.env.PATH ?? '/usr/bin:/bin'}`,
        LOG_PRETTY: 'false',
        BACKUP_DIR: paths.backupDir,
        POSTGRES_PASSWORD_FILE: paths.passwordFile,
        // The auth_file in the directory setup prepared, and setup's certificate (the stack's PgBouncer keeps reading
        // its own: what is checked here is that the service, as its own uid, can keep the file PgBouncer's group reads).
        POOLER_AUTH_FILE: join(paths.authDir, posix.basename(service.environment!.POOLER_AUTH_FILE!)),
        TLS_CA_FILE: join(paths.tlsDir, posix.basename(service.environment!.TLS_CA_FILE!)),
      };
      delete env.POSTGRES_PASSWORD; // compose gives the service only the file
      const [command, ...args] = imageCommand();
      // As the image's user when this machine lets that uid reach the checkout and node (not under /root).
      const imageUser = { uid: Number(setup.environment!.SERVICE_UID), gid: Number(setup.environment!.SERVICE_GID) };
      const reachable = (path: string, flag: string) => spawnSync('test', [flag, path], imageUser).status === 0;
      const asImageUser = isRoot && reachable(join(SERVICE_DIR, 'dist', 'server.js'), '-r') && reachable(process.execPath, '-x');
      if (isRoot && !asImageUser) test.diagnostic(`uid ${imageUser.uid} cannot reach ${SERVICE_DIR} or node: the service runs as root here, so the backup directory's ownership is checked only by setup's own test`);
      const user = asImageUser ? imageUser : {};
      child = spawn(command!, args, { cwd: SERVICE_DIR, env, stdio: ['ignore', 'pipe', 'pipe'], ...user });
      for (const stream of [child.stdout!, child.stderr!]) createInterface({ input: stream }).on('line', (line) => lines.push(line));

      const keyLine = () => lines.map(adminKeyInLogLine).find(Boolean);
      const running = child;
      const health = await eventually(
        async () => (running.exitCode !== null ? undefined : await t.get('/health').catch(() => undefined)),
        (r) => running.exitCode !== null || (r?.status === 200 && keyLine() !== undefined),
        30_000,
      );
      assert.equal(child.exitCode, null, `the service exited:\n${lines.join('\n')}`);
      assert.equal(health?.status, 200, `the service through nginx: ${health?.text}\n${lines.join('\n')}`);
      const adminKey = keyLine()!;

      const made = await t.post('/provision', { app_name: 'composed', admin_key: adminKey });
      assert.equal(made.status, 201, made.text);
      const backup = await request(`${t.stack.httpUrl}/apps/composed/backups`, { method: 'POST', headers: { authorization: `Bearer ${adminKey}` } });
      assert.equal(backup.status, 201, `${backup.text}\n${lines.slice(-5).join('\n')}`);
      const dump = join(paths.backupDir, String(backup.body.file));
      assert.ok(existsSync(dump), 'the dump is in the directory setup prepared');
      if (asImageUser) assert.equal(statSync(dump).uid, imageUser.uid, "written by the service's own uid, no chown by hand");

      // The auth_file, written before the service answered: the new app's login in it, its group PgBouncer's
      // (the directory is setgid), 0640; PgBouncer's uid reads it, and nobody else.
      const authFile = env.POOLER_AUTH_FILE!;
      assert.match(readFileSync(authFile, 'utf8'), /^"app_composed_user" "SCRAM-SHA-256\$4096:/m);
      const kept = statSync(authFile);
      assert.equal(kept.mode & 0o777, 0o640);
      assert.equal(kept.gid, setupIds().poolerGid, "PgBouncer's group, from the directory");
      if (asImageUser) assert.equal(kept.uid, imageUser.uid);
      if (isRoot) {
        const readAs = (ids: { uid: number; gid: number }) => spawnSync('cat', [authFile], { ...ids, encoding: 'utf8' }).status === 0;
        assert.equal(readAs(pgbouncerImageUser()), true, "PgBouncer's user reads it");
        assert.equal(readAs({ uid: 4242, gid: 4242 }), false, 'another user does not');
      }
      assert.ok(!readFileSync(authFile, 'utf8').includes(new URL(String(made.body.connection_string)).password), 'a verifier, never the password');

      // setup's CA, through nginx: what apps are told to check the doors with.
      const ca = await t.get('/tls/ca.crt');
      assert.equal(ca.status, 200);
      assert.equal(ca.text, readFileSync(join(paths.tlsDir, 'ca.crt'), 'utf8'));
    } finally {
      if (child && child.exitCode === null && child.signalCode === null) {
        const exited = once(child, 'exit');
        child.kill('SIGTERM');
        await exited;
      }
      await t.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
