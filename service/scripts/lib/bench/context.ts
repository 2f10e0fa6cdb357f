// What every section of the benchmark works with: the throwaway local stack (ready pool off unless a section turns
// it on), a superuser connection for the floors, the sizes of this run, and the HTTP calls each section times.
import { rmSync } from 'node:fs';
import pg from 'pg';
import type { AppRoleLimits } from '../../../src/db/postgres-server/app-objects.js';
import type { PostgresServer } from '../../../src/db/postgres-server/postgres-server.js';
import type { SystemStore } from '../../../src/db/system-store/system-store.js';
import { appRoleLimits, openStoreAndServer } from '../../../src/domain/provisioner.js';
import { loadConfig } from '../../../src/shared/config.js';
import { appIdentifiers } from '../../../src/shared/object-names.js';
import { newAppCredential, type AppCredential } from '../../../src/shared/secrets.js';
import { LocalStack, throwawayStackSettings } from '../local-stack.js';
import { floorDelete, floorProvision } from './floor.js';
import { timed } from './statistics.js';

export interface Sizes {
  sequential: number;
  poolWarm: number;
  poolDry: number;
  concurrentApps: number;
  healthSeconds: number;
  healthWarmupSeconds: number;
  healthRounds: number;
  scale: number;
  deletes: number;
  rotations: number;
  /** Bursts of 4 provisions with the default ready pool, /health under load meanwhile. */
  bursts: number;
  /**
   * The apps' door (section 8): apps, each with this many pgbench clients through the pooler, in rounds; pgbench runs
   * for the seconds plus the ramp, the time allowed for every client to connect (TLS, SCRAM) before the measured stretch.
   */
  poolerApps: number;
  poolerClientsPerApp: number;
  poolerSeconds: number;
  poolerRampSeconds: number;
  poolerRounds: number;
  /** Connection setup (section 8): pgbench -C clients, seconds per door, rounds. */
  connectClients: number;
  connectSeconds: number;
  connectRounds: number;
}

export const FULL: Sizes = {
  sequential: 200, poolWarm: 100, poolDry: 100, concurrentApps: 160, healthSeconds: 5, healthWarmupSeconds: 2, healthRounds: 3, scale: 2000, deletes: 100, rotations: 5, bursts: 10,
  poolerApps: 20, poolerClientsPerApp: 50, poolerSeconds: 30, poolerRampSeconds: 30, poolerRounds: 2, connectClients: 4, connectSeconds: 10, connectRounds: 3,
};
export const TINY: Sizes = {
  sequential: 3, poolWarm: 2, poolDry: 2, concurrentApps: 4, healthSeconds: 1, healthWarmupSeconds: 1, healthRounds: 1, scale: 6, deletes: 3, rotations: 1, bursts: 1,
  poolerApps: 2, poolerClientsPerApp: 5, poolerSeconds: 2, poolerRampSeconds: 2, poolerRounds: 1, connectClients: 2, connectSeconds: 1, connectRounds: 1,
};

export interface ContextOptions {
  /** Sizes on top of the run's (FULL or TINY): a section at other sizes (--sizes). */
  sizes?: Partial<Sizes>;
  /**
   * The repo's postgres.conf as is (max_connections = 50), for the apps' door; otherwise max_connections = 100,
   * which the floors at 32 clients need.
   */
  productionConnections?: boolean;
}

/** A checkpoint after thousands of databases can outlast the service's statement timeout the clients carry. */
export const CHECKPOINT = { text: 'CHECKPOINT', query_timeout: 300_000 } as pg.QueryConfig;

const silentLogger = { warn() {}, error() {}, info() {}, debug() {}, fatal() {}, trace() {}, child() { return silentLogger; }, level: 'silent', silent() {} };

export class BenchContext {
  readonly tiny: boolean;
  readonly sizes: Sizes;
  readonly log: (line: string) => void;
  readonly stack: LocalStack;
  /** Every line the service has written (its log level is warn). */
  readonly serviceLines: string[];
  /** The floors' connections are made as the service makes its own (src/db/superuser-connections.ts). */
  /** Today's one server and the system store on it, as the service builds them (openStoreAndServer). */
  readonly server: PostgresServer;
  readonly store: SystemStore;
  /** The one open superuser connection of the sequential floors, and of the benchmark's own queries. */
  readonly floorClient: pg.Client;
  /** The app role limits the service derives from the same settings. */
  readonly limits: AppRoleLimits;
  private counter = 0;
  private readonly cleanups: Array<() => Promise<void>> = [];

  private constructor(tiny: boolean, sizes: Sizes, log: (line: string) => void, stack: LocalStack, serviceLines: string[], seams: { store: SystemStore; server: PostgresServer }, floorClient: pg.Client, limits: AppRoleLimits) {
    this.tiny = tiny;
    this.sizes = sizes;
    this.log = log;
    this.stack = stack;
    this.serviceLines = serviceLines;
    this.server = seams.server;
    this.store = seams.store;
    this.floorClient = floorClient;
    this.limits = limits;
  }

  /** Starts the stack (ready pool off, reconciling rarely) and opens the floor's connection. */
  static async start(tiny: boolean, log: (line: string) => void, options: ContextOptions = {}): Promise<BenchContext> {
    const serviceLines: string[] = [];
    const settings = await throwawayStackSettings('bench', {
      postgresPassword: 'bench-superuser-password',
      serviceEnv: { LOG_PRETTY: 'false', LOG_LEVEL: 'warn', READY_POOL_SIZE: '0', RECONCILE_INTERVAL_MS: '600000' },
      onServiceLine: (line) => serviceLines.push(line),
      // The floor at 32 clients holds 32 sessions, each opening one more into the database it just made:
      // more than postgres.conf's 50. The service itself never needs more than its pool (5) plus one each.
      ...(options.productionConnections ? {} : { extraPostgresSettings: { max_connections: '100' } }),
    });
    const stack = new LocalStack(settings);
    const removeStack = async () => {
      await stack.stop().catch(() => {});
      rmSync(settings.stackDir, { recursive: true, force: true });
    };
    try {
      await stack.start();
      const config = loadConfig({ ...stack.serviceEnvironment(), LOG_LEVEL: 'silent' });
      const seams = openStoreAndServer(config, silentLogger as never);
      try {
        await seams.store.ensureSchema();
        const floorClient = await seams.store.connections.connect();
        const sizes = { ...(tiny ? TINY : FULL), ...options.sizes };
        const context = new BenchContext(tiny, sizes, log, stack, serviceLines, seams, floorClient, appRoleLimits(config));
        context.cleanups.push(removeStack, () => seams.store.close(), () => floorClient.end());
        return context;
      } catch (err) {
        await seams.store.close().catch(() => {});
        throw err;
      }
    } catch (err) {
      await removeStack();
      throw err;
    }
  }

  /** Runs `stop` when the benchmark ends, before what was deferred earlier. */
  defer(stop: () => Promise<void>): void {
    this.cleanups.push(stop);
  }

  /** Closes what the sections left open, the floor's connections, then stops the stack and removes its directory. */
  async stop(): Promise<void> {
    for (const stop of this.cleanups.splice(0).reverse()) await stop().catch(() => {});
  }

  /** A new app name: `<prefix>_<n>`, n counting up over the whole run. */
  nextName(prefix: string): string {
    return `${prefix}_${(this.counter++).toString(36)}`;
  }

  /** `n` app credentials (password and its verifier), made ahead of the timed work as the service's stock does. */
  credentials(n: number): Promise<AppCredential[]> {
    return Promise.all(Array.from({ length: n }, () => newAppCredential()));
  }

  /** The service's settings, restarted: `env` on top of the stack's own (the ready pool, mostly). */
  async restartService(env: Record<string, string> = {}): Promise<void> {
    await this.stack.stopService();
    await this.stack.startService(env);
  }

  private adminRequest(method: string, path: string, body?: unknown): Promise<Response> {
    return fetch(`${this.stack.httpUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.stack.adminKey}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  }

  /** POST /provision through nginx; the elapsed ms. */
  async provisionHttp(name: string): Promise<number> {
    const [elapsed, response] = await timed(() => this.adminRequest('POST', '/provision', { app_name: name }));
    await response.arrayBuffer();
    if (response.status !== 201) throw new Error(`provision ${name}: ${response.status}`);
    return elapsed;
  }

  /** POST /provision through nginx, untimed: the new app's connection strings (the pooler's, and the direct door's). */
  async provisionForStrings(name: string): Promise<{ connection_string: string; direct_connection_string: string }> {
    const response = await this.adminRequest('POST', '/provision', { app_name: name });
    if (response.status !== 201) throw new Error(`provision ${name}: ${response.status}`);
    return (await response.json()) as { connection_string: string; direct_connection_string: string };
  }

  /** POST /provision through nginx, untimed: the new app's connection string, as an app using node-postgres gives it (withAuthority). */
  async provisionForConnection(name: string): Promise<string> {
    return this.withAuthority((await this.provisionForStrings(name)).connection_string);
  }

  /** The stack's CA certificate (a file): what apps check both doors' TLS certificate against. */
  get caFile(): string {
    return this.stack.postgres.tlsFiles().caCertificate;
  }

  /**
   * A connection string the service returned, with sslrootcert= the stack's CA, as the README tells apps using
   * node-postgres to give it: node-postgres reads sslmode=require as verify-full, and the CA is the stack's own.
   */
  withAuthority(connectionString: string): string {
    const url = new URL(connectionString);
    url.searchParams.set('sslrootcert', this.caFile);
    return url.toString();
  }

  /** DELETE /apps/:name?backup=false through nginx; the elapsed ms. */
  async deleteHttp(name: string): Promise<number> {
    const [elapsed, response] = await timed(() => this.adminRequest('DELETE', `/apps/${name}?backup=false`));
    await response.arrayBuffer();
    if (response.status !== 200) throw new Error(`delete ${name}: ${response.status}`);
    return elapsed;
  }

  /** POST /apps/:name/rotate through nginx; the elapsed ms. */
  async rotateHttp(name: string): Promise<number> {
    const [elapsed, response] = await timed(() => this.adminRequest('POST', `/apps/${name}/rotate`));
    await response.arrayBuffer();
    if (response.status !== 200) throw new Error(`rotate ${name}: ${response.status}`);
    return elapsed;
  }

  /** GET `path` through nginx with the admin key; the elapsed ms and the answer. */
  getHttp(path: string): Promise<[number, Response]> {
    return timed(() => this.adminRequest('GET', path));
  }

  /** The floor of one provisioning, on the floor's connection; the elapsed ms. */
  async floorProvisionTimed(name: string, credential: AppCredential, client: pg.ClientBase = this.floorClient): Promise<number> {
    return (await timed(() => floorProvision(client, this.server, appIdentifiers(name), credential, this.limits)))[0];
  }

  /** The floor of one delete, on the floor's connection; the elapsed ms. */
  async floorDeleteTimed(name: string): Promise<number> {
    return (await timed(() => floorDelete(this.floorClient, this.server, appIdentifiers(name))))[0];
  }

  /** Deletes apps with the floor's statements (fast, and the same whoever made them). */
  async floorDeleteAll(names: string[]): Promise<void> {
    for (const name of names) await this.floorDeleteTimed(name);
  }

  /** How many sets the ready pool holds ready now. */
  async readyCount(): Promise<number> {
    return Number((await this.floorClient.query("SELECT count(*) FROM ready_pool WHERE state = 'ready'")).rows[0].count);
  }
}
