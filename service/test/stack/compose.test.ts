// `docker compose up -d` alone works on a fresh clone: nothing to set or chown first. There is no Docker engine
// here, so: the compose file is parsed and its wiring checked (no required variable, the password file shared by
// setup, Postgres and the service, ./backups given to the service's user); `docker-compose config -q` runs without
// POSTGRES_PASSWORD; and the two scripts the containers run are run for real: init/setup/setup.sh with only the
// capabilities compose grants it, and the service image's entrypoint exactly as its ENTRYPOINT and CMD say,
// against a local stack whose Postgres was initialised with the password read as the postgres image reads it.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { adminKeyInLogLine } from '../../src/shared/secrets.js';
import { REPO_ROOT, SERVICE_DIR } from '../../scripts/lib/local-stack.js';
import { eventually } from '../helpers/conditions.js';
import { request } from '../helpers/service-client.js';
import { startTestStack } from '../helpers/stack.js';

interface ComposeService {
  image?: string;
  entrypoint?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  depends_on?: Record<string, { condition: string }>;
  cap_drop?: string[];
  cap_add?: string[];
  security_opt?: string[];
  restart?: string;
}

const COMPOSE_FILES = ['docker-compose.yml', 'docker-compose.host-postgres.yml'];
const compose = parseYaml(readFileSync(join(REPO_ROOT, 'docker-compose.yml'), 'utf8')) as {
  services: Record<string, ComposeService>;
  volumes: Record<string, unknown>;
};
const { setup, postgres, service } = compose.services as Record<'setup' | 'postgres' | 'service', ComposeService>;

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

/** Runs init/setup/setup.sh as compose's setup container would: its environment, and (as root) only its capabilities. */
function runSetup(paths: { passwordFile: string; backupDir: string }, password?: string): SpawnSyncReturns<string> {
  const script = join(REPO_ROOT, 'init', 'setup', 'setup.sh');
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    PASSWORD_FILE: paths.passwordFile,
    BACKUP_DIR: paths.backupDir,
    SERVICE_UID: isRoot ? setup.environment!.SERVICE_UID! : String(process.getuid?.()),
    SERVICE_GID: isRoot ? setup.environment!.SERVICE_GID! : String(process.getgid?.()),
    ...(password !== undefined ? { POSTGRES_PASSWORD: password } : {}),
  };
  const capabilities = (setup.cap_add ?? []).map((cap) => `+${cap.toLowerCase()}`).join(',');
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

  it('passes `docker-compose config -q` with no POSTGRES_PASSWORD anywhere in the environment', (t) => {
    if (spawnSync('docker-compose', ['version'], { encoding: 'utf8' }).status !== 0) {
      t.skip('docker-compose is not installed (.ci/run installs it)');
      return;
    }
    const env = { ...process.env };
    delete env.POSTGRES_PASSWORD;
    for (const files of [['docker-compose.yml'], COMPOSE_FILES]) {
      const result = spawnSync('docker-compose', [...files.flatMap((f) => ['-f', f]), 'config', '-q'], { cwd: REPO_ROOT, env, encoding: 'utf8' });
      assert.equal(result.status, 0, `docker-compose ${files.join(' + ')} config -q:\n${result.stderr}`);
    }
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
    assert.equal(setup.image, postgres.image, 'setup runs in the image Postgres runs (nothing more to pull)');
    assert.equal(setup.restart, 'no');
  });

  it('runs init/setup/setup.sh in setup, with CHOWN as its only capability', () => {
    const [entry, script] = setup.entrypoint ?? [];
    assert.equal(entry, 'sh');
    assert.ok(script, 'setup runs a script');
    const mount = mounts(setup).find(([, target]) => script.startsWith(`${target}/`));
    assert.ok(mount, `${script} is mounted into setup`);
    assert.equal(mount[2], 'ro');
    assert.equal(join(REPO_ROOT, mount[0], script.slice(mount[1].length)), join(REPO_ROOT, 'init', 'setup', 'setup.sh'));
    assert.deepEqual(setup.cap_drop, ['ALL']);
    assert.deepEqual(setup.cap_add, ['CHOWN']);
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

describe('init/setup/setup.sh, run for real', () => {
  it('makes a password on the first run and keeps it; takes POSTGRES_PASSWORD when set; chowns the backup directory', () => {
    const dir = tempDir();
    try {
      const paths = { passwordFile: join(dir, 'secrets', 'postgres-password'), backupDir: join(dir, 'backups') };
      mkdirSync(dirname(paths.passwordFile));
      mkdirSync(paths.backupDir); // as a fresh clone has it: the cloning user's (here: root's)
      const uid = isRoot ? Number(setup.environment!.SERVICE_UID) : process.getuid!();
      const gid = isRoot ? Number(setup.environment!.SERVICE_GID) : process.getgid!();

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
      assert.deepEqual(readdirSync(dirname(paths.passwordFile)), ['postgres-password'], 'no temporary file left behind');

      const chosen = runSetup(paths, 'an operator-chosen $password "with" spaces');
      assert.equal(chosen.status, 0, chosen.stderr);
      assert.equal(readAsPostgresImage(paths.passwordFile), 'an operator-chosen $password "with" spaces');
      assert.doesNotMatch(chosen.stdout + chosen.stderr, /operator-chosen/);

      const twoLines = runSetup(paths, 'one\ntwo');
      assert.notEqual(twoLines.status, 0, 'a password initdb would cut at its first line is refused');
      assert.match(twoLines.stderr, /one line/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
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
  it("setup's password initialises Postgres; the service, started through its entrypoint as its own uid, provisions and backs up into setup's directory", { timeout: 120_000 }, async (test) => {
    const dir = tempDir();
    const paths = { passwordFile: join(dir, 'secrets', 'postgres-password'), backupDir: join(dir, 'backups') };
    mkdirSync(dirname(paths.passwordFile));
    mkdirSync(paths.backupDir, { mode: 0o755 });
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
