// The local stack's Postgres part, on its own: Postgres 15 (the machine's binaries) with the repo's postgres.conf and
// pg_hba.conf, its data directory made by initdb and init/ run once on it, as the postgres image's entrypoint does.
// It archives its WAL with pgBackRest as compose's does: the repo's pgbackrest.conf with only paths and the port
// changed (pgbackrestConfig()), its repository in <dir>/pgbackrest/repo, and the superuser's password in a pgpass
// file; the postmaster's environment names both (PGBACKREST_CONFIG, PGPASSFILE), so archive_command and the
// service's COPY … FROM PROGRAM find them.
// scripts/lib/local-stack.ts runs it as one of the stack's three parts; the in-process tests (test/helpers/postgres.ts)
// run it alone, and build the service in their own process against it.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync, type WriteStream } from 'node:fs';
import { join, resolve } from 'node:path';
import pg from 'pg';
import { makeTls, type TlsFiles } from './local-tls.js';
import { osUser, ownerOnlyLog, REPO_ROOT, SERVICE_DIR, spawnTied, StackError, stopChild, waitFor, type OsUser, type SpawnPart } from './parts.js';

export { REPO_ROOT, SERVICE_DIR };

export interface PostgresSettings {
  /** The directory Postgres's files live in: pgdata (unless pgDataDir says otherwise), pgconf, run (the socket), logs. */
  dir: string;
  pgPort: number;
  /** Empty: made on first start and kept in <dir>/postgres-password. */
  postgresPassword: string;
  pgBinDir: string;
  /** Unprivileged OS user that runs Postgres when this process runs as root (Postgres refuses root). */
  pgOsUser: string;
  /** Postgres settings on top of postgres.conf (benchmarks: max_connections for a 32-client floor). */
  extraPostgresSettings?: Record<string, string>;
  /** Postgres's data directory, if not <dir>/pgdata (the disk-full test puts it on a small filesystem of its own). */
  pgDataDir?: string;
  /** DISK_RESERVE_MB for init/00-disk-reserve.sh; default 256, as in docker-compose.yml. */
  diskReserveMb?: number;
  /** What it is doing (initdb, init/ scripts, starting), for a person watching. */
  onProgress?: (message: string) => void;
}

export function checkPostgresBinaries(binDir: string): void {
  const postgres = join(binDir, 'postgres');
  if (!existsSync(postgres) || !existsSync(join(binDir, 'initdb'))) {
    throw new StackError(`PostgreSQL 15 server binaries not found in ${binDir}: install them (Debian/Ubuntu: apt-get install -y postgresql-15) or set PG_BIN_DIR`);
  }
  const version = spawnSync(postgres, ['--version'], { encoding: 'utf8' }).stdout ?? '';
  if (!/\(PostgreSQL\) 15\./.test(version)) {
    throw new StackError(`${postgres} is not PostgreSQL 15 (${version.trim() || 'no version'}): set PG_BIN_DIR to a PostgreSQL 15 bin directory`);
  }
}

export class LocalPostgres {
  readonly settings: PostgresSettings;
  readonly paths;
  private child?: ChildProcess;
  private readonly pgUser?: OsUser;
  private readonly spawnPart: SpawnPart;
  private readonly logStreams: WriteStream[] = [];

  /** `spawnPart` starts the postmaster (the stack's records it in its lock); by default tied to this process. */
  constructor(settings: PostgresSettings, spawnPart: SpawnPart = (command, args, options) => spawnTied('SIGINT', command, args, options)) {
    this.settings = settings;
    this.spawnPart = spawnPart;
    const dir = resolve(settings.dir);
    this.paths = {
      dir,
      pgData: settings.pgDataDir ? resolve(settings.pgDataDir) : join(dir, 'pgdata'),
      pgConf: join(dir, 'pgconf'),
      socketDir: join(dir, 'run'),
      logs: join(dir, 'logs'),
      passwordFile: join(dir, 'postgres-password'),
      tls: join(dir, 'tls'),
      /** pgBackRest's files: its pgbackrest.conf, its repository, its locks, the superuser's pgpass file. */
      pgbackrest: join(dir, 'pgbackrest'),
      pgbackrestConfig: join(dir, 'pgbackrest', 'pgbackrest.conf'),
      pgbackrestRepo: join(dir, 'pgbackrest', 'repo'),
      pgbackrestLocks: join(dir, 'pgbackrest', 'lock'),
      pgpassFile: join(dir, 'pgbackrest', 'pgpass'),
    };
    if (process.getuid?.() === 0) this.pgUser = osUser(settings.pgOsUser);
  }

  /** The TLS certificate Postgres serves (and the stack's PgBouncer too): made by prepare(). */
  tls?: TlsFiles;

  /** The running postmaster's process id. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Every process of the running Postgres: the postmaster and its children (for SIGSTOP, memory). */
  processIds(): number[] {
    const postmaster = this.child?.pid;
    if (!postmaster) return [];
    const children = spawnSync('pgrep', ['-P', String(postmaster)], { encoding: 'utf8' }).stdout?.trim().split('\n').filter(Boolean).map(Number) ?? [];
    return [postmaster, ...children];
  }

  /** The superuser password: the setting, or the one made when this directory was first initialised. */
  get password(): string {
    return this.settings.postgresPassword || readFileSync(this.paths.passwordFile, 'utf8').trim();
  }

  /** Superuser connection settings, as the operator's psql would use them (TCP on 127.0.0.1). */
  superuserConnection(database = 'postgres'): pg.ClientConfig {
    return { host: '127.0.0.1', port: this.settings.pgPort, user: 'postgres', password: this.password, database };
  }

  /** The service's settings that point it at this Postgres (src/shared/config.ts), as the stack gives them. */
  serviceSettings(): Record<string, string> {
    return {
      DATABASE_HOST: this.paths.socketDir,
      DATABASE_PORT: String(this.settings.pgPort),
      POSTGRES_PASSWORD: this.password,
      PUBLIC_DB_HOST: '127.0.0.1',
      PUBLIC_DB_PORT: String(this.settings.pgPort),
      PG_DUMP_PATH: this.program('pg_dump'),
      PG_RESTORE_PATH: this.program('pg_restore'),
      PGBACKREST_REPO_PATH: this.paths.pgbackrestRepo,
    };
  }

  /**
   * What pgBackRest (and the runbooks, runbooks/*.sh) need to find this Postgres's pgbackrest.conf and the
   * superuser's password: the postmaster's environment has them, and so has every archive_command.
   */
  pgbackrestEnvironment(): Record<string, string> {
    return { PGBACKREST_CONFIG: this.paths.pgbackrestConfig, PGPASSFILE: this.paths.pgpassFile };
  }

  /**
   * The repo's pgbackrest.conf with only the paths and the port changed: the repository, the locks (each stack its
   * own: pgBackRest's default lock path is shared by the whole machine), the data directory, the socket directory.
   */
  pgbackrestConfig(): string {
    const { pgData, socketDir, pgbackrestRepo, pgbackrestLocks } = this.paths;
    const replacements: Array<[RegExp, string]> = [
      [/^repo1-path=\/var\/lib\/pgbackrest$/m, `repo1-path=${pgbackrestRepo}`],
      [/^lock-path=\/tmp\/pgbackrest$/m, `lock-path=${pgbackrestLocks}`],
      [/^pg1-path=\/var\/lib\/postgresql\/data$/m, `pg1-path=${pgData}`],
      [/^pg1-socket-path=\/var\/run\/postgresql$/m, `pg1-socket-path=${socketDir}`],
      [/^pg1-port=5432$/m, `pg1-port=${this.settings.pgPort}`],
    ];
    let config = readFileSync(join(REPO_ROOT, 'pgbackrest.conf'), 'utf8');
    for (const [pattern, value] of replacements) {
      if (!pattern.test(config)) throw new StackError(`pgbackrest.conf no longer contains ${pattern}; update scripts/lib/local-postgres.ts`);
      config = config.replace(pattern, value);
    }
    return config;
  }

  /** A program of the Postgres installation (pg_dump, psql, …). */
  program(command: string): string {
    return join(this.settings.pgBinDir, command);
  }

  /**
   * Makes the directories Postgres needs (logs 0700: they name apps and roles) and copies the repo's postgres.conf
   * and pg_hba.conf into <dir>/pgconf: the container mounts these files read-only; here Postgres reads copies,
   * so that the unprivileged OS user needs no access to the checkout.
   */
  prepare(): void {
    const { dir, pgConf, socketDir, logs } = this.paths;
    mkdirSync(dir, { recursive: true });
    for (const sub of [pgConf, socketDir, logs]) mkdirSync(sub, { recursive: true });
    chmodSync(logs, 0o700);
    this.ownForPostgres(socketDir);
    this.ownForPostgres(logs);
    this.preparePgBackRest();
    this.tls = makeTls(this.paths.tls, this.pgUser, this.settings.onProgress);
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

  /**
   * pgBackRest's directories, the Postgres OS user's (the repository 0750, as pgBackRest makes it in compose's
   * volume), and its pgbackrest.conf; the pgpass file is written by start(), once the password exists.
   */
  private preparePgBackRest(): void {
    const { pgbackrest, pgbackrestRepo, pgbackrestLocks, pgbackrestConfig } = this.paths;
    for (const sub of [pgbackrest, pgbackrestRepo, pgbackrestLocks]) {
      mkdirSync(sub, { recursive: true });
      this.ownForPostgres(sub);
    }
    chmodSync(pgbackrest, 0o750);
    chmodSync(pgbackrestRepo, 0o750);
    chmodSync(pgbackrestLocks, 0o700);
    writeFileSync(pgbackrestConfig, this.pgbackrestConfig(), { mode: 0o640 });
    chmodSync(pgbackrestConfig, 0o640);
    this.ownForPostgres(pgbackrestConfig);
  }

  /**
   * The superuser's password for libpq (pgBackRest's logins), in a pgpass file only the Postgres OS user reads:
   * `*:*:*:postgres:<password>`, with ':' and '\\' escaped as libpq wants.
   */
  private writePgpass(): void {
    const { pgpassFile } = this.paths;
    const escaped = this.password.replaceAll('\\', '\\\\').replaceAll(':', '\\:');
    rmSync(pgpassFile, { force: true });
    writeFileSync(pgpassFile, `*:*:*:postgres:${escaped}\n`, { mode: 0o600 });
    chmodSync(pgpassFile, 0o600);
    this.ownForPostgres(pgpassFile);
  }

  /** Starts Postgres (after prepare()); on an empty data directory, initdb first and init/ once it answers. */
  async start(): Promise<void> {
    const { pgData, pgConf, socketDir } = this.paths;
    const fresh = !existsSync(join(pgData, 'PG_VERSION'));
    if (fresh) {
      rmSync(pgData, { recursive: true, force: true });
      this.initdb();
    }
    this.writePgpass();
    const log = this.log('postgres.log');
    this.progress(`starting Postgres on 127.0.0.1:${this.settings.pgPort} (log: ${log.path})`);
    this.child = this.spawnPart(
      this.program('postgres'),
      [
        '-D', pgData,
        '-c', `config_file=${join(pgConf, 'postgres.conf')}`,
        '-c', `hba_file=${join(pgConf, 'pg_hba.conf')}`,
        '-c', 'listen_addresses=127.0.0.1',
        '-c', `port=${this.settings.pgPort}`,
        '-c', `unix_socket_directories=${socketDir}`,
        '-c', `ssl_cert_file=${this.tlsFiles().serverCertificate}`,
        '-c', `ssl_key_file=${this.tlsFiles().postgresKey}`,
        ...Object.entries(this.settings.extraPostgresSettings ?? {}).flatMap(([name, value]) => ['-c', `${name}=${value}`]),
      ],
      {
        ...this.asPostgresUser(),
        stdio: ['ignore', 'pipe', 'pipe'],
        cwd: this.paths.dir,
        // As compose's postgres service: what archive_command and COPY … FROM PROGRAM (pgBackRest) inherit.
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...this.pgbackrestEnvironment() },
      },
    );
    this.child.stdout?.pipe(log, { end: false });
    this.child.stderr?.pipe(log, { end: false });
    await waitFor('Postgres', () => this.answers(), this.child, String(log.path));
    if (fresh) {
      try {
        this.runInitScripts();
      } catch (err) {
        // Like the image: a data directory whose init failed is not reused; the next start begins afresh.
        await this.stop();
        rmSync(pgData, { recursive: true, force: true });
        throw err;
      }
    }
  }

  /** The TLS files prepare() made. */
  tlsFiles(): TlsFiles {
    if (!this.tls) throw new StackError('prepare() makes the TLS certificate before Postgres starts');
    return this.tls;
  }

  /** Fast shutdown (SIGINT): in-flight transactions are rolled back, nothing committed is lost. False if it was not running. */
  async stop(): Promise<boolean> {
    return stopChild(this.child, 'SIGINT', 30_000);
  }

  /** Ends the log streams (after stop()). */
  closeLogs(): void {
    for (const stream of this.logStreams.splice(0)) stream.end();
  }

  private log(name: string): WriteStream {
    const stream = ownerOnlyLog(this.paths.logs, name);
    this.logStreams.push(stream);
    return stream;
  }

  private progress(message: string): void {
    this.settings.onProgress?.(message);
  }

  private async answers(): Promise<boolean> {
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

  private ownForPostgres(path: string): void {
    if (this.pgUser) chownSync(path, this.pgUser.uid, this.pgUser.gid);
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
        this.program('initdb'),
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
            this.program('psql'),
            ['-v', 'ON_ERROR_STOP=1', '--no-psqlrc', '-q', '-h', this.paths.socketDir, '-p', String(this.settings.pgPort), '-U', 'postgres', '-d', 'postgres', '-f', join(initDir, file)],
            { encoding: 'utf8', env: { ...process.env, PGPASSWORD: this.password } },
          );
      if (result.status !== 0) throw new StackError(`init/${file} failed:\n${result.stderr}`);
    }
  }
}
