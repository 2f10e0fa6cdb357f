// Owns the shapes shared by routes. Response schemas are allowlists: a field not named here never leaves
// the service.
import { z } from 'zod';
import { AppNameSchema, type AppIdentifiers } from '../../shared/object-names.js';
import type { Config } from '../../shared/config.js';

export const ErrorSchema = z.object({
  statusCode: z.number().int(),
  error: z.string(),
  message: z.string(),
  /** 5xx only: the request's id (nginx's X-Request-Id), which finds the log line that holds the detail. */
  request_id: z.string().optional(),
});

export const errorResponses = {
  400: ErrorSchema,
  401: ErrorSchema,
  404: ErrorSchema,
  409: ErrorSchema,
  422: ErrorSchema,
  429: ErrorSchema,
  500: ErrorSchema,
  503: ErrorSchema,
};

/** One backup file: the app (name and incarnation) it was taken of, its size and time. */
export const BackupSchema = z.object({
  file: z.string(),
  app_name: z.string(),
  incarnation: z.string().nullable(),
  size_bytes: z.number().int(),
  created_at: z.string(),
  /** Its SHA-256 (hex), as written beside it in <file>.sha256; null for dumps made before checksums. Not in GET /backups. */
  sha256: z.string().nullable().optional(),
});

export const AppNameParamsSchema = z.object({ name: AppNameSchema });

/**
 * What an app needs to connect; returned by provisioning and rotation, and nowhere else. One login in three
 * forms: connection_string (postgres://, as the original README has it), database_url (the same with the
 * postgresql:// scheme, the only one SQLAlchemy takes), and the parts, for drivers and tools that take them so.
 * All name the apps' door (the pooler, when there is one: `pooling` says in which mode); direct_connection_string,
 * where the operator opened the direct door, names Postgres itself, for what needs a session of its own.
 */
export const CredentialsSchema = z.object({
  connection_string: z.string(),
  database_url: z.string(),
  /** transaction (or session, statement): through PgBouncer in that mode; none: straight to Postgres. */
  pooling: z.enum(['transaction', 'session', 'statement', 'none']),
  direct_connection_string: z.string().optional(),
  app_name: z.string(),
  database: z.string(),
  username: z.string(),
  password: z.string(),
  host: z.string(),
  port: z.number().int(),
  sslmode: z.string(),
});

export function credentialsBody(config: Config, app: AppIdentifiers, password: string): z.infer<typeof CredentialsSchema> {
  return { ...doorStrings(config, app.username, app.database, password), app_name: app.appName, database: app.database, username: app.username, password };
}

/**
 * One login to one database through the doors, in every form an answer gives it (connection_string,
 * database_url, direct_connection_string, the parts): with the password, or without it (`password` undefined:
 * postgres://user@host…, for a database the app reaches with the password it already has).
 */
export function doorStrings(config: Config, username: string, database: string, password?: string) {
  const user = encodeURIComponent(username);
  const secret = password === undefined ? '' : `:${encodeURIComponent(password)}`;
  const { PUBLIC_DB_HOST: host, PUBLIC_DB_PORT: port, PUBLIC_DB_SSLMODE: sslmode, DIRECT_DB_HOST: directHost, DIRECT_DB_PORT: directPort } = config;
  const location = (at: string, atPort: number) => `${user}${secret}@${at}:${atPort}/${database}?sslmode=${sslmode}`;
  return {
    connection_string: `postgres://${location(host, port)}`,
    database_url: `postgresql://${location(host, port)}`,
    pooling: config.POOLER_AUTH_FILE ? config.POOLER_POOL_MODE : ('none' as const),
    ...(directHost ? { direct_connection_string: `postgres://${location(directHost, directPort)}` } : {}),
    host,
    port,
    sslmode,
  };
}

/** Where an admin request came from and which request it was, for the audit log. */
export function requestContext(request: { id: string; ip: string }) {
  return { requestId: request.id, client: request.ip };
}
