// Owns one Postgres server that apps live on: who it is (an id), where apps reach it (the public host and port
// their connection strings name), and the service's superuser connections to it (a pool for short work,
// connections of their own, short-lived connections into an app's database, a health ping), plus the client
// programs that dump and restore an app's database on it. The DDL itself is in the functions beside this file
// (app-objects.ts, ready-set-objects.ts, agent-roles.ts), which take one of its connections. Today the service
// has one server (src/domain/provisioner.ts); nothing here knows of the system store.
import type pg from 'pg';
import type { Logger } from 'pino';
import type { Config } from '../../shared/config.js';
import type { DatabaseOpener, OwnConnection, Queryable } from '../queryable.js';
import { SuperuserConnections, type ServerAddress } from '../superuser-connections.js';
import { DumpAndRestore } from './dump-restore.js';

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
}

export class PostgresServer implements DatabaseOpener {
  readonly id: string;
  readonly publicHost: string;
  readonly publicPort: number;
  readonly connections: SuperuserConnections;
  readonly dumpAndRestore: DumpAndRestore;

  constructor(options: PostgresServerOptions, config: Config, log: Logger) {
    this.id = options.id;
    this.publicHost = options.publicHost;
    this.publicPort = options.publicPort;
    this.connections = new SuperuserConnections(options.address, MAINTENANCE_DATABASE, config, log.child({ server: options.id }));
    this.dumpAndRestore = new DumpAndRestore(options.address, config);
  }

  /** The server's connection pool, for single statements. */
  get pool(): Queryable {
    return this.connections.pool;
  }

  /** Runs `work` on one pooled superuser connection to the server. */
  withClient<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return this.connections.withClient(work);
  }

  /** A superuser connection of its own, outside the pool; the caller ends it. */
  connect(): Promise<OwnConnection> {
    return this.connections.connect();
  }

  /** Runs `work` on a short-lived superuser connection into `database` on this server (DDL that must run inside it). */
  inDatabase<T>(database: string, work: (client: Queryable) => Promise<T>): Promise<T> {
    return this.connections.inDatabase(database, work);
  }

  close(): Promise<void> {
    return this.connections.close();
  }
}
