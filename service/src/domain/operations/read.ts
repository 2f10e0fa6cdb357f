// Owns the read-only operations: the apps (with their sizes, measured in the background by the storage quota's
// checks and kept here), one app (with its storage against its limit), and the backups. Not audited, and under no lock.
import { appDatabaseSizes, appSessionCounts } from '../../db/postgres-server/app-objects.js';
import { companionStates } from '../../db/postgres-server/companion-objects.js';
import { liveCredentials, type CredentialAccess } from '../../db/postgres-server/credential-objects.js';
import type { PostgresServer } from '../../db/postgres-server/postgres-server.js';
import { readyApps, registeredIncarnations, type RegisteredApp } from '../../db/system-store/registry.js';
import type { SystemStore } from '../../db/system-store/system-store.js';
import { AppNotFoundError } from '../../shared/errors.js';
import { appIdentifiers } from '../../shared/object-names.js';
import type { BackupFile, BackupFiles } from '../backups/backup-files.js';
import type { OperationEnvelope } from '../operation-envelope.js';
import type { AppStorage } from '../storage-quota.js';

/** A ready app as the service lists it. */
export interface AppSummary {
  app_name: string;
  created_at: Date;
  size_bytes: number;
  connections: number;
}

/** One app as GET /apps/:name shows it: its summary, its newest backup, and whether its scheduled backups fail. */
export interface AppDetail extends AppSummary {
  /** Its companion databases (complete ones), by name. */
  databases: Array<{ name: string; database: string }>;
  newest_backup: BackupFile | null;
  /** Its extra credentials (src/domain/operations/credentials.ts): never a password. */
  credentials: Array<{ name: string; access: CredentialAccess; username: string }>;
  backup_failing: { failures: number; retry_at: string; error: string } | null;
  /** Its storage (database and companions) against its limit, and what is enforced (src/domain/storage-quota.ts). */
  storage: AppStorage;
}

/** Scheduled backups that fail, by app (src/domain/backups/schedules.ts). */
export type FailingBackups = () => ReadonlyMap<string, { failures: number; retryAt: number; code: string }>;

/** A registered app as listed: its row in the store, its sessions and size on the server. */
function summary(app: RegisteredApp, sessions: Map<string, number>, size: number): AppSummary {
  return { app_name: app.app_name, created_at: app.created_at, connections: sessions.get(app.app_name) ?? 0, size_bytes: size };
}

export class AppListing {
  private readonly store: SystemStore;
  private readonly server: PostgresServer;
  private readonly envelope: OperationEnvelope;
  private readonly backupFiles: BackupFiles;
  private sizes = new Map<string, number>();
  /** Told later: the schedules are built after the listing. */
  failingBackups: FailingBackups = () => new Map();
  /** Told later: one app's storage now (src/domain/storage-quota.ts). */
  storageOf: (appName: string) => Promise<AppStorage> = () => Promise.reject(new Error('the storage quota is not wired to the listing'));

  constructor(store: SystemStore, server: PostgresServer, envelope: OperationEnvelope, backupFiles: BackupFiles) {
    this.store = store;
    this.server = server;
    this.envelope = envelope;
    this.backupFiles = backupFiles;
  }

  /** Sizes from the last background measurement (takeSizes); apps made since are measured on the spot. */
  async list(): Promise<AppSummary[]> {
    await this.store.ensureSchema();
    const [apps, sessions] = await Promise.all([readyApps(this.store.pool), appSessionCounts(this.server.pool)]);
    const unknown = apps.filter((s) => !this.sizes.has(s.app_name)).map((s) => s.app_name);
    if (unknown.length > 0) for (const [name, size] of await appDatabaseSizes(this.server.pool, unknown)) this.sizes.set(name, size);
    return apps.map((app) => summary(app, sessions, this.sizes.get(app.app_name) ?? 0));
  }

  /** One app, its size measured now, its newest backup, and whether its scheduled backups fail. */
  async get(appName: string): Promise<AppDetail> {
    await this.store.ensureSchema();
    const [app] = await readyApps(this.store.pool, appName);
    if (!app) throw new AppNotFoundError(appName);
    // The storage quota's look measures the app (its database and companions) once: its size is that.
    const [sessions, backups, credentials, companions, storage] = await Promise.all([
      appSessionCounts(this.server.pool),
      this.backupFiles.listOf(appIdentifiers(appName), app.incarnation),
      liveCredentials(this.server.pool, appIdentifiers(appName)),
      companionStates(this.server.pool, appName),
      this.storageOf(appName),
    ]);
    const size = storage.used_bytes;
    this.sizes.set(appName, size);
    const failing = this.failingBackups().get(appName);
    return {
      ...summary(app, sessions, size),
      databases: companions.filter((c) => c.admitted && c.databaseExists).map((c) => ({ name: c.name, database: c.database })),
      newest_backup: backups[0] ?? null,
      credentials: credentials.map((c) => ({ name: c.credential, access: c.access, username: c.role })),
      backup_failing: failing ? { failures: failing.failures, retry_at: new Date(failing.retryAt).toISOString(), error: failing.code } : null,
      storage,
    };
  }

  /** Every app's size (its database and companions), as the storage quota's last check measured it (storage-quota.ts). */
  takeSizes(sizes: Map<string, number>): void {
    this.sizes = new Map(sizes);
  }

  /** An app is gone: its size with it. */
  forget(appName: string): void {
    this.sizes.delete(appName);
  }

  /** The backups of this incarnation of the app: not those of an earlier app that had its name. */
  async listBackups(appName: string): Promise<BackupFile[]> {
    await this.store.ensureSchema();
    const app = await this.envelope.requireApp(this.store.pool, appName, 'ready');
    return this.backupFiles.listOf(app, app.incarnation);
  }

  /** Every backup in BACKUP_DIR, deleted apps' included, each saying whether its app (that incarnation) exists. */
  async listAllBackups(): Promise<Array<BackupFile & { app_exists: boolean }>> {
    await this.store.ensureSchema();
    const live = await registeredIncarnations(this.store.pool);
    return (await this.backupFiles.list()).map((backup) => ({ ...backup, app_exists: backup.incarnation !== null && live.get(backup.app_name) === backup.incarnation }));
  }
}
