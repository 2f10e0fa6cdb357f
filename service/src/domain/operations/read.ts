// Owns the read-only operations: the apps (with their sizes, measured in the background and kept here), one app,
// and the backups. Not audited, and under no lock.
import { appDatabaseSizes } from '../../db/postgres-server/app-objects.js';
import type { SuperuserConnections } from '../../db/superuser-connections.js';
import { readyAppRows, registeredIncarnations } from '../../db/system-store/registry.js';
import { AppNotFoundError } from '../../shared/errors.js';
import type { BackupFile, BackupFiles } from '../backup-files.js';
import type { OperationEnvelope } from '../operation-envelope.js';

/** A ready app as the service lists it. */
export interface AppSummary {
  app_name: string;
  created_at: Date;
  size_bytes: number;
  connections: number;
}

export class AppListing {
  private readonly connections: SuperuserConnections;
  private readonly envelope: OperationEnvelope;
  private readonly backupFiles: BackupFiles;
  private sizes = new Map<string, number>();

  constructor(connections: SuperuserConnections, envelope: OperationEnvelope, backupFiles: BackupFiles) {
    this.connections = connections;
    this.envelope = envelope;
    this.backupFiles = backupFiles;
  }

  /** Sizes from the last background refresh (refreshSizes); apps made since are measured on the spot. */
  async list(): Promise<AppSummary[]> {
    await this.connections.ensureSchema();
    const pool = this.connections.pool;
    const rows = await readyAppRows(pool);
    const unknown = rows.filter((s) => !this.sizes.has(s.app_name)).map((s) => s.app_name);
    if (unknown.length > 0) for (const [name, size] of await appDatabaseSizes(pool, unknown)) this.sizes.set(name, size);
    return rows.map((s) => ({ ...s, size_bytes: this.sizes.get(s.app_name) ?? 0 }));
  }

  /** One app, its size measured now. */
  async get(appName: string): Promise<AppSummary> {
    await this.connections.ensureSchema();
    const pool = this.connections.pool;
    const [row] = await readyAppRows(pool, appName);
    if (!row) throw new AppNotFoundError(appName);
    const size = (await appDatabaseSizes(pool, [appName])).get(appName) ?? 0;
    this.sizes.set(appName, size);
    return { ...row, size_bytes: size };
  }

  /** Measures every app database's size again (run in the background with the reconciler). */
  async refreshSizes(): Promise<void> {
    this.sizes = await appDatabaseSizes(this.connections.pool);
  }

  /** An app is gone: its size with it. */
  forget(appName: string): void {
    this.sizes.delete(appName);
  }

  /** The backups of this incarnation of the app: not those of an earlier app that had its name. */
  async listBackups(appName: string): Promise<BackupFile[]> {
    await this.connections.ensureSchema();
    const app = await this.envelope.requireApp(this.connections.pool, appName, 'ready');
    return this.backupFiles.listOf(app, app.incarnation);
  }

  /** Every backup in BACKUP_DIR, deleted apps' included, each saying whether its app (that incarnation) exists. */
  async listAllBackups(): Promise<Array<BackupFile & { app_exists: boolean }>> {
    await this.connections.ensureSchema();
    const live = await registeredIncarnations(this.connections.pool);
    return (await this.backupFiles.list()).map((backup) => ({ ...backup, app_exists: backup.incarnation !== null && live.get(backup.app_name) === backup.incarnation }));
  }
}
