// Owns the extensions an operator enables for an app (APP_EXTENSIONS_ALLOWED): installing one as the superuser
// into the app's database, listing what is installed there, removing one the service installed, and, for a
// restore, creating beforehand in the restore's database the extensions a dump needs that the app's agent cannot.
// The DDL, and why it is safe to run as the superuser in a tenant's database, is src/db/postgres-server/extensions.ts.
//
// Crash safety: an install is one transaction (the schema, the extension, its grants), on a superuser connection
// of its own; a crash before its COMMIT ends that connection and Postgres rolls it all back, a crash after it
// leaves it whole. The reconciler has nothing to repair (test/stack/extensions.test.ts crashes at both points).
// A removal is one DROP EXTENSION statement. Restores prepare their own work database, which the reconciler
// drops if a crash leaves it.
import {
  availableExtension,
  createExtensionInServiceSchema,
  dropExtension,
  ensureServiceSchema,
  inTransaction,
  installedExtension,
  installedExtensions,
  installExtension as installIntoServiceSchema,
  preloadedLibraries,
  superuserNames,
  useSafeSearchPath,
  type AvailableExtension,
  type InstalledExtension,
} from '../../db/postgres-server/extensions.js';
import { dumpExtensions, listingWithout, systemCatalogAclEntryIds } from '../../db/postgres-server/dump-contents.js';
import type { Queryable } from '../../db/queryable.js';
import { PRELOAD_LIBRARY_OF, refusalOf } from '../../shared/extension-policy.js';
import {
  BackupExtensionRefusedError,
  ExtensionNotAllowedError,
  ExtensionNotAvailableError,
  ExtensionNotInstalledError,
  ExtensionNotRemovableError,
  ExtensionTrustedError,
} from '../../shared/errors.js';
import { SERVICE_EXTENSIONS_SCHEMA, type AppIdentifiers } from '../../shared/object-names.js';
import type { RequestContext } from '../operation-envelope.js';
import type { OperationDeps } from './deps.js';

export type { InstalledExtension } from '../../db/postgres-server/extensions.js';

/** Postgres lets the app create it itself: trusted, or not marked superuser-only at all. */
const appMayCreate = (available: AvailableExtension) => available.trusted || !available.superuser;

/**
 * Installs `name` into the app's database as the superuser, if the operator allows it and Postgres would not let
 * the app do so itself; an extension already installed is answered as it is (`created: false`). Audited, under
 * the app's lock, on a superuser connection of its own into the app's database.
 */
export function installExtension(deps: OperationDeps, appName: string, name: string, request: RequestContext): Promise<{ extension: InstalledExtension; created: boolean }> {
  return deps.envelope.onApp(
    'install_extension',
    appName,
    request,
    { detail: ({ extension, created }) => ({ extension: extension.name, version: extension.version, created }) },
    async ({ server: client }, app) => {
      const refusal = refusalOf(name);
      if (refusal) throw new ExtensionNotAllowedError(name, refusal, deps.config.APP_EXTENSIONS_ALLOWED);
      const available = await availableExtension(client, name);
      // A trusted one is the app's to create, listed or not: say so rather than "not allowed".
      if (available && appMayCreate(available)) throw new ExtensionTrustedError(name);
      if (!deps.config.APP_EXTENSIONS_ALLOWED.includes(name)) throw new ExtensionNotAllowedError(name, undefined, deps.config.APP_EXTENSIONS_ALLOWED);
      if (!available) throw new ExtensionNotAvailableError(name, 'this Postgres server does not have it (no control file)');
      if (available.fixedSchema !== null && available.fixedSchema !== SERVICE_EXTENSIONS_SCHEMA) {
        throw new ExtensionNotAvailableError(name, `its control file fixes it in schema ${available.fixedSchema}, and the service installs only into its own, ${SERVICE_EXTENSIONS_SCHEMA}`);
      }
      const library = PRELOAD_LIBRARY_OF.get(name);
      if (library && !(await preloadedLibraries(client)).includes(library)) {
        throw new ExtensionNotAvailableError(name, `it needs shared_preload_libraries = '${library}' in postgres.conf, and a restart of Postgres`);
      }
      const result = await deps.server.inDatabase(app.database, async (db) => {
        await useSafeSearchPath(db);
        const existing = await installedExtension(db, name);
        if (existing) return { extension: existing, created: false };
        await checkRequirements(db, available);
        const extension = await installIntoServiceSchema(db, app.appName, name, () => deps.crashPoint('extension:before-commit'));
        return { extension, created: true };
      });
      if (result.created) await deps.crashPoint('extension:after-commit');
      return result;
    },
  );
}

/**
 * The extensions `available` requires must be installed already, in pg_catalog or in the service's schema (by the
 * service, or by the app: a trusted one's objects there are a superuser's, which ensureServiceSchema checks):
 * CREATE EXTENSION puts their schemas on the script's search_path, and a schema the app can write to must never be
 * there.
 */
async function checkRequirements(db: Queryable, available: AvailableExtension): Promise<void> {
  for (const required of available.requires) {
    const installed = await installedExtension(db, required);
    if (!installed) throw new ExtensionNotAvailableError(available.name, `it requires extension ${required}: install that first`);
    if (installed.schema !== 'pg_catalog' && installed.schema !== SERVICE_EXTENSIONS_SCHEMA) {
      throw new ExtensionNotAvailableError(
        available.name,
        `it requires extension ${required}, which is in schema ${installed.schema}: the install script would run as the superuser with that schema, ` +
          `which the app can write to, on its search_path. Move it into ${SERVICE_EXTENSIONS_SCHEMA} (the app: DROP EXTENSION ${required}; CREATE EXTENSION ${required} SCHEMA ${SERVICE_EXTENSIONS_SCHEMA};)`,
      );
    }
  }
}

/** Every extension installed in the app's database (not under its lock: a read). */
export async function listExtensions(deps: OperationDeps, appName: string): Promise<InstalledExtension[]> {
  await deps.store.ensureSchema();
  const app = await deps.envelope.requireApp(deps.store.pool, appName, 'ready');
  return deps.server.inDatabase(app.database, async (db) => {
    await useSafeSearchPath(db);
    return installedExtensions(db);
  });
}

/** Drops an extension the service installed (never CASCADE: objects of the app that use it make it 409). */
export function removeExtension(deps: OperationDeps, appName: string, name: string, request: RequestContext): Promise<InstalledExtension> {
  return deps.envelope.onApp('remove_extension', appName, request, { detail: (removed) => ({ extension: removed.name, version: removed.version }) }, async (_session, app) =>
    deps.server.inDatabase(app.database, async (db) => {
      await useSafeSearchPath(db);
      const installed = await installedExtension(db, name);
      if (!installed) throw new ExtensionNotInstalledError(appName, name);
      if (installed.installedBy !== 'service') throw new ExtensionNotRemovableError(name, installed.installedBy);
      await dropExtension(db, appName, name);
      return installed;
    }),
  );
}

// --- restores ------------------------------------------------------------------------------------------------

/** What a restore does about extensions before pg_restore runs as the app's agent. */
export interface DumpExtensionsPlan {
  /** Extensions to create as the superuser in the service's schema of the restore's database. */
  install: string[];
  /** Whether the service's schema must exist there (the dump has it, or an extension goes into it). */
  serviceSchema: boolean;
  /** The listing pg_restore follows, without what the service makes (undefined: the whole dump, as it is). */
  useList: string | undefined;
}

/**
 * Reads the dump's listing: every extension in it that the app could not create itself must be allowed
 * (APP_EXTENSIONS_ALLOWED and not refused), or the restore is refused (BackupExtensionRefusedError) before
 * anything is made. Those are created by the service beforehand, in its schema, as a restore's database gets them
 * (prepareDumpExtensions), and left out of what pg_restore runs, with the service's schema and its grants;
 * extensions the app made itself are left to pg_restore, as before.
 */
export async function planDumpExtensions(deps: OperationDeps, client: Queryable, path: string, file: string, app: AppIdentifiers): Promise<DumpExtensionsPlan> {
  const listing = await deps.server.dumpAndRestore.listing(path, file, app);
  const found = dumpExtensions(listing.entries, await superuserNames(client));
  const install: string[] = [];
  // The service's own privileges on pg_catalog's objects are its to make again, not the dump's (systemCatalogAclEntryIds).
  const skip = new Set<number>([...(found.serviceSchemaEntryIds ?? []), ...systemCatalogAclEntryIds(listing.entries)]);
  for (const extension of found.extensions) {
    const available = await availableExtension(client, extension.name);
    if (!available) throw new BackupExtensionRefusedError(file, extension.name, 'this Postgres server does not have it');
    if (appMayCreate(available)) continue;
    const refusal = refusalOf(extension.name);
    if (refusal) throw new BackupExtensionRefusedError(file, extension.name, refusal);
    if (!deps.config.APP_EXTENSIONS_ALLOWED.includes(extension.name)) throw new BackupExtensionRefusedError(file, extension.name, 'it is not in APP_EXTENSIONS_ALLOWED');
    if (available.requires.length > 0) throw new BackupExtensionRefusedError(file, extension.name, `it requires other extensions (${available.requires.join(', ')}), which a restore does not create first`);
    install.push(extension.name);
    for (const id of extension.entryIds) skip.add(id);
  }
  return { install, serviceSchema: found.serviceSchemaEntryIds !== undefined || install.length > 0, useList: skip.size > 0 ? listingWithout(listing, skip) : undefined };
}

/** Makes, as the superuser, in the restore's (new, empty) database what `plan` says, in one transaction. */
export async function prepareDumpExtensions(deps: OperationDeps, database: string, app: AppIdentifiers, plan: DumpExtensionsPlan): Promise<void> {
  if (!plan.serviceSchema) return;
  await deps.server.inDatabase(database, async (db) => {
    await useSafeSearchPath(db);
    await inTransaction(db, async () => {
      await ensureServiceSchema(db, app.appName);
      for (const name of plan.install) await createExtensionInServiceSchema(db, name);
    });
  });
}
