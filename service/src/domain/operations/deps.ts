// Owns what the app operations are given to work with: the system store and the Postgres server (with the
// programs that dump and restore on it), the envelope they run in, the ready pool and the credential stock,
// backup files, the slots that bound long operations, settings, log and crash points. Built once by
// src/domain/provisioner.ts.
import type { Logger } from 'pino';
import type { AppRoleLimits } from '../../db/postgres-server/app-objects.js';
import type { PostgresServer } from '../../db/postgres-server/postgres-server.js';
import type { SystemStore } from '../../db/system-store/system-store.js';
import type { Config } from '../../shared/config.js';
import type { AppIdentifiers } from '../../shared/object-names.js';
import type { BackupFiles } from '../backups/backup-files.js';
import type { CrashPoint } from '../crash-points.js';
import type { CredentialStock } from '../credential-stock.js';
import type { OperationEnvelope } from '../operation-envelope.js';
import type { ReadyPool } from '../ready-pool.js';
import type { Slots } from '../slots.js';
import type { AppListing } from './read.js';

export interface OperationDeps {
  /** The system's own database: registry, audit log, ready-set rows, locks. */
  store: SystemStore;
  /** The Postgres server apps live on (today's one): their roles and databases, dump and restore. */
  server: PostgresServer;
  envelope: OperationEnvelope;
  readyPool: ReadyPool;
  credentials: CredentialStock;
  /** The apps' sizes, which a delete forgets. */
  listing: AppListing;
  backupFiles: BackupFiles;
  /** Backups and restores at once, each on a connection of its own (BACKUP_MAX_CONCURRENT); no waiting for a slot. */
  backupSlots: Slots;
  /** Rotations at once, each on a connection of its own while it waits out pending logins (ROTATION_MAX_CONCURRENT). */
  rotationSlots: Slots;
  /** The defaults of every app login role's limits; an app's own are effectiveAppLimits (src/domain/app-settings.ts). */
  limits: AppRoleLimits;
  config: Config;
  log: Logger;
  crashPoint: CrashPoint;
}

/** What provisioning and rotation answer: the app's names and its new password. */
export interface Credentials {
  app: AppIdentifiers;
  password: string;
}
