// Owns the operations the service offers on apps, as one object for the routes to call: provision, list, get,
// rotate, back up, list backups, restore, delete, read and change settings; an app's extra credentials (and, through
// `extensions`, the extensions the service installs). Each is a module of src/domain/operations/ and runs in the one
// envelope (src/domain/operation-envelope.ts): audited, and on an existing app under its lock.
import { AppExtensions } from './app-extensions.js';
import type { BackupFile } from './backups/backup-files.js';
import type { OperationObserver, RequestContext } from './operation-envelope.js';
import { backup } from './operations/backup.js';
import { createCredential, deleteCredential, listCredentials, rotateCredential, type CredentialAccess, type CredentialLogin, type CredentialSummary } from './operations/credentials.js';
import { createCompanion, deleteCompanion, listCompanions, type Companion, type MadeCompanion } from './operations/companions.js';
import { deleteApp } from './operations/delete.js';
import type { Credentials, OperationDeps } from './operations/deps.js';
import { provision } from './operations/provision.js';
import type { AppDetail, AppSummary } from './operations/read.js';
import { restore } from './operations/restore.js';
import { rotate } from './operations/rotate.js';
import { changeAppSettings, readAppSettings, type ChangedSettings } from './operations/settings.js';
import type { AppSettingsPatch, AppSettingsView } from './app-settings.js';

export type { Credentials } from './operations/deps.js';
export type { AppDetail, AppSummary } from './operations/read.js';
export type { CredentialAccess, CredentialLogin, CredentialSummary } from './operations/credentials.js';
export type { Companion, MadeCompanion } from './operations/companions.js';
export type { OperationObserver, RequestContext } from './operation-envelope.js';
export type { ChangedSettings } from './operations/settings.js';
export type { AppSettingsPatch, AppSettingsView } from './app-settings.js';

export class AppOperations {
  private readonly deps: OperationDeps;
  /** The extensions an operator enables (APP_EXTENSIONS_ALLOWED): install, list, remove. */
  readonly extensions: AppExtensions;

  constructor(deps: OperationDeps) {
    this.deps = deps;
    this.extensions = new AppExtensions(deps);
  }

  /** Tells `observer` of every operation's end (metrics): the operations know nothing of who listens. */
  observe(observer: OperationObserver): void {
    this.deps.envelope.observe(observer);
  }

  provision(appName: string, request: RequestContext): Promise<Credentials> {
    return provision(this.deps, appName, request);
  }

  list(): Promise<AppSummary[]> {
    return this.deps.listing.list();
  }

  get(appName: string): Promise<AppDetail> {
    return this.deps.listing.get(appName);
  }

  rotate(appName: string, request: RequestContext): Promise<Credentials & { sessionsEnded: number }> {
    return rotate(this.deps, appName, request);
  }

  backup(appName: string, request: RequestContext): Promise<BackupFile> {
    return backup(this.deps, appName, request);
  }

  listBackups(appName: string): Promise<BackupFile[]> {
    return this.deps.listing.listBackups(appName);
  }

  listAllBackups(): Promise<Array<BackupFile & { app_exists: boolean }>> {
    return this.deps.listing.listAllBackups();
  }

  restore(appName: string, file: string, options: { fromDeletedApp: boolean }, request: RequestContext): Promise<void> {
    return restore(this.deps, appName, file, options, request);
  }

  delete(appName: string, options: { backup: boolean }, request: RequestContext): Promise<{ backup: string | null }> {
    return deleteApp(this.deps, appName, options, request);
  }

  settings(appName: string): Promise<AppSettingsView> {
    return readAppSettings(this.deps, appName);
  }

  changeSettings(appName: string, patch: AppSettingsPatch, options: { endSessions: boolean }, request: RequestContext): Promise<ChangedSettings> {
    return changeAppSettings(this.deps, appName, patch, options, request);
  }

  createCredential(appName: string, name: string, access: CredentialAccess, request: RequestContext): Promise<CredentialLogin> {
    return createCredential(this.deps, appName, name, access, request);
  }

  listCredentials(appName: string): Promise<CredentialSummary[]> {
    return listCredentials(this.deps, appName);
  }

  rotateCredential(appName: string, name: string, request: RequestContext): Promise<CredentialLogin & { sessionsEnded: number }> {
    return rotateCredential(this.deps, appName, name, request);
  }

  deleteCredential(appName: string, name: string, request: RequestContext): Promise<{ sessionsEnded: number }> {
    return deleteCredential(this.deps, appName, name, request);
  }

  createDatabase(appName: string, name: string, copyOf: string | undefined, request: RequestContext): Promise<MadeCompanion> {
    return createCompanion(this.deps, appName, name, copyOf, request);
  }

  listDatabases(appName: string): Promise<Companion[]> {
    return listCompanions(this.deps, appName);
  }

  deleteDatabase(appName: string, name: string, request: RequestContext): Promise<{ database: string }> {
    return deleteCompanion(this.deps, appName, name, request);
  }
}
