// Owns the DDL and catalog reads of an app's extra credentials: login roles app_<app>.<credential> beside the
// app's own (src/shared/object-names.ts), each of one of two kinds:
// - full: a member of the app's login role (so pg_hba.conf's samerole admits it wherever the app's login goes), with
//   CONNECT on the app's database; its sessions start as the app's login role (ALTER ROLE … SET role), so it has the
//   app's privileges and what it creates is owned by the app. NOINHERIT: after SET ROLE NONE it is only itself,
//   with CONNECT and nothing else, so it makes nothing of its own there (which the app, and its dump agent, could
//   not read: a backup would stop at it). RESET ROLE goes back to the role's default: the app's login role.
// - read_only: a member of the app's access role and of provisioned_apps only (so samerole admits it to the
//   app's main database and nowhere else), NOINHERIT, with CONNECT on that database, USAGE on the schemas the
//   app's login role owns and SELECT on their tables and sequences, now (GRANT … ON ALL …) and later (ALTER
//   DEFAULT PRIVILEGES FOR ROLE the app's login role), and default_transaction_read_only = on as a second guard.
// Both carry the app's limits and log_min_messages = fatal (roleSettingsSql). Neither inherits: CONNECT is granted
// to each itself, so a credential that someone made a member of another app's roles still has no CONNECT there (the
// second lock of SECURITY.md's promise 1, as for the apps' own NOINHERIT login roles). Postgres's catalogs are the
// record: nothing of a credential is kept in the system store.
//
// A credential that is not live (being made, or being removed) is marked by VALID UNTIL '-infinity', which only a
// superuser (or CREATEROLE) can change: no login is accepted for it, the door refuses it, and the reconciler drops
// it. A live one is LOGIN VALID UNTIL 'infinity'; a live one left NOLOGIN was cut in the middle of a rotation.
import pg from 'pg';
import { APP_SQL, APPS_GROUP_ROLE, CREDENTIAL_SQL, credentialOfRole, type AppIdentifiers } from '../../shared/object-names.js';
import type { DatabaseOpener, Queryable } from '../queryable.js';
import { putBackRoleState, roleSettingsSql, type AppRoleLimits, type RoleState } from './app-objects.js';

const { escapeIdentifier: ident, escapeLiteral: literal } = pg;

export const CREDENTIAL_ACCESS = ['read_only', 'full'] as const;
export type CredentialAccess = (typeof CREDENTIAL_ACCESS)[number];

/** What marks a credential role that is not live (being made or being removed): it cannot log in, whatever else. */
const NOT_LIVE = '-infinity';
/** The comment every credential role carries: who made it, and when (Postgres keeps no creation time of roles). */
const COMMENT_PREFIX = 'pg-provisioner credential, made ';

/** The settings of a credential role of kind `access`: the app's limits, and what makes it full or read-only. */
export function credentialSettingsSql(app: AppIdentifiers, role: string, access: CredentialAccess, limits: AppRoleLimits): string {
  const own = access === 'full' ? `ALTER ROLE ${ident(role)} SET role = ${literal(app.username)};` : `ALTER ROLE ${ident(role)} SET default_transaction_read_only = on;`;
  return `${roleSettingsSql(role, limits)}\n     ${own}`;
}

/**
 * Makes the credential's login role, not live yet (NOLOGIN, marked): its attributes, memberships, settings and
 * CONNECT on the app's database. One message of several statements: one implicit transaction.
 */
export async function createCredentialRole(db: Queryable, app: AppIdentifiers, role: string, access: CredentialAccess, passwordVerifier: string, limits: AppRoleLimits): Promise<void> {
  const name = ident(role);
  const memberOf = access === 'full' ? ident(app.username) : `${ident(APPS_GROUP_ROLE)}, ${ident(app.accessRole)}`;
  await db.query(
    `CREATE ROLE ${name} WITH NOLOGIN PASSWORD ${literal(passwordVerifier)} VALID UNTIL ${literal(NOT_LIVE)}
       NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT ${limits.connectionLimit} IN ROLE ${memberOf};
     ${credentialSettingsSql(app, role, access, limits)}
     COMMENT ON ROLE ${name} IS ${literal(COMMENT_PREFIX + new Date().toISOString())};
     GRANT CONNECT ON DATABASE ${ident(app.database)} TO ${name};`,
  );
}

/**
 * Inside `database` (the app's, or a restore's copy of it), what the credential needs there; only catalog changes,
 * run as the superuser: no code of the tenant's runs (SECURITY.md, promise 8's table). Both kinds: CONNECT (neither
 * inherits it: see the header). read_only also: USAGE on every schema the app's login role owns and SELECT on every
 * table, view and sequence in them, and on those the app's login role makes later (default privileges).
 */
export async function grantCredentialAccess(opener: DatabaseOpener, database: string, app: AppIdentifiers, credential: { role: string; access: CredentialAccess }): Promise<void> {
  const name = ident(credential.role);
  const owner = ident(app.username);
  await opener.inDatabase(database, async (inside) => {
    await inside.query(largeObjectsForAppOnlySql(app));
    if (credential.access === 'full') {
      await inside.query(`GRANT CONNECT ON DATABASE ${ident(database)} TO ${name}`);
      return;
    }
    const { rows } = await inside.query<{ nspname: string }>(
      `SELECT n.nspname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE r.rolname = $1 ORDER BY 1`,
      [app.username],
    );
    const perSchema = rows.map(({ nspname }) => {
      const schema = ident(nspname);
      return `GRANT USAGE ON SCHEMA ${schema} TO ${name};
       GRANT SELECT ON ALL TABLES IN SCHEMA ${schema} TO ${name};
       GRANT SELECT ON ALL SEQUENCES IN SCHEMA ${schema} TO ${name};`;
    });
    await inside.query(
      `${perSchema.join('\n       ')}
       ALTER DEFAULT PRIVILEGES FOR ROLE ${owner} GRANT USAGE ON SCHEMAS TO ${name};
       ALTER DEFAULT PRIVILEGES FOR ROLE ${owner} GRANT SELECT ON TABLES TO ${name};
       ALTER DEFAULT PRIVILEGES FOR ROLE ${owner} GRANT SELECT ON SEQUENCES TO ${name};
       GRANT CONNECT ON DATABASE ${ident(database)} TO ${name};`,
    );
  });
}

/**
 * The functions that make a large object, by their signatures in pg_catalog. Postgres lets every role make large
 * objects (PUBLIC's EXECUTE, and no privilege to create one), and the maker owns it: a read_only credential (its
 * read-only guard lifted) or a full one after SET ROLE NONE would so write into the app's database, and own
 * something the app's dump agent cannot read, which stops every backup of the app (found by
 * test/stack/redteam-15.test.ts). Server-side lo_import is the superuser's already.
 */
const LARGE_OBJECT_MAKERS = ['lo_creat(pg_catalog.int4)', 'lo_create(pg_catalog.oid)', 'lo_from_bytea(pg_catalog.oid, pg_catalog.bytea)'].map((signature) => `pg_catalog.${signature}`).join(', ');

/**
 * In the database the session is in: only the app's login role (and so a full credential, whose sessions are it)
 * may make large objects. ACL changes, no code of the tenant's runs. A dump carries them, and its restore by the
 * app's agent cannot make them (a warning, not an error): grantCredentialsIn makes them again after it.
 */
function largeObjectsForAppOnlySql(app: AppIdentifiers): string {
  return `REVOKE EXECUTE ON FUNCTION ${LARGE_OBJECT_MAKERS} FROM PUBLIC;
     GRANT EXECUTE ON FUNCTION ${LARGE_OBJECT_MAKERS} TO ${ident(app.username)};`;
}

/** The credential is live: it may log in (its password is the one it was made or rotated with). */
export async function makeCredentialLive(db: Queryable, role: string): Promise<void> {
  await db.query(`ALTER ROLE ${ident(role)} WITH LOGIN VALID UNTIL 'infinity'`);
}

/** The credential is no longer live: no login is accepted, and the reconciler drops it if its removal is cut short. */
export async function retireCredential(db: Queryable, role: string): Promise<void> {
  await db.query(`ALTER ROLE ${ident(role)} WITH NOLOGIN VALID UNTIL ${literal(NOT_LIVE)}`);
}

/** One credential role as the catalog shows it. */
export interface CredentialRole {
  appName: string;
  credential: string;
  role: string;
  /** undefined: neither a member of the app's login role nor of its access role (not made by us, or half-made). */
  access: CredentialAccess | undefined;
  /** Being made or being removed (marked): not a credential anyone holds. */
  live: boolean;
  loginAllowed: boolean;
  createdAt: string | null;
}

interface CredentialRow {
  rolname: string;
  is_full: boolean;
  is_read_only: boolean;
  live: boolean;
  login_allowed: boolean;
  comment: string | null;
}

function credentialOf(row: CredentialRow): CredentialRole | undefined {
  const names = credentialOfRole(row.rolname);
  if (!names) return undefined;
  const access: CredentialAccess | undefined = row.is_full ? 'full' : row.is_read_only ? 'read_only' : undefined;
  const createdAt = row.comment?.startsWith(COMMENT_PREFIX) ? row.comment.slice(COMMENT_PREFIX.length) : null;
  return { ...names, role: row.rolname, access, live: row.live, loginAllowed: row.login_allowed, createdAt };
}

/** The app a credential role belongs to, in SQL (the pattern's first group). */
const APP_OF_ROLE = `substring(r.rolname FROM '${CREDENTIAL_SQL.rolePattern}')`;

const CREDENTIAL_COLUMNS = `r.rolname,
  EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
           WHERE m.member = r.oid AND g.rolname = ${APP_SQL.loginRoleOf(APP_OF_ROLE)}) AS is_full,
  EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
           WHERE m.member = r.oid AND g.rolname = ${APP_SQL.databaseOf(APP_OF_ROLE)}) AS is_read_only,
  (r.rolvaliduntil IS NULL OR r.rolvaliduntil > now()) AS live,
  r.rolcanlogin AS login_allowed,
  shobj_description(r.oid, 'pg_authid') AS comment`;

/** The credential roles of `app` (live or not), by name. */
export async function credentialRoles(db: Queryable, app: AppIdentifiers): Promise<CredentialRole[]> {
  const { rows } = await db.query<CredentialRow>(
    `SELECT ${CREDENTIAL_COLUMNS} FROM pg_roles r WHERE r.rolname LIKE $1 AND r.rolname ~ '${CREDENTIAL_SQL.rolePattern}' ORDER BY r.rolname`,
    [CREDENTIAL_SQL.likeOf(app)],
  );
  return rows.flatMap((row) => credentialOf(row) ?? []);
}

/** The app's live credentials (being made or being removed ones are not). */
export async function liveCredentials(db: Queryable, app: AppIdentifiers): Promise<Array<CredentialRole & { access: CredentialAccess }>> {
  return (await credentialRoles(db, app)).filter((c): c is CredentialRole & { access: CredentialAccess } => c.live && c.access !== undefined);
}

/** Every credential role on the server, of every app (for the reconciler). */
export async function allCredentialRoles(db: Queryable): Promise<CredentialRole[]> {
  const { rows } = await db.query<CredentialRow>(`SELECT ${CREDENTIAL_COLUMNS} FROM pg_roles r WHERE r.rolname ~ '${CREDENTIAL_SQL.rolePattern}' ORDER BY r.rolname`);
  return rows.flatMap((row) => credentialOf(row) ?? []);
}

/**
 * Every credential that the apps' door must know: its login role, the app's main database (the only one the door
 * admits it to), and its SCRAM verifier when it may log in now (live, LOGIN, not suspended by the storage quota's
 * CONNECTION LIMIT 0, a SCRAM verifier), else null (the door refuses it). Only credential roles in the apps' group (directly or through the app's login role), never a
 * superuser: see appLoginVerifiers, its twin for the apps' own logins.
 */
export async function credentialLoginVerifiers(db: Queryable): Promise<Array<{ name: string; database: string; verifier: string | null }>> {
  const { rows } = await db.query<{ name: string; database: string; verifier: string | null }>(
    `SELECT r.rolname AS name, ${APP_SQL.databaseOf(APP_OF_ROLE)} AS database,
            CASE WHEN r.rolcanlogin AND r.rolconnlimit <> 0 AND r.rolpassword LIKE 'SCRAM-SHA-256$%' AND (r.rolvaliduntil IS NULL OR r.rolvaliduntil > now())
                 THEN r.rolpassword END AS verifier
       FROM pg_authid r
      WHERE NOT r.rolsuper AND r.rolname ~ '${CREDENTIAL_SQL.rolePattern}' AND pg_has_role(r.oid, $1, 'MEMBER')
      ORDER BY r.rolname`,
    [APPS_GROUP_ROLE],
  );
  return rows;
}

/** Puts a credential role back as `before` says, after a restore (putBackRoleState, with the credential's settings). */
export function putBackCredentialState(db: Queryable, app: AppIdentifiers, credential: { role: string; access: CredentialAccess }, before: RoleState, limits: AppRoleLimits): Promise<string[]> {
  return putBackRoleState(db, credential.role, before, credentialSettingsSql(app, credential.role, credential.access, limits));
}
