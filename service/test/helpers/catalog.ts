// What exists on the Postgres server and in the service's registry, as the superuser sees it: the one place for the
// queries tests ask of the catalogs (which roles, databases and grants an app has, what a crash or a restore left,
// the ready pool's sets, what a tenant granted to whom). Names come from src/shared/object-names.ts, as the service's.
// Catalog runs each question on the database it belongs to; the functions below it take a connection (the soak,
// scripts/lib/soak/, uses halfMadeObjects on its own).
import type pg from 'pg';
import { AGENT_SQL_PATTERN, APP_SQL, APPS_GROUP_ROLE, COMPANION_SQL, CREDENTIAL_SQL, appIdentifiers, READY_SET_SQL, SERVICE_OBJECTS_LIKE, type ObjectNames } from '../../src/shared/object-names.js';

/** A connection, or anything that runs a query on one. */
export type Db = Pick<pg.ClientBase, 'query'>;
/** Runs `work` on a superuser connection to `database` (default: postgres). */
export type Superuser = <T>(work: (db: pg.Client) => Promise<T>, database?: string) => Promise<T>;

/** The service's own database, where its registry (apps, ready_pool) and audit log live. */
export const SYSTEM_DATABASE = 'provisioner';

// --- roles and databases (shared catalogs: the same from any database) -------------------------------------------

const names = async (db: Db, sql: string, params: unknown[] = []): Promise<string[]> => (await db.query<{ name: string }>(sql, params)).rows.map((row) => row.name);

/** Which of `roles` exist, sorted. */
export const existingRoles = (db: Db, roles: string[]) => names(db, 'SELECT rolname AS name FROM pg_roles WHERE rolname = ANY($1::text[]) ORDER BY 1', [roles]);

/** Which of `databases` exist, sorted. */
export const existingDatabases = (db: Db, databases: string[]) => names(db, 'SELECT datname AS name FROM pg_database WHERE datname = ANY($1::text[]) ORDER BY 1', [databases]);

/** A database's oid (which a ready pool's hand-over keeps: the database is renamed, never made again); undefined if it does not exist. */
export async function databaseOid(db: Db, database: string): Promise<number | undefined> {
  return (await db.query<{ oid: number }>('SELECT oid FROM pg_database WHERE datname = $1', [database])).rows[0]?.oid;
}

/** Roles whose name is LIKE `pattern` (backslash escapes _ and %), sorted. */
export const rolesLike = (db: Db, pattern: string) => names(db, 'SELECT rolname AS name FROM pg_roles WHERE rolname LIKE $1 ORDER BY 1', [pattern]);

/** Databases whose name is LIKE `pattern`, sorted. */
export const databasesLike = (db: Db, pattern: string) => names(db, 'SELECT datname AS name FROM pg_database WHERE datname LIKE $1 ORDER BY 1', [pattern]);

/** Every role and database in the apps' namespace (app_…), sorted. */
export const appRoleNames = (db: Db) => rolesLike(db, APP_SQL.like);
export const appDatabaseNames = (db: Db) => databasesLike(db, APP_SQL.like);

/**
 * Every role (but Postgres's own, pg_*) and every database, but the ready pool's prepared sets, which come and go in
 * the background: what nothing but a successful operation may change.
 */
export async function everythingButReadySets(db: Db): Promise<{ roles: string[]; databases: string[] }> {
  return {
    roles: await names(db, "SELECT rolname AS name FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%' AND rolname NOT LIKE $1 ORDER BY 1", [READY_SET_SQL.like]),
    databases: await names(db, 'SELECT datname AS name FROM pg_database WHERE datname NOT LIKE $1 ORDER BY 1', [READY_SET_SQL.like]),
  };
}

/** The ready pool's prepared sets as objects on the server: their databases and roles (pgprov_ready_…). */
export async function readySetObjects(db: Db): Promise<{ databases: string[]; roles: string[] }> {
  return { databases: await databasesLike(db, READY_SET_SQL.like), roles: await rolesLike(db, READY_SET_SQL.like) };
}

/** A prepared set's login role, with its limits and settings, and its database's oid (which a hand-over keeps). */
export async function readySetLogins(db: Db): Promise<Array<{ rolname: string; rolconnlimit: number; rolconfig: string[]; oid: number }>> {
  const { rows } = await db.query(
    `SELECT r.rolname, r.rolconnlimit, r.rolconfig, d.oid FROM pg_roles r JOIN pg_database d ON r.rolname = d.datname || '_user'
      WHERE d.datname LIKE $1 ORDER BY 1`,
    [READY_SET_SQL.like],
  );
  return rows;
}

/**
 * What the service's work leaves only when it is cut (a crash): restores' work databases, and the agent roles of
 * dumps and restores. None may outlive its operation.
 */
export async function workLeftovers(db: Db): Promise<{ databases: string[]; agents: string[] }> {
  return {
    databases: await names(db, 'SELECT datname AS name FROM pg_database WHERE datname LIKE $1 AND datname NOT LIKE $2 ORDER BY 1', [SERVICE_OBJECTS_LIKE, READY_SET_SQL.like]),
    agents: await names(db, 'SELECT rolname AS name FROM pg_roles WHERE rolname ~ $1 ORDER BY 1', [AGENT_SQL_PATTERN]),
  };
}

export interface RoleAttributes {
  rolsuper: boolean;
  rolcreatedb: boolean;
  rolcreaterole: boolean;
  rolreplication: boolean;
  rolbypassrls: boolean;
  rolinherit: boolean;
  rolcanlogin: boolean;
  rolconnlimit: number;
  rolconfig: string[] | null;
  /** A member of the apps' group (provisioned_apps), which pg_hba.conf admits. */
  in_group: boolean;
}

/** A role's attributes, limits and settings; undefined if it does not exist. */
export async function roleAttributes(db: Db, role: string): Promise<RoleAttributes | undefined> {
  const { rows } = await db.query<RoleAttributes>(
    `SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolreplication, r.rolbypassrls, r.rolinherit, r.rolcanlogin,
            r.rolconnlimit, r.rolconfig, pg_has_role(r.oid, $2, 'MEMBER') AS in_group
       FROM pg_roles r WHERE r.rolname = $1`,
    [role, APPS_GROUP_ROLE],
  );
  return rows[0];
}

/** Whether `role` may log in now (false while a rotation or a delete has refused it); undefined if it does not exist. */
export async function loginAllowed(db: Db, role: string): Promise<boolean | undefined> {
  return (await roleAttributes(db, role))?.rolcanlogin;
}

/** What Postgres keeps of a role's password (pg_authid): a SCRAM verifier, or null. */
export async function storedPassword(db: Db, role: string): Promise<string | null | undefined> {
  return (await db.query<{ rolpassword: string | null }>('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [role])).rows[0]?.rolpassword;
}

/** Whether `database` takes connections (datallowconn: a restore's swap or a delete refuses them); undefined if it does not exist. */
export async function databaseAllowsConnections(db: Db, database: string): Promise<boolean | undefined> {
  return (await db.query<{ allow: boolean }>('SELECT datallowconn AS allow FROM pg_database WHERE datname = $1', [database])).rows[0]?.allow;
}

/** A database's access privileges, as text (datacl). */
export async function databaseAcl(db: Db, database: string): Promise<string | null | undefined> {
  return (await db.query<{ acl: string | null }>('SELECT datacl::text AS acl FROM pg_database WHERE datname = $1', [database])).rows[0]?.acl;
}

/** What `role` may do in each of `databases` (CONNECT, TEMPORARY), by Postgres's own check. */
export async function databasePrivileges(db: Db, role: string, databases: string[]): Promise<Array<{ datname: string; can_connect: boolean; can_make_temp: boolean }>> {
  const { rows } = await db.query(
    `SELECT datname, has_database_privilege($1, datname, 'CONNECT') AS can_connect, has_database_privilege($1, datname, 'TEMPORARY') AS can_make_temp
       FROM pg_database WHERE datname = ANY($2::text[]) ORDER BY datname`,
    [role, databases],
  );
  return rows;
}

/** What other databases say about `role`: its pg_shdepend rows (grants, ownership, policies) outside `ownDatabase`. */
export async function foreignGrants(db: Db, role: string, ownDatabase: string): Promise<Array<{ datname: string; deptype: string }>> {
  const { rows } = await db.query(
    `SELECT d.datname, s.deptype FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid JOIN pg_database d ON d.oid = s.dbid
      WHERE s.refclassid = 'pg_authid'::regclass AND r.rolname = $1 AND d.datname <> $2 ORDER BY 1, 2`,
    [role, ownDatabase],
  );
  return rows;
}

/**
 * Everything the server holds about one set of app objects (its login role, access role and database): attributes,
 * settings, memberships, the database's owner, privileges and settings, and inside it the public schema's owner and
 * privileges; with the set's own names replaced by what they are, so that two apps' objects compare equal when
 * they were made alike.
 */
export async function objectFacts(superuser: Superuser, objects: ObjectNames): Promise<Record<string, unknown>> {
  const facts = await superuser(async (db) => {
    const role = async (name: string) => {
      const attributes = await roleAttributes(db, name);
      return attributes && { ...attributes, rolconfig: [...(attributes.rolconfig ?? [])].sort() };
    };
    const memberOf = (name: string) =>
      names(db, 'SELECT g.rolname AS name FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1 ORDER BY 1', [name]);
    const password = await storedPassword(db, objects.username);
    const database = (
      await db.query(
        `SELECT pg_get_userbyid(d.datdba) AS owner, d.datacl::text AS acl, d.datallowconn, d.datconnlimit, d.datistemplate,
                pg_encoding_to_char(d.encoding) AS encoding, d.datcollate, d.datctype,
                (SELECT array_agg(c ORDER BY c) FROM pg_db_role_setting s, unnest(s.setconfig) c WHERE s.setdatabase = d.oid) AS settings
           FROM pg_database d WHERE d.datname = $1`,
        [objects.database],
      )
    ).rows[0];
    return {
      loginRole: await role(objects.username),
      loginRoleMemberOf: await memberOf(objects.username),
      password: password === null || password === undefined ? password : password.replace(/^(SCRAM-SHA-256\$\d+:).*$/, '$1…'),
      accessRole: await role(objects.accessRole),
      accessRoleMemberOf: await memberOf(objects.accessRole),
      database,
    };
  });
  const inside = await superuser(async (db) => {
    const schema = (await db.query("SELECT pg_get_userbyid(nspowner) AS owner, nspacl::text AS acl FROM pg_namespace WHERE nspname = 'public'")).rows[0];
    const defaults = (await db.query('SELECT pg_get_userbyid(defaclrole) AS role, defaclobjtype AS kind, defaclacl::text AS acl FROM pg_default_acl ORDER BY 1, 2')).rows;
    return { publicSchema: schema, defaultPrivileges: defaults };
  }, objects.database);
  // The login role's name holds the database's (app_x_user, app_x): replaced first.
  const text = JSON.stringify({ ...facts, ...inside }).replaceAll(objects.username, '<login role>').replaceAll(objects.database, '<database>').replaceAll(objects.accessRole, '<access role>');
  return JSON.parse(text) as Record<string, unknown>;
}

// --- the registry (the service's own database) ---------------------------------------------------------------------

/** The app's registry states (none, or one of creating, ready, deleting). */
export const registryStates = (system: Db, appName: string) => names(system, 'SELECT state AS name FROM apps WHERE app_name = $1', [appName]);

/** The app's incarnation, which its backups carry; undefined if it is not registered. */
export async function incarnationOf(system: Db, appName: string): Promise<string | undefined> {
  return (await system.query<{ incarnation: string }>('SELECT incarnation FROM apps WHERE app_name = $1', [appName])).rows[0]?.incarnation;
}

/** The ids of the ready pool's sets in `state`, oldest first. */
export const readySetIds = (system: Db, state: 'ready' | 'preparing' = 'ready') =>
  names(system, 'SELECT id AS name FROM ready_pool WHERE state = $1 ORDER BY created_at, id', [state]);

/** The ready pool's entries: each set's id and state (preparing, ready), by id. */
export async function readySetEntries(system: Db): Promise<Array<{ id: string; state: 'preparing' | 'ready' }>> {
  return (await system.query('SELECT id, state FROM ready_pool ORDER BY id')).rows;
}

/**
 * What must never be left once the reconciler has run: registry rows not ready, ready apps missing an object,
 * app databases or roles (extra credentials' included) without a registry row, and companion databases not complete
 * or of no ready app. Each as "<name> (<what is wrong>)".
 */
export async function halfMadeObjects(system: Db): Promise<string[]> {
  return names(
    system,
    `SELECT a.app_name || ' (' || a.state || ')' AS name FROM apps a WHERE a.state <> 'ready'
     UNION ALL
     SELECT a.app_name || ' (ready, missing objects)' FROM apps a
      WHERE a.state = 'ready' AND (NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = ${APP_SQL.databaseOf('a.app_name')})
         OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ${APP_SQL.loginRoleOf('a.app_name')})
         OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ${APP_SQL.databaseOf('a.app_name')}))
     UNION ALL
     SELECT d.datname || ' (database without registry row)' FROM pg_database d
      WHERE d.datname LIKE $1 AND d.datname !~ $2 AND NOT EXISTS (SELECT 1 FROM apps a WHERE ${APP_SQL.databaseOf('a.app_name')} = d.datname)
     UNION ALL
     SELECT r.rolname || ' (role without registry row)' FROM pg_roles r
      WHERE r.rolname LIKE $1 AND r.rolname !~ $2
        AND NOT EXISTS (SELECT 1 FROM apps a WHERE r.rolname IN (${APP_SQL.databaseOf('a.app_name')}, ${APP_SQL.loginRoleOf('a.app_name')})
                           OR substring(r.rolname FROM '${CREDENTIAL_SQL.rolePattern}') = a.app_name)
     UNION ALL
     -- Companion databases (and their access roles): complete only with both, the app ready, its login admitted.
     SELECT c.name || ' (companion not complete, or of no ready app)'
       FROM (SELECT datname AS name FROM pg_database WHERE datname ~ $2 UNION SELECT rolname FROM pg_roles WHERE rolname ~ $2) c
      WHERE NOT (EXISTS (SELECT 1 FROM apps a WHERE a.state = 'ready' AND a.app_name = substring(c.name FROM $2))
                 AND EXISTS (SELECT 1 FROM pg_database WHERE datname = c.name)
                 AND EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles l ON l.oid = m.member
                              WHERE g.rolname = c.name AND l.rolname = ${APP_SQL.loginRoleOf('substring(c.name FROM $2)')}))`,
    [APP_SQL.like, COMPANION_SQL.pattern],
  );
}

// --- by app, on the right database -----------------------------------------------------------------------------------

/** Where an app stands: which of its roles and databases exist, and its registry states. */
export interface AppPresence {
  roles: string[];
  databases: string[];
  registry: string[];
}

/** The same questions, each run on the database it belongs to, through a superuser connection of the test's. */
export class Catalog {
  private readonly superuser: Superuser;

  constructor(superuser: Superuser) {
    this.superuser = superuser;
  }

  /** Runs `work` on the Postgres server's catalogs (from the postgres database). */
  server<T>(work: (db: Db) => Promise<T>): Promise<T> {
    return this.superuser(work);
  }

  /** Runs `work` on the service's own database (registry, ready pool, audit log). */
  system<T>(work: (db: Db) => Promise<T>): Promise<T> {
    return this.superuser(work, SYSTEM_DATABASE);
  }

  /** The app's roles (access role, login role) and database that exist, and its registry states. */
  async app(appName: string): Promise<AppPresence> {
    const app = appIdentifiers(appName);
    return {
      roles: await this.server((db) => existingRoles(db, [app.accessRole, app.username])),
      databases: await this.server((db) => existingDatabases(db, [app.database])),
      registry: await this.system((db) => registryStates(db, appName)),
    };
  }

  appRoleNames = () => this.server(appRoleNames);
  appDatabaseNames = () => this.server(appDatabaseNames);
  rolesLike = (pattern: string) => this.server((db) => rolesLike(db, pattern));
  databasesLike = (pattern: string) => this.server((db) => databasesLike(db, pattern));
  existingRoles = (roles: string[]) => this.server((db) => existingRoles(db, roles));
  existingDatabases = (databases: string[]) => this.server((db) => existingDatabases(db, databases));
  databaseOid = (database: string) => this.server((db) => databaseOid(db, database));
  everythingButReadySets = () => this.server(everythingButReadySets);
  readySetObjects = () => this.server(readySetObjects);
  readySetLogins = () => this.server(readySetLogins);
  workLeftovers = () => this.server(workLeftovers);
  roleAttributes = (role: string) => this.server((db) => roleAttributes(db, role));
  loginAllowed = (role: string) => this.server((db) => loginAllowed(db, role));
  storedPassword = (role: string) => this.server((db) => storedPassword(db, role));
  databaseAllowsConnections = (database: string) => this.server((db) => databaseAllowsConnections(db, database));
  databaseAcl = (database: string) => this.server((db) => databaseAcl(db, database));
  databasePrivileges = (role: string, databases: string[]) => this.server((db) => databasePrivileges(db, role, databases));
  foreignGrants = (role: string, ownDatabase: string) => this.server((db) => foreignGrants(db, role, ownDatabase));
  registryStates = (appName: string) => this.system((db) => registryStates(db, appName));
  incarnationOf = (appName: string) => this.system((db) => incarnationOf(db, appName));
  readySetIds = (state?: 'ready' | 'preparing') => this.system((db) => readySetIds(db, state));
  readySetEntries = () => this.system(readySetEntries);
  halfMadeObjects = () => this.system(halfMadeObjects);
}

/** The catalog as the superuser of `t` (a test stack or an in-process app) sees it, looked up at each call. */
export const catalogOf = (t: () => { superuser: Superuser }): Catalog => new Catalog((work, database) => t().superuser(work, database));
