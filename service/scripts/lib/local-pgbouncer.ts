// The local stack's PgBouncer part: the apps' door, the machine's PgBouncer 1.18 (Debian's) with the repo's
// pgbouncer.ini, where only the addresses, ports and file paths differ from compose's. It reads the auth_file and
// the hba file (the repo's pgbouncer-hba.conf with each app's lines) that the service keeps
// (src/db/pooler/pgbouncer.ts), so it starts after the service has written them. Runs as the same unprivileged OS user as Postgres when the stack runs as root (PgBouncer refuses root too).
import { connect } from 'node:net';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, writeFileSync, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import type { TlsFiles } from './local-tls.js';
import { findProgram, osUser, ownerOnlyLog, REPO_ROOT, StackError, stopChild, waitFor, type OsUser, type SpawnPart } from './parts.js';

export interface PgBouncerSettings {
  /** The stack's directory: PgBouncer's files go in <dir>/pgbouncer, its socket in <dir>/pgbouncer-run, the auth_file in <dir>/pooler-auth. */
  dir: string;
  /** Where apps connect (127.0.0.1) and where it reaches Postgres. */
  port: number;
  pgPort: number;
  /** Unprivileged OS user it runs as when this process runs as root. */
  osUser: string;
  tls: TlsFiles;
  /** Settings on top of pgbouncer.ini (the benchmark's sizes). */
  extraSettings?: Record<string, string>;
}

export const findPgBouncer = () => findProgram('pgbouncer', 'pgbouncer');

export class LocalPgBouncer {
  readonly settings: PgBouncerSettings;
  readonly paths;
  private child?: ChildProcess;
  private readonly runAs?: OsUser;
  private readonly spawnPart: SpawnPart;
  private log?: WriteStream;

  constructor(settings: PgBouncerSettings, spawnPart: SpawnPart) {
    this.settings = settings;
    this.spawnPart = spawnPart;
    const { dir } = settings;
    this.paths = {
      config: join(dir, 'pgbouncer'),
      socketDir: join(dir, 'pgbouncer-run'),
      authDir: join(dir, 'pooler-auth'),
      authFile: join(dir, 'pooler-auth', 'userlist.txt'),
      logs: join(dir, 'logs'),
    };
    if (process.getuid?.() === 0) this.runAs = osUser(settings.osUser);
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /**
   * The service's settings that make it keep this door (src/shared/config.ts): the auth_file, the admin console's
   * socket, and the door as the connection strings name it.
   */
  serviceSettings(): Record<string, string> {
    return {
      POOLER_AUTH_FILE: this.paths.authFile,
      POOLER_HBA_TEMPLATE: join(REPO_ROOT, 'pgbouncer-hba.conf'),
      POOLER_SERVER_HOST: '127.0.0.1',
      POOLER_SERVER_PORT: String(this.settings.pgPort),
      POOLER_ADMIN_HOST: this.paths.socketDir,
      POOLER_ADMIN_PORT: String(this.settings.port),
      PUBLIC_DB_HOST: '127.0.0.1',
      PUBLIC_DB_PORT: String(this.settings.port),
    };
  }

  /**
   * Its directories: the auth_file's is the service's (this process's user) to write, and PgBouncer's to read
   * through its group (setgid, so the files the service makes there get the group): as compose's setup does.
   */
  prepare(): void {
    const { config, socketDir, authDir, logs } = this.paths;
    for (const sub of [config, socketDir, authDir, logs]) mkdirSync(sub, { recursive: true });
    chmodSync(authDir, 0o2750);
    if (this.runAs) {
      chownSync(authDir, process.getuid?.() ?? 0, this.runAs.gid);
      chownSync(socketDir, this.runAs.uid, this.runAs.gid);
    }
    chmodSync(socketDir, 0o755);
    writeFileSync(join(config, 'pgbouncer.ini'), this.configFile());
  }

  /** The repo's pgbouncer.ini with only the addresses, ports and file paths changed (and extraSettings added). */
  configFile(): string {
    const { socketDir, authFile, authDir } = this.paths;
    const { port, tls } = this.settings;
    const replacements: Array<[RegExp, string]> = [
      [/^%include \/run\/pgprov-pooler\/databases\.ini$/m, `%include ${join(authDir, 'databases.ini')}`],
      [/^listen_addr = \*$/m, 'listen_addr = 127.0.0.1'],
      [/^listen_port = 6432$/m, `listen_port = ${port}`],
      [/^unix_socket_dir = \/var\/run\/pgbouncer$/m, `unix_socket_dir = ${socketDir}`],
      [/^auth_hba_file = \/run\/pgprov-pooler\/pgbouncer-hba\.conf$/m, `auth_hba_file = ${join(authDir, 'pgbouncer-hba.conf')}`],
      [/^auth_file = \/run\/pgprov-pooler\/userlist\.txt$/m, `auth_file = ${authFile}`],
      [/^client_tls_cert_file = \/run\/pgprov-tls\/server\.crt$/m, `client_tls_cert_file = ${tls.serverCertificate}`],
      [/^client_tls_key_file = \/run\/pgprov-tls\/pgbouncer-server\.key$/m, `client_tls_key_file = ${tls.pgbouncerKey}`],
      [/^client_tls_ca_file = \/run\/pgprov-tls\/ca\.crt$/m, `client_tls_ca_file = ${tls.caCertificate}`],
    ];
    let text = readFileSync(join(REPO_ROOT, 'pgbouncer.ini'), 'utf8');
    for (const [pattern, value] of replacements) {
      if (!pattern.test(text)) throw new StackError(`pgbouncer.ini no longer contains ${pattern}; update scripts/lib/local-pgbouncer.ts`);
      text = text.replace(pattern, value);
    }
    for (const [name, value] of Object.entries(this.settings.extraSettings ?? {})) {
      const line = new RegExp(`^${name} = .*$`, 'm');
      text = line.test(text) ? text.replace(line, `${name} = ${value}`) : text.replace(/^\[pgbouncer\]$/m, `[pgbouncer]\n${name} = ${value}`);
    }
    return text;
  }

  /** Starts PgBouncer once the service has written its auth_file; resolves when it accepts connections. */
  async start(): Promise<void> {
    if (!existsSync(this.paths.authFile)) throw new StackError(`${this.paths.authFile} is missing: the service writes it before PgBouncer starts`);
    this.log = ownerOnlyLog(this.paths.logs, 'pgbouncer.log');
    const ids = this.runAs ? { uid: this.runAs.uid, gid: this.runAs.gid } : {};
    this.child = this.spawnPart(findPgBouncer(), [join(this.paths.config, 'pgbouncer.ini')], { ...ids, stdio: ['ignore', 'pipe', 'pipe'], cwd: this.paths.config });
    this.child.stdout?.pipe(this.log, { end: false });
    this.child.stderr?.pipe(this.log, { end: false });
    await waitFor('PgBouncer', () => accepts(this.settings.port), this.child, String(this.log.path));
  }

  /** SIGINT: PgBouncer's "safe shutdown" waits for clients' transactions; SIGTERM ends them at once (stop's default). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<boolean> {
    const stopped = await stopChild(this.child, signal);
    this.log?.end();
    this.log = undefined;
    return stopped;
  }
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
