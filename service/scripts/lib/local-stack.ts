// The local stack: the same parts as docker-compose.yml, on this machine, without Docker.
// Postgres 15 (the machine's binaries) with the repo's postgres.conf, pg_hba.conf and init/; the built service
// started the way the Dockerfile starts it (node dist/server.js); PgBouncer, the apps' door, with the repo's
// pgbouncer.ini (scripts/lib/local-pgbouncer.ts); nginx with the repo's nginx.conf, where only the upstream
// address, the listen address and the file paths differ; and the TLS certificate both doors serve, made on the
// first start by init/setup/make-tls.sh as compose's setup makes it. Used by `npm run stack` and the tests.
// Each part runs in a session of its own (a Ctrl-C at the terminal reaches only the stack, which stops the parts
// in order) and is tied to this process by the kernel (setpriv --pdeathsig): if this process dies, however it
// dies, the parts are told to stop. $STACK_DIR/stack.lock (scripts/lib/stack-lock.ts) keeps one stack per directory.
// Postgres is scripts/lib/local-postgres.ts, which the in-process tests also run alone.
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync, type WriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { adminKeyInLogLine } from '../../src/shared/secrets.js';
import { findPgBouncer, LocalPgBouncer } from './local-pgbouncer.js';
import { checkPostgresBinaries, LocalPostgres, REPO_ROOT, SERVICE_DIR } from './local-postgres.js';
import { findProgram, freePort, ownerOnlyLog, spawnTied, StackError, stopChild, stopWasRequested, waitFor } from './parts.js';
import { portProblem, StackLock, type StackPart } from './stack-lock.js';

export { freePort, REPO_ROOT, SERVICE_DIR, StackError };

export interface StackSettings {
  stackDir: string;
  httpPort: number;
  pgPort: number;
  servicePort: number;
  /** PgBouncer, the apps' door: the port every connection string names (STACK_POOLER_PORT). */
  poolerPort: number;
  /**
   * The direct door, opt-in (STACK_DIRECT_DOOR=on): answers also carry direct_connection_string, to Postgres's
   * own port. On this one machine Postgres's port is on loopback either way (the service and PgBouncer use it);
   * in compose, Postgres is then put on the apps' network (docker-compose.direct-postgres.yml).
   */
  directDoor?: boolean;
  /** Benchmarks only: PgBouncer settings on top of pgbouncer.ini. */
  extraPoolerSettings?: Record<string, string>;
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
    poolerPort: await freePort(),
    directDoor: true,
    pgBinDir: process.env.PG_BIN_DIR || '/usr/lib/postgresql/15/bin',
    pgOsUser: process.env.STACK_PG_OS_USER || 'postgres',
    ...settings,
  };
}

const findNginx = () => findProgram('nginx', 'nginx');

export class LocalStack {
  readonly settings: StackSettings;
  readonly paths;
  adminKey = '';
  /** The Postgres part (scripts/lib/local-postgres.ts). */
  readonly postgres: LocalPostgres;
  /** The apps' door (scripts/lib/local-pgbouncer.ts): made once Postgres has made the TLS certificate. */
  pgbouncer?: LocalPgBouncer;
  private service?: ChildProcess;
  private nginx?: ChildProcess;
  private readonly logStreams: WriteStream[] = [];
  private lock?: StackLock;

  constructor(settings: StackSettings) {
    this.settings = settings;
    this.postgres = new LocalPostgres(
      {
        dir: settings.stackDir,
        pgPort: settings.pgPort,
        postgresPassword: settings.postgresPassword,
        pgBinDir: settings.pgBinDir,
        pgOsUser: settings.pgOsUser,
        extraPostgresSettings: settings.extraPostgresSettings,
        pgDataDir: settings.pgDataDir,
        diskReserveMb: settings.diskReserveMb,
        onProgress: settings.onProgress,
      },
      (command, args, options) => this.spawnPart('postgres', 'SIGINT', command, args, options),
    );
    const dir = this.postgres.paths.dir;
    this.paths = { ...this.postgres.paths, nginx: join(dir, 'nginx'), backups: join(dir, 'backups') };
  }

  /** The running service's process id (benchmarks read its memory). */
  get servicePid(): number | undefined {
    return this.service?.pid;
  }

  /** The running postmaster's process id. */
  get postgresPid(): number | undefined {
    return this.postgres.pid;
  }

  /** Every process of the running Postgres: the postmaster and its children (for SIGSTOP, memory). */
  postgresProcessIds(): number[] {
    return this.postgres.processIds();
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.settings.httpPort}`;
  }

  get serviceUrl(): string {
    return `http://127.0.0.1:${this.settings.servicePort}`;
  }

  /** The superuser password: the setting, or the one made when this STACK_DIR was first initialised. */
  get postgresPassword(): string {
    return this.postgres.password;
  }

  /** Superuser connection settings, as the operator's psql would use them (TCP on 127.0.0.1). */
  superuserConnection(database = 'postgres'): pg.ClientConfig {
    return this.postgres.superuserConnection(database);
  }

  /**
   * Starts Postgres, the service, PgBouncer (which reads the logins the service writes) and nginx; refuses at
   * once, starting nothing, if STACK_DIR or a port is taken.
   */
  async start(): Promise<void> {
    checkPostgresBinaries(this.settings.pgBinDir);
    const nginxBin = findNginx();
    findPgBouncer();
    findProgram('pgbackrest', 'pgbackrest'); // Postgres's archive_command, the service's cluster backups (pgbackrest.conf)
    this.takeLock();
    try {
      await this.checkPortsFree();
      this.prepareDirectories();
      await this.startPostgres();
      await this.startService();
      await this.startPgBouncer();
      await this.startNginx(nginxBin);
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  private takeLock(): void {
    const { dir } = this.paths;
    const { httpPort: http, pgPort: pg, servicePort: service, poolerPort: pooler } = this.settings;
    mkdirSync(dir, { recursive: true });
    const lock = StackLock.take(dir, { http, pg, service, pooler });
    if (!(lock instanceof StackLock)) {
      throw new StackError(
        `a local stack is already running on STACK_DIR=${dir} (pid ${lock.pid}; nginx on port ${lock.ports.http}, the service on ` +
          `${lock.ports.service}, Postgres on ${lock.ports.pg}${lock.ports.pooler ? `, PgBouncer on ${lock.ports.pooler}` : ''}): use it, stop it (Ctrl-C where it runs, or kill ${lock.pid}), or choose another STACK_DIR`,
      );
    }
    this.lock = lock;
  }

  private async checkPortsFree(): Promise<void> {
    const ports: Array<[number, string, string]> = [
      [this.settings.httpPort, 'STACK_HTTP_PORT', 'nginx'],
      [this.settings.servicePort, 'STACK_SERVICE_PORT', 'the service'],
      [this.settings.pgPort, 'STACK_PG_PORT', 'Postgres'],
      [this.settings.poolerPort, 'STACK_POOLER_PORT', 'PgBouncer'],
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

  /** Stops nginx, PgBouncer, then the service (which closes its connections), then Postgres (fast); says which were running. */
  async stop(): Promise<void> {
    if (await stopChild(this.nginx, 'SIGQUIT')) this.progress('nginx stopped');
    if (await this.pgbouncer?.stop()) this.progress('PgBouncer stopped');
    if (await stopChild(this.service, 'SIGTERM')) this.progress('the service stopped');
    if (await this.postgres.stop()) this.progress('Postgres stopped');
    this.postgres.closeLogs();
    for (const stream of this.logStreams.splice(0)) stream.end();
    this.lock?.release();
    this.lock = undefined;
  }

  /**
   * Starts a part in a session of its own, tied to this process (scripts/lib/parts.ts), and records it in the
   * lock; its exit, unless asked for, is told to onPartExit.
   */
  private spawnPart(part: StackPart, onOrphaned: NodeJS.Signals, command: string, args: string[], options: SpawnOptions): ChildProcess {
    const child = spawnTied(onOrphaned, command, args, options);
    this.lock?.recordPart(part, child.pid);
    child.once('exit', (code, signal) => {
      if (!stopWasRequested(child)) this.settings.onPartExit?.(part, signal ? `killed by ${signal}` : `exit code ${code}`);
    });
    return child;
  }

  private prepareDirectories(): void {
    const { backups, nginx } = this.paths;
    this.postgres.prepare();
    this.pgbouncer = new LocalPgBouncer(
      {
        dir: this.paths.dir,
        port: this.settings.poolerPort,
        pgPort: this.settings.pgPort,
        osUser: this.settings.pgOsUser,
        tls: this.postgres.tlsFiles(),
        extraSettings: this.settings.extraPoolerSettings,
      },
      (command, args, options) => this.spawnPart('pgbouncer', 'SIGTERM', command, args, options),
    );
    this.pgbouncer.prepare();
    for (const sub of [backups, join(nginx, 'cache')]) mkdirSync(sub, { recursive: true });
    // Backups hold apps' data: their owner's only (the service also keeps its backup files 0600).
    chmodSync(backups, 0o700);
  }

  /** A log of the stack's, readable by its owner only: logs can name apps, roles and clients. */
  private logFile(name: string): WriteStream {
    const stream = ownerOnlyLog(this.paths.logs, name);
    this.logStreams.push(stream);
    return stream;
  }

  async startPostgres(): Promise<void> {
    await this.postgres.start();
  }

  /** Fast shutdown (SIGINT): in-flight transactions are rolled back, nothing committed is lost. */
  async stopPostgres(): Promise<void> {
    await this.postgres.stop();
  }

  serviceEnvironment(): Record<string, string> {
    return {
      NODE_OPTIONS: '--max-old-space-size=96', // as the Dockerfile sets it: the service's heap fits its 160 MB limit
      HOST: '127.0.0.1',
      PORT: String(this.settings.servicePort),
      ...this.postgres.serviceSettings(),
      ...this.pgbouncer?.serviceSettings(),
      ...(this.settings.directDoor ? { DIRECT_DB_HOST: '127.0.0.1', DIRECT_DB_PORT: String(this.settings.pgPort) } : {}),
      TLS_CA_FILE: this.postgres.tlsFiles().caCertificate,
      BACKUP_DIR: this.paths.backups,
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

  /** Starts PgBouncer (after the service, whose auth_file it reads). */
  async startPgBouncer(): Promise<void> {
    if (!this.pgbouncer) throw new StackError('the stack is not prepared');
    this.progress(`starting PgBouncer, the apps' door, on 127.0.0.1:${this.settings.poolerPort} (log: ${join(this.paths.logs, 'pgbouncer.log')})`);
    await this.pgbouncer.start();
    // Up means the parts answer each other: the service has found its door (it checks every 2 s).
    if (this.service && this.service.exitCode === null) await waitFor("the service's view of PgBouncer", async () => ((await (await fetch(`${this.serviceUrl}/health`)).json()) as { pooler?: string }).pooler === 'ok', this.service, 'service.log');
  }

  async stopPgBouncer(signal?: NodeJS.Signals): Promise<void> {
    await this.pgbouncer?.stop(signal);
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
      if (!pattern.test(config)) throw new StackError(`nginx.conf no longer contains ${pattern}; update scripts/lib/local-stack.ts`);
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
