// Owns one Postgres server that apps live on: who it is (an id), where apps reach it (the public host and port
// their connection strings name), and the service's superuser connections to it (a pool for short work,
// connections of their own, short-lived connections into an app's database, a health ping), plus the client
// programs that dump and restore an app's database on it, and the whole cluster's backups with pgBackRest
// (cluster-backup.ts) when PGBACKREST_STANZA names a stanza. The DDL itself is in the functions beside this file
// (app-objects.ts, ready-set-objects.ts, agent-roles.ts), which take one of its connections. Today the service
// has one server (src/domain/provisioner.ts); nothing here knows of the system store.
import type { Logger } from 'pino';
import type { Config } from '../../shared/config.js';
import { NO_POOLER, type Pooler } from '../pooler/pgbouncer.js';
import type { DatabaseOpener, OwnConnection, Queryable } from '../queryable.js';
import { SuperuserConnections, type ServerAddress } from '../superuser-connections.js';
import { ClusterBackup } from './cluster-backup.js';
import { DumpAndRestore } from './dump-restore.js';
import { setUpServer } from './server-setup.js';

/** The database the service's own connections to a server open when they need none in particular. */
export const MAINTENANCE_DATABASE = 'postgres';

export interface PostgresServerOptions {
  /** Names the server in logs and, later, in the registry. */
  id: string;
  /** How the service reaches the server as its superuser. */
  address: ServerAddress;
  /** The host and port apps' connection strings name. */
  publicHost: string;
  publicPort: number;
  /**
   * Connections to share with the system store when the store lives on this server (today's one machine): one
   * connection then serves an operation's store and server work, and the service holds no more connections
   * than one pool's. Without them, the server gets its own, to its maintenance database.
   */
  sharedConnections?: SuperuserConnections;
  /** The pooler in front of the server, apps' door (pgbouncer.ini); none: apps reach the server directly. */
  pooler?: (server: PostgresServer) => Pooler;
}

export class PostgresServer implements DatabaseOpener {
  readonly id: string;
  readonly publicHost: string;
  readonly publicPort: number;
  readonly connections: SuperuserConnections;
  readonly dumpAndRestore: DumpAndRestore;
  /** The whole cluster's backups and WAL archive (pgBackRest), or undefined when PGBACKREST_STANZA is empty or off. */
  readonly clusterBackup?: ClusterBackup;
  /** The apps' door in front of this server, or NO_POOLER. */
  readonly pooler: Pooler;
  /** The service's log, naming this server. */
  readonly log: Logger;
  private readonly ownsConnections: boolean;

  constructor(options: PostgresServerOptions, config: Config, log: Logger) {
    this.id = options.id;
    this.log = log.child({ server: options.id });
    this.publicHost = options.publicHost;
    this.publicPort = options.publicPort;
    this.connections = options.sharedConnections ?? new SuperuserConnections(options.address, MAINTENANCE_DATABASE, config, this.log);
    this.ownsConnections = !options.sharedConnections;
    this.dumpAndRestore = new DumpAndRestore(options.address, config);
    if (config.PGBACKREST_STANZA) {
      this.clusterBackup = new ClusterBackup({
        stanza: config.PGBACKREST_STANZA,
        timeoutMs: config.CLUSTER_BACKUP_TIMEOUT_MS,
        connect: () => this.connections.connect(MAINTENANCE_DATABASE),
        pool: this.connections.pool,
      });
    }
    this.pooler = options.pooler?.(this) ?? NO_POOLER;
  }

  /** The server's connection pool, for single statements. */
  get pool(): Queryable {
    return this.connections.pool;
  }

  /** Runs `work` on one pooled superuser connection to the server. */
  withClient<T>(work: (client: Queryable) => Promise<T>): Promise<T> {
    return this.connections.withClient(work);
  }

  /**
   * Runs `work` on a connection to the server, beside `other`, a connection its holder already has (to the
   * system store): `other` itself when the two share their connections (see sharedConnections), else a pooled
   * one. Never two connections of one pool for one piece of work, which a burst could exhaust.
   */
  withClientBeside<T>(other: { connections: SuperuserConnections }, otherClient: Queryable, work: (client: Queryable) => Promise<T>): Promise<T> {
    return this.sharesConnectionsWith(other) ? work(otherClient) : this.withClient(work);
  }

  /** Like withClientBeside, with a connection of its own (the caller's `otherClient` is one too); ended after `work`. */
  async withOwnConnectionBeside<T>(other: { connections: SuperuserConnections }, otherClient: Queryable, work: (client: Queryable) => Promise<T>): Promise<T> {
    if (this.sharesConnectionsWith(other)) return work(otherClient);
    const client = await this.connect();
    try {
      return await work(client);
    } finally {
      await client.end().catch(() => {});
    }
  }

  private setUp?: Promise<void>;

  /** Resolves once the server has what the service needs there (server-setup.ts); if Postgres was away, the next call tries again. */
  ensureSetUp(): Promise<void> {
    this.setUp ??= this.withClient((client) => setUpServer(client)).then(
      () => undefined,
      (err) => {
        this.setUp = undefined;
        throw err;
      },
    );
    return this.setUp;
  }

  /** Whether the store shares this server's connections (see sharedConnections). */
  sharesConnectionsWith(other: { connections: SuperuserConnections }): boolean {
    return other.connections === this.connections;
  }

  /** A superuser connection of its own, outside the pool; the caller ends it. */
  connect(): Promise<OwnConnection> {
    return this.connections.connect();
  }

  /** Runs `work` on a short-lived superuser connection into `database` on this server (DDL that must run inside it). */
  inDatabase<T>(database: string, work: (client: Queryable) => Promise<T>): Promise<T> {
    return this.connections.inDatabase(database, work);
  }

  /** Closes the server's connections, unless they are shared (their owner closes them). */
  async close(): Promise<void> {
    await this.pooler.close();
    if (this.ownsConnections) await this.connections.close();
  }
}
