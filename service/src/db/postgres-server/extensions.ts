// Owns the DDL and catalog reads of extensions inside an app's database: the service's schema for them
// (SERVICE_EXTENSIONS_SCHEMA, owned by the superuser, USAGE for whoever may connect there, CREATE for no one
// else), creating an extension in it as the superuser, dropping one, and what is installed or available.
//
// A superuser's CREATE EXTENSION runs the extension's script as the superuser, in a database a tenant writes to.
// The script resolves unqualified names through the search_path Postgres gives it: the target schema, then
// pg_temp (pg_catalog implicitly first). A tenant's function or operator there that matches a call better than
// pg_catalog's would run as the superuser (CVE-2022-2625, CVE-2023-39417). So the target is a schema the tenant
// cannot create anything in, checked in the same transaction as the CREATE EXTENSION (ensureServiceSchema), never
// the tenant's public; extensions that require others are installed only when those live in pg_catalog or in
// the service's schema (src/domain/operations/extensions.ts); and the session's own search_path is pg_catalog,
// pg_temp for the service's own statements (useSafeSearchPath). CREATE EXTENSION is transactional: the schema,
// the extension and its grants appear together or not at all, whatever becomes of the service meanwhile.
import pg from 'pg';
import { ExtensionInUseError, ExtensionSchemaTakenError } from '../../shared/errors.js';
import { SERVICE_EXTENSIONS_SCHEMA } from '../../shared/object-names.js';
import { SQLSTATE, sqlState } from '../../shared/sqlstate.js';
import type { Queryable } from '../queryable.js';

const { escapeIdentifier: ident } = pg;
const SCHEMA = SERVICE_EXTENSIONS_SCHEMA;

/**
 * Who put an extension there. service: a superuser, into the service's schema (POST /apps/:name/extensions, or a
 * restore). app: the app's own role (a trusted extension). superuser: a superuser, elsewhere (plpgsql, in every
 * database from the template; or an operator by hand).
 */
export type InstalledBy = 'service' | 'app' | 'superuser';

export interface InstalledExtension {
  name: string;
  version: string;
  schema: string;
  installedBy: InstalledBy;
}

/** What the server offers of an extension, at its default version (pg_available_extension_versions). */
export interface AvailableExtension {
  name: string;
  defaultVersion: string;
  /** Postgres lets a non-superuser with CREATE on the database create it. */
  trusted: boolean;
  /** Only a superuser may create it, unless it is trusted. */
  superuser: boolean;
  /** The schema its control file fixes it in, if any. */
  fixedSchema: string | null;
  /** The extensions it requires. */
  requires: string[];
}

/** The service's own statements in an app's database resolve names in pg_catalog alone (then pg_temp, which it never fills). */
export async function useSafeSearchPath(db: Queryable): Promise<void> {
  await db.query('SET search_path = pg_catalog, pg_temp');
}

const INSTALLED_SQL = `
  SELECT e.extname AS name, e.extversion AS version, n.nspname AS schema,
         CASE WHEN NOT r.rolsuper THEN 'app' WHEN n.nspname = $1 THEN 'service' ELSE 'superuser' END AS "installedBy"
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace JOIN pg_roles r ON r.oid = e.extowner`;

/** Every extension installed in the database `db` is connected to, by name. */
export async function installedExtensions(db: Queryable): Promise<InstalledExtension[]> {
  const { rows } = await db.query<InstalledExtension>(`${INSTALLED_SQL} ORDER BY e.extname`, [SCHEMA]);
  return rows;
}

export async function installedExtension(db: Queryable, name: string): Promise<InstalledExtension | undefined> {
  const { rows } = await db.query<InstalledExtension>(`${INSTALLED_SQL} WHERE e.extname = $2`, [SCHEMA, name]);
  return rows[0];
}

/** The extension as the server offers it, or undefined when the server has no control file for it. */
export async function availableExtension(db: Queryable, name: string): Promise<AvailableExtension | undefined> {
  const { rows } = await db.query<AvailableExtension>(
    `SELECT a.name, a.default_version AS "defaultVersion", v.trusted, v.superuser, v.schema AS "fixedSchema",
            COALESCE(v.requires::text[], '{}') AS requires
       FROM pg_catalog.pg_available_extensions a
       JOIN pg_catalog.pg_available_extension_versions v ON v.name = a.name AND v.version = a.default_version
      WHERE a.name = $1`,
    [name],
  );
  return rows[0];
}

/** The libraries the server loaded at start (shared_preload_libraries). */
export async function preloadedLibraries(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ setting: string }>(`SELECT pg_catalog.current_setting('shared_preload_libraries') AS setting`);
  return (rows[0]?.setting ?? '').split(',').map((library) => library.trim().replace(/^"|"$/g, '')).filter((library) => library !== '');
}

/** The superusers' names: a dump names its objects' owners, and the service's schema is a superuser's. */
export async function superuserNames(db: Queryable): Promise<Set<string>> {
  const { rows } = await db.query<{ rolname: string }>(`SELECT rolname FROM pg_catalog.pg_roles WHERE rolsuper`);
  return new Set(rows.map((row) => row.rolname));
}

/** Runs `work` in one transaction on `db` (a connection of its own): all of it, or none. */
export async function inTransaction<T>(db: Queryable, work: () => Promise<T>): Promise<T> {
  await db.query('BEGIN');
  try {
    const result = await work();
    await db.query('COMMIT');
    return result;
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

/**
 * Makes the service's schema if it is absent, and checks that nothing in it can be a tenant's: owned by a
 * superuser, CREATE held by no one else (PUBLIC included), and no function, operator, type, relation, collation
 * or conversion in it owned by anyone else. Otherwise ExtensionSchemaTakenError, and the caller's transaction
 * rolls back. Run inside the transaction that installs, so the schema checked is the one installed into: the
 * tenant can neither drop, rename nor write into a superuser's schema it holds no CREATE on.
 */
export async function ensureServiceSchema(db: Queryable, appName: string): Promise<void> {
  await db.query(`CREATE SCHEMA IF NOT EXISTS ${ident(SCHEMA)}`);
  const { rows } = await db.query<{ owner_is_superuser: boolean; others_may_create: boolean; others_own_objects: boolean }>(
    `SELECT o.rolsuper AS owner_is_superuser,
            EXISTS (SELECT 1 FROM pg_catalog.aclexplode(n.nspacl) a LEFT JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
                     WHERE a.privilege_type = 'CREATE' AND (a.grantee = 0 OR NOT g.rolsuper)) AS others_may_create,
            EXISTS (SELECT 1 FROM (
                      SELECT proowner AS owner FROM pg_catalog.pg_proc WHERE pronamespace = n.oid
                      UNION ALL SELECT oprowner FROM pg_catalog.pg_operator WHERE oprnamespace = n.oid
                      UNION ALL SELECT typowner FROM pg_catalog.pg_type WHERE typnamespace = n.oid
                      UNION ALL SELECT relowner FROM pg_catalog.pg_class WHERE relnamespace = n.oid
                      UNION ALL SELECT collowner FROM pg_catalog.pg_collation WHERE collnamespace = n.oid
                      UNION ALL SELECT conowner FROM pg_catalog.pg_conversion WHERE connamespace = n.oid
                    ) objects JOIN pg_catalog.pg_roles r ON r.oid = objects.owner WHERE NOT r.rolsuper) AS others_own_objects
       FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles o ON o.oid = n.nspowner
      WHERE n.nspname = $1`,
    [SCHEMA],
  );
  const schema = rows[0];
  if (!schema) throw new Error(`schema ${SCHEMA} missing right after CREATE SCHEMA IF NOT EXISTS`);
  if (!schema.owner_is_superuser) throw new ExtensionSchemaTakenError(appName, SCHEMA, 'the app owns it');
  if (schema.others_may_create) throw new ExtensionSchemaTakenError(appName, SCHEMA, 'a role other than a superuser may create objects in it');
  if (schema.others_own_objects) throw new ExtensionSchemaTakenError(appName, SCHEMA, 'it holds objects a role other than a superuser owns');
  await db.query(`GRANT USAGE ON SCHEMA ${ident(SCHEMA)} TO PUBLIC`);
}

/**
 * CREATE EXTENSION into the service's schema (which ensureServiceSchema checked, in this transaction), then the
 * grants that make it usable by the app: EXECUTE, for whoever may connect to this database (the app's roles), on
 * the functions its own script grants to pg_stat_scan_tables (Postgres's role for monitoring functions that read
 * tables: pgstattuple's, for instance), which otherwise only a superuser could call. Nothing cluster-wide is
 * granted (pg_stat_statements_reset stays the superuser's: it would reset every app's statistics).
 */
export async function createExtensionInServiceSchema(db: Queryable, name: string): Promise<InstalledExtension> {
  await db.query(`CREATE EXTENSION ${ident(name)} SCHEMA ${ident(SCHEMA)}`);
  const { rows } = await db.query<{ signature: string }>(
    `SELECT p.oid::pg_catalog.regprocedure::text AS signature
       FROM pg_catalog.pg_extension e
       JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.refobjid = e.oid AND d.deptype = 'e'
                                  AND d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
       JOIN pg_catalog.pg_proc p ON p.oid = d.objid
      WHERE e.extname = $1
        AND EXISTS (SELECT 1 FROM pg_catalog.aclexplode(p.proacl) a
                     WHERE a.grantee = 'pg_stat_scan_tables'::pg_catalog.regrole AND a.privilege_type = 'EXECUTE')
      ORDER BY 1`,
    [name],
  );
  // regprocedure's text is the function's name as Postgres quotes it, schema-qualified (search_path is pg_catalog).
  for (const { signature } of rows) await db.query(`GRANT EXECUTE ON FUNCTION ${signature} TO PUBLIC`);
  const installed = await installedExtension(db, name);
  if (!installed) throw new Error(`extension ${name} missing right after CREATE EXTENSION`);
  return installed;
}

/**
 * Installs `name` into the service's schema of the database `db` is connected to (a superuser connection of its
 * own, useSafeSearchPath done), in one transaction with the schema's checks; `beforeCommit` runs last inside it
 * (a crash point: the transaction dies with the connection).
 */
export async function installExtension(db: Queryable, appName: string, name: string, beforeCommit?: () => Promise<void>): Promise<InstalledExtension> {
  return inTransaction(db, async () => {
    await ensureServiceSchema(db, appName);
    const installed = await createExtensionInServiceSchema(db, name);
    await beforeCommit?.();
    return installed;
  });
}

/** DROP EXTENSION, refusing (ExtensionInUseError) while objects of the app depend on it: never CASCADE into the app's objects. */
export async function dropExtension(db: Queryable, appName: string, name: string): Promise<void> {
  try {
    await db.query(`DROP EXTENSION ${ident(name)} RESTRICT`);
  } catch (err) {
    if (sqlState(err) === SQLSTATE.dependentObjectsStillExist) throw new ExtensionInUseError(appName, name);
    throw err;
  }
}
