// The local stack: the same three parts as docker-compose.yml, on this machine, without Docker.
// Postgres 15 (the machine's binaries) with the repo's postgres.conf, pg_hba.conf and init/; the built service
// started the way the Dockerfile starts it (node dist/server.js); nginx with the repo's nginx.conf, where only
// the upstream address, the listen address and the file paths differ. Used by `npm run stack` and the tests.
// Each part runs in a session of its own (a Ctrl-C at the terminal reaches only the stack, which stops the parts
// in order) and is tied to this process by the kernel (setpriv --pdeathsig): if this process dies, however it
// dies, the parts are told to stop. $STACK_DIR/stack.lock (scripts/stack-lock.ts) keeps one stack per directory.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { chmodSync, chownSync, closeSync, copyFileSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, type WriteStream } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { once } from 'node:events';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { adminKeyInLogLine } from '../src/shared/secrets.js';
import { portProblem, StackLock, type StackPart } from './stack-lock.js';

export const SERVICE_DIR = resolve(fileURLToPath(import.meta.url), '../..');
export const REPO_ROOT = resolve(SERVICE_DIR, '..');

export interface StackSettings {
  stackDir: string;
  httpPort: number;
  pgPort: number;
  servicePort: number;
  /** Empty: made on first start and kept in $STACK_DIR/postgres-password. */
  postgresPassword: string;
  pgBinDir: string;
  /** Unprivileged OS user that runs Postgres when the stack runs as root (Postgres refuses root). */
  pgOsUser: string;
  /** Extra environment for the service (any setting of src/shared/config.ts). */
  serviceEnv: Record<string, string>;
  /** Where the service's output goes: each line, as written (it is also kept in $STACK_DIR/logs/service.log). */
  onServiceLine: (line: string) => void;
  /** What the stack is doing (initdb, init/ scripts, each part starting and stopping), for a person watching. */
  onProgress?: (message: string) => void;
  /**
   * Called when a part exits without having been asked to stop (it crashed, or someone killed it): the
   * command-line stack then stops the others and exits non-zero, so a supervisor (systemd) sees the failure.
   */
  onPartExit?: (part: StackPart, how: string) => void;
  /** Benchmarks only: Postgres settings on top of postgres.conf (e.g. max_connections for a 32-client floor). */
  extraPostgresSettings?: Record<string, string>;
  /** Postgres's data directory, if not $STACK_DIR/pgdata (the disk-full test puts it on a small filesystem of its own). */
  pgDataDir?: string;
  /** DISK_RESERVE_MB for init/00-disk-reserve.sh; default 256, as in docker-compose.yml. */
  diskReserveMb?: number;
}

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/**
 * Settings for a throwaway stack (tests, benchmark, soak): a fresh directory under the system's temporary
 * directory, reachable by the unprivileged Postgres user, and free ports. The caller removes the directory.
 */
export async function throwawayStackSettings(name: string, settings: Pick<StackSettings, 'postgresPassword' | 'serviceEnv' | 'onServiceLine'> & Partial<StackSettings>): Promise<StackSettings> {
  const stackDir = mkdtempSync(join(tmpdir(), `pgprov-${name}-`));
  chmodSync(stackDir, 0o755);
  return {
    stackDir,
    httpPort: await freePort(),
    pgPort: await freePort(),
    servicePort: await freePort(),
    pgBinDir: process.env.PG_BIN_DIR || '/usr/lib/postgresql/15/bin',
    pgOsUser: process.env.STACK_PG_OS_USER || 'postgres',
    ...settings,
  };
}

export class StackError extends Error {
  override name = 'StackError';
}

interface OsUser {
  uid: number;
  gid: number;
}


function osUser(name: string): OsUser {
  const id = (flag: string) => spawnSync('id', [flag, name], { encoding: 'utf8' });
  const uid = id('-u');
  const gid = id('-g');
  if (uid.status !== 0 || gid.status !== 0) {
    throw new StackError(`Postgres refuses to run as root and the OS user '${name}' does not exist: create it (useradd --system ${name}) or set STACK_PG_OS_USER`);
  }
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

function findProgram(name: string, packageName: string): string {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/usr/local/sbin', '/sbin', '/usr/bin', '/bin'])) {
    const candidate = join(dir, name);
    if (dir && existsSync(candidate)) return candidate;
  }
  throw new StackError(`${name} not found: install it (Debian/Ubuntu: apt-get install -y ${packageName})`);
}

const findNginx = () => findProgram('nginx', 'nginx');

function checkPostgresBinaries(binDir: string): void {
  const postgres = join(binDir, 'postgres');
  if (!existsSync(postgres) || !existsSync(join(binDir, 'initdb'))) {
    throw new StackError(`PostgreSQL 15 server binaries not found in ${binDir}: install them (Debian/Ubuntu: apt-get install -y postgresql-15) or set PG_BIN_DIR`);
  }
  const version = spawnSync(postgres, ['--version'], { encoding: 'utf8' }).stdout ?? '';
  if (!/\(PostgreSQL\) 15\./.test(version)) {
    throw new StackError(`${postgres} is not PostgreSQL 15 (${version.trim() || 'no version'}): set PG_BIN_DIR to a PostgreSQL 15 bin directory`);
  }
}

/** Waits for `check` to resolve, retrying until `timeoutMs`; fails early if `child` exits. `log` is where it writes. */
async function waitFor(what: string, check: () => Promise<boolean>, child: ChildProcess, log: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new StackError(`${what} exited (code ${child.exitCode ?? child.signalCode}) before it was ready; see ${log}`);
    }
    if (await check().catch(() => false)) return;
    await sleep(100);
  }
  throw new StackError(`${what} was not ready after ${timeoutMs / 1000} s; see ${log}`);
}

/** Parts asked to stop: their exit is expected (see StackSettings.onPartExit). */
const stopRequested = new WeakSet<ChildProcess>();

/** Stops `child` with `signal` (SIGKILL after `timeoutMs`); false if it was not running. */
async function stopChild(child: ChildProcess | undefined, signal: NodeJS.Signals, timeoutMs = 15_000): Promise<boolean> {
  if (child) stopRequested.add(child);
  if (!child || child.exitCode !== null || child.signalCode !== null) return false;
  const exited = once(child, 'exit');
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await exited;
  clearTimeout(timer);
  return true;
}

export class LocalStack {
  readonly settings: StackSettings;
  readonly paths;
  adminKey = '';
  private postgres?: ChildProcess;
  private service?: ChildProcess;
  private nginx?: ChildProcess;
  private readonly pgUser?: OsUser;
  private readonly logStreams: WriteStream[] = [];
  private lock?: StackLock;

  constructor(settings: StackSettings) {
    this.settings = settings;
    const dir = resolve(settings.stackDir);
    this.paths = {
      dir,
      pgData: settings.pgDataDir ? resolve(settings.pgDataDir) : join(dir, 'pgdata'),
      pgConf: join(dir, 'pgconf'),
      socketDir: join(dir, 'run'),
      logs: join(dir, 'logs'),
      nginx: join(dir, 'nginx'),
      backups: join(dir, 'backups'),
      passwordFile: join(dir, 'postgres-password'),
    };
    if (process.getuid?.() === 0) this.pgUser = osUser(settings.pgOsUser);
  }

  /** The running service's process id (benchmarks read its memory). */
  get servicePid(): number | undefined {
    return this.service?.pid;
  }

  /** The running postmaster's process id. */
  get postgresPid(): number | undefined {
    return this.postgres?.pid;
  }

  /** Every process of the running Postgres: the postmaster and its children (for SIGSTOP, memory). */
  postgresProcessIds(): number[] {
    const postmaster = this.postgres?.pid;
    if (!postmaster) return [];
    const children = spawnSync('pgrep', ['-P', String(postmaster)], { encoding: 'utf8' }).stdout?.trim().split('\n').filter(Boolean).map(Number) ?? [];
    return [postmaster, ...children];
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.settings.httpPort}`;
  }

  get serviceUrl(): string {
    return `http://127.0.0.1:${this.settings.servicePort}`;
  }

  /** The superuser password: the setting, or the one made when this STACK_DIR was first initialised. */
  get postgresPassword(): string {
    return this.settings.postgresPassword || readFileSync(this.paths.passwordFile, 'utf8').trim();
  }

  /** Superuser connection settings, as the operator's psql would use them (TCP on 127.0.0.1). */
  superuserConnection(database = 'postgres'): pg.ClientConfig {
    return { host: '127.0.0.1', port: this.settings.pgPort, user: 'postgres', password: this.postgresPassword, database };
  }

  /** Starts Postgres, the service and nginx; refuses at once, starting nothing, if STACK_DIR or a port is taken. */
  async start(): Promise<void> {
    checkPostgresBinaries(this.settings.pgBinDir);
    const nginxBin = findNginx();
    this.takeLock();
    try {
      await this.checkPortsFree();
      this.prepareDirectories();
      await this.startPostgres();
      await this.startService();
      await this.startNginx(nginxBin);
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  private takeLock(): void {
    const { dir } = this.paths;
    const { httpPort: http, pgPort: pg, servicePort: service } = this.settings;
    mkdirSync(dir, { recursive: true });
    const lock = StackLock.take(dir, { http, pg, service });
    if (!(lock instanceof StackLock)) {
      throw new StackError(
        `a local stack is already running on STACK_DIR=${dir} (pid ${lock.pid}; nginx on port ${lock.ports.http}, the service on ` +
          `${lock.ports.service}, Postgres on ${lock.ports.pg}): use it, stop it (Ctrl-C where it runs, or kill ${lock.pid}), or choose another STACK_DIR`,
      );
    }
    this.lock = lock;
  }

  private async checkPortsFree(): Promise<void> {
    const ports: Array<[number, string, string]> = [
      [this.settings.httpPort, 'STACK_HTTP_PORT', 'nginx'],
      [this.settings.servicePort, 'STACK_SERVICE_PORT', 'the service'],
      [this.settings.pgPort, 'STACK_PG_PORT', 'Postgres'],
    ];
    const problems: string[] = [];
    for (const [port, setting, part] of ports) {
      const problem = await portProblem(port);
      if (problem) problems.push(`port ${port} (${setting}, for ${part}) is ${problem}`);
    }
    if (problems.length > 0) throw new StackError(`${problems.join('; ')}: stop what holds ${problems.length > 1 ? 'them' : 'it'}, or choose other ports`);
  }

  private progress(message: string): void {
    this.settings.onProgress?.(message);
  }

  async stopNginx(): Promise<void> {
    await stopChild(this.nginx, 'SIGQUIT');
  }

  /** Stops nginx, then the service (which closes its connections), then Postgres (fast); says which were running. */
  async stop(): Promise<void> {
    if (await stopChild(this.nginx, 'SIGQUIT')) this.progress('nginx stopped');
    if (await stopChild(this.service, 'SIGTERM')) this.progress('the service stopped');
    if (await stopChild(this.postgres, 'SIGINT', 30_000)) this.progress('Postgres stopped');
    for (const stream of this.logStreams.splice(0)) stream.end();
    this.lock?.release();
    this.lock = undefined;
  }

  /**
   * Starts a part in a session of its own (detached), through util-linux's setpriv, which asks the kernel to
   * send the part `onOrphaned` when this process dies and then execs it (the part keeps setpriv's pid).
   */
  private spawnPart(part: StackPart, onOrphaned: NodeJS.Signals, command: string, args: string[], options: SpawnOptions): ChildProcess {
    const setpriv = findProgram('setpriv', 'util-linux');
    const child = spawn(setpriv, ['--pdeathsig', onOrphaned, '--', command, ...args], { ...options, detached: true });
    this.lock?.recordPart(part, child.pid);
    child.once('exit', (code, signal) => {
      if (!stopRequested.has(child)) this.settings.onPartExit?.(part, signal ? `killed by ${signal}` : `exit code ${code}`);
    });
    return child;
  }

  private ownForPostgres(path: string): void {
    if (this.pgUser) chownSync(path, this.pgUser.uid, this.pgUser.gid);
  }

  private prepareDirectories(): void {
    const { dir, pgConf, socketDir, logs, nginx, backups } = this.paths;
    mkdirSync(dir, { recursive: true });
    for (const sub of [pgConf, socketDir, logs, backups, join(nginx, 'cache')]) mkdirSync(sub, { recursive: true });
    // Logs and backups hold apps' names and data: their owner's only (the service also keeps its backup files 0600).
    chmodSync(logs, 0o700);
    chmodSync(backups, 0o700);
    this.ownForPostgres(socketDir);
    this.ownForPostgres(logs);
    // The container mounts these files read-only; here Postgres reads copies inside STACK_DIR, so that the
    // unprivileged OS user needs no access to the checkout.
    for (const file of ['postgres.conf', 'pg_hba.conf']) {
      const copy = join(pgConf, file);
      copyFileSync(join(REPO_ROOT, file), copy);
      chmodSync(copy, 0o644);
    }
    if (this.pgUser) {
      const probe = spawnSync('test', ['-w', socketDir, '-a', '-r', join(pgConf, 'postgres.conf')], { uid: this.pgUser.uid, gid: this.pgUser.gid });
      if (probe.status !== 0) {
        throw new StackError(`the OS user '${this.settings.pgOsUser}' cannot reach STACK_DIR=${dir} (a parent directory is not traversable): choose a STACK_DIR such as /tmp/pg-provisioner`);
      }
    }
  }

  /** A log of the stack's, readable by its owner only: logs can name apps, roles and clients. */
  private logFile(name: string): WriteStream {
    const path = join(this.paths.logs, name);
    const stream = createWriteStream(path, { flags: 'a', mode: 0o600 });
    stream.once('open', () => chmodSync(path, 0o600)); // a log made by an older version may be world-readable
    this.logStreams.push(stream);
    return stream;
  }

  private pg(command: string): string {
    return join(this.settings.pgBinDir, command);
  }

  private asPostgresUser() {
    return this.pgUser ? { uid: this.pgUser.uid, gid: this.pgUser.gid } : {};
  }

  private initdb(): void {
    const { pgData, passwordFile, dir } = this.paths;
    this.progress(`first start: making Postgres's data directory ${pgData} (initdb)`);
    let password = this.settings.postgresPassword;
    if (!password) {
      password = spawnSync('openssl', ['rand', '-hex', '24'], { encoding: 'utf8' }).stdout?.trim() || crypto.randomUUID().replaceAll('-', '');
      writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 });
    }
    mkdirSync(pgData, { recursive: true, mode: 0o700 });
    this.ownForPostgres(pgData);
    const pwfile = join(dir, 'initdb-password');
    writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
    this.ownForPostgres(pwfile);
    try {
      const result = spawnSync(
        this.pg('initdb'),
        ['-D', pgData, '--username=postgres', `--pwfile=${pwfile}`, '--auth=scram-sha-256', '--encoding=UTF8', '--locale=C.UTF-8'],
        { ...this.asPostgresUser(), encoding: 'utf8', cwd: dir },
      );
      if (result.status !== 0) throw new StackError(`initdb failed:\n${result.stderr}`);
    } finally {
      rmSync(pwfile, { force: true });
    }
  }

  /**
   * Runs init/ once, in name order, as the postgres image's entrypoint does on an empty data directory:
   * *.sh with PGDATA set, as the Postgres OS user; *.sql through psql as the superuser.
   */
  private runInitScripts(): void {
    const initDir = join(REPO_ROOT, 'init');
    for (const file of readdirSync(initDir).filter((f) => f.endsWith('.sql') || f.endsWith('.sh')).sort()) {
      this.progress(`first start: running init/${file}`);
      const result = file.endsWith('.sh')
        ? spawnSync('sh', [join(initDir, file)], {
            ...this.asPostgresUser(),
            encoding: 'utf8',
            cwd: this.paths.dir,
            env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PGDATA: this.paths.pgData, DISK_RESERVE_MB: String(this.settings.diskReserveMb ?? 256) },
          })
        : spawnSync(
            this.pg('psql'),
            ['-v', 'ON_ERROR_STOP=1', '--no-psqlrc', '-q', '-h', this.paths.socketDir, '-p', String(this.settings.pgPort), '-U', 'postgres', '-d', 'postgres', '-f', join(initDir, file)],
            { encoding: 'utf8', env: { ...process.env, PGPASSWORD: this.postgresPassword } },
          );
      if (result.status !== 0) throw new StackError(`init/${file} failed:\n${result.stderr}`);
    }
  }

  async startPostgres(): Promise<void> {
    const { pgData, pgConf, socketDir } = this.paths;
    const fresh = !existsSync(join(pgData, 'PG_VERSION'));
    if (fresh) {
      rmSync(pgData, { recursive: true, force: true });
      this.initdb();
    }
    const log = this.logFile('postgres.log');
    this.progress(`starting Postgres on 127.0.0.1:${this.settings.pgPort} (log: ${log.path})`);
    this.postgres = this.spawnPart(
      'postgres',
      'SIGINT',
      this.pg('postgres'),
      [
        '-D', pgData,
        '-c', `config_file=${join(pgConf, 'postgres.conf')}`,
        '-c', `hba_file=${join(pgConf, 'pg_hba.conf')}`,
        '-c', 'listen_addresses=127.0.0.1',
        '-c', `port=${this.settings.pgPort}`,
        '-c', `unix_socket_directories=${socketDir}`,
        ...Object.entries(this.settings.extraPostgresSettings ?? {}).flatMap(([name, value]) => ['-c', `${name}=${value}`]),
      ],
      { ...this.asPostgresUser(), stdio: ['ignore', 'pipe', 'pipe'], cwd: this.paths.dir },
    );
    this.postgres.stdout?.pipe(log, { end: false });
    this.postgres.stderr?.pipe(log, { end: false });
    await waitFor('Postgres', () => this.postgresAnswers(), this.postgres, String(log.path));
    if (fresh) {
      try {
        this.runInitScripts();
      } catch (err) {
        // Like the image: a data directory whose init failed is not reused; the next start begins afresh.
        await this.stopPostgres();
        rmSync(pgData, { recursive: true, force: true });
        throw err;
      }
    }
  }

  private async postgresAnswers(): Promise<boolean> {
    const client = new pg.Client({ ...this.superuserConnection(), host: this.paths.socketDir, connectionTimeoutMillis: 1000 });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('SELECT 1');
      return true;
    } finally {
      await client.end().catch(() => {});
    }
  }

  /** Fast shutdown (SIGINT): in-flight transactions are rolled back, nothing committed is lost. */
  async stopPostgres(): Promise<void> {
    await stopChild(this.postgres, 'SIGINT', 30_000);
  }

  serviceEnvironment(): Record<string, string> {
    return {
      NODE_OPTIONS: '--max-old-space-size=96', // as the Dockerfile sets it: the service's heap fits its 160 MB limit
      HOST: '127.0.0.1',
      PORT: String(this.settings.servicePort),
      DATABASE_HOST: this.paths.socketDir,
      DATABASE_PORT: String(this.settings.pgPort),
      POSTGRES_PASSWORD: this.postgresPassword,
      PUBLIC_DB_HOST: '127.0.0.1',
      PUBLIC_DB_PORT: String(this.settings.pgPort),
      BACKUP_DIR: this.paths.backups,
      PG_DUMP_PATH: this.pg('pg_dump'),
      PG_RESTORE_PATH: this.pg('pg_restore'),
      ...this.settings.serviceEnv,
    };
  }

  /**
   * Starts the service; `extraEnv` adds or overrides settings for this start only (tests: CRASH_AT), and
   * `nodeFlags` are given to node before the script (the profile: --cpu-prof, which NODE_OPTIONS refuses).
   */
  async startService(extraEnv: Record<string, string> = {}, nodeFlags: string[] = []): Promise<void> {
    const entry = join(SERVICE_DIR, 'dist', 'server.js');
    if (!existsSync(entry)) throw new StackError(`${entry} is missing: run npm --prefix service run build first`);
    this.adminKey = '';
    const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', ...this.serviceEnvironment(), ...extraEnv };
    const log = this.logFile('service.log');
    this.progress(`starting the service on ${this.serviceUrl} (log: ${log.path})`);
    // Started exactly as the Dockerfile's CMD starts it.
    // SIGKILL when orphaned: with the stack gone, nothing reads the service's output, and a graceful shutdown
    // was seen to hang on a busy machine; the service is crash-safe (the reconciler finishes what it cut).
    this.service = this.spawnPart('service', 'SIGKILL', process.execPath, [...nodeFlags, 'dist/server.js'], { cwd: SERVICE_DIR, env, stdio: ['ignore', 'pipe', 'pipe'] });
    for (const stream of [this.service.stdout, this.service.stderr]) {
      createInterface({ input: stream! }).on('line', (line) => {
        // The key is written once, at boot: the first key line is the real one.
        const key = this.adminKey ? undefined : adminKeyInLogLine(line);
        if (key) this.adminKey = key;
        if (log.writable) log.write(`${line}\n`);
        this.settings.onServiceLine(line);
      });
    }
    const keyExpected = !env.ADMIN_KEY_FILE; // a pinned key is never written
    const ready = async () => (await fetch(`${this.serviceUrl}/health`)).status > 0 && (this.adminKey !== '' || !keyExpected);
    await waitFor('the service', ready, this.service, String(log.path));
  }

  async stopService(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await stopChild(this.service, signal);
  }

  /** Resolves when the service process has exited by itself (tests: after a CRASH_AT point). */
  async serviceExited(): Promise<void> {
    const service = this.service;
    if (!service || service.exitCode !== null || service.signalCode !== null) return;
    await once(service, 'exit');
  }

  /** The repo's nginx.conf with only the upstream address, the listen address and the file paths changed. */
  nginxConfig(): string {
    const { nginx, logs } = this.paths;
    const replacements: Array<[RegExp, string]> = [
      [/server service:8080 resolve;/, `server 127.0.0.1:${this.settings.servicePort};`],
      [/listen 80;/, `listen 127.0.0.1:${this.settings.httpPort};`],
      [/\/var\/run\/nginx\.pid/, join(nginx, 'nginx.pid')],
      [/\/var\/log\/nginx\/error\.log/, join(logs, 'nginx-error.log')],
      [/\/var\/log\/nginx\/access\.log/, join(logs, 'nginx-access.log')],
      [/\/var\/cache\/nginx\//g, `${join(nginx, 'cache')}/`],
    ];
    let config = readFileSync(join(REPO_ROOT, 'nginx.conf'), 'utf8');
    for (const [pattern, value] of replacements) {
      if (!pattern.test(config)) throw new StackError(`nginx.conf no longer contains ${pattern}; update scripts/local-stack.ts`);
      config = config.replace(pattern, value);
    }
    return config;
  }

  async startNginx(nginxBin = findNginx()): Promise<void> {
    mkdirSync(join(this.paths.nginx, 'cache'), { recursive: true });
    mkdirSync(this.paths.logs, { recursive: true });
    const configFile = join(this.paths.nginx, 'nginx.conf');
    writeFileSync(configFile, this.nginxConfig());
    const errorLog = join(this.paths.logs, 'nginx-error.log');
    const accessLog = join(this.paths.logs, 'nginx-access.log');
    // nginx would make its logs readable by all (0644); made first, they stay 0600 like the stack's others.
    for (const file of [errorLog, accessLog]) {
      closeSync(openSync(file, 'a', 0o600));
      chmodSync(file, 0o600);
    }
    const log = this.logFile('nginx-stderr.log');
    this.progress(`starting nginx on ${this.httpUrl} (logs: ${errorLog}, ${accessLog})`);
    this.nginx = this.spawnPart('nginx', 'SIGQUIT', nginxBin, ['-p', this.paths.nginx, '-e', errorLog, '-c', configFile, '-g', 'daemon off;'], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.nginx.stdout?.pipe(log, { end: false });
    this.nginx.stderr?.pipe(log, { end: false });
    await waitFor('nginx', async () => (await fetch(`${this.httpUrl}/`)).status === 200, this.nginx, `${errorLog} and ${log.path}`);
  }
}
