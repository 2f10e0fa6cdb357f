// An app's own sessions: connections made exactly as an app would make them, from the connection string the
// service returned, and the CA certificate an app using node-postgres is told to add (README, "TLS"):
// node-postgres reads sslmode=require as verify-full, so it checks the server against that CA.
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { beginLogin, type FinishResult, type PausedLogin } from './raw-pg.js';

let trustedAuthority: string | undefined;

/** The CA certificate (a file) that apps of this test process check the doors' TLS certificate against. */
export function trustAuthority(caCertificateFile: string): void {
  trustedAuthority = caCertificateFile;
}

/** The connection string as an app using node-postgres gives it: the service's, with sslrootcert= the CA's file. */
export function withAuthority(connectionString: string): string {
  if (!trustedAuthority) return connectionString;
  const url = new URL(connectionString);
  if (!url.searchParams.has('sslmode') || url.searchParams.get('sslmode') === 'disable') return connectionString;
  url.searchParams.set('sslrootcert', trustedAuthority);
  return url.toString();
}

/** Connects as an app would, with a connection string exactly as the service returned it (and the CA, above). */
export async function connectAs(connectionString: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: withAuthority(connectionString), connectionTimeoutMillis: 5000 });
  client.on('error', () => {});
  await client.connect();
  return client;
}

/** A connection string for the same login, pointed at another database. */
export function withDatabase(connectionString: string, database: string): string {
  const url = new URL(connectionString);
  url.pathname = `/${database}`;
  return url.toString();
}

/** Runs `work` as the app; always closes the connection. */
export async function asApp<T>(connectionString: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = await connectAs(connectionString);
  try {
    return await work(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * The two doors an app is given: the pooler (PgBouncer, `connection_string`, the one apps use) and Postgres itself
 * (`direct_connection_string`, when the operator opened it; throwaway test stacks always do). Isolation is proved
 * through each: what one door refuses, the other must refuse too.
 */
export type Door = 'pooled' | 'direct';
export const DOORS: ReadonlyArray<{ door: Door; title: string }> = [
  { door: 'pooled', title: 'through the pooler' },
  { door: 'direct', title: 'direct' },
];

/** An app as the service answered for it: at least its pooled string, and the direct one where that door is open. */
export interface AppDoors {
  connection_string: string;
  direct_connection_string?: unknown;
}

/** The app's connection string for `door`, exactly as the service returned it. */
export function doorString(app: AppDoors, door: Door): string {
  if (door === 'pooled') return app.connection_string;
  if (typeof app.direct_connection_string !== 'string') throw new Error('the answer has no direct_connection_string: the stack was started without the direct door');
  return app.direct_connection_string;
}

/** A connection string for another login (user and password) at the same door and database. */
export function withLogin(connectionString: string, user: string, password: string): string {
  const url = new URL(connectionString);
  url.username = encodeURIComponent(user);
  url.password = encodeURIComponent(password);
  return url.toString();
}

/** The CA certificate's text (PEM) that apps of this test process trust; for clients that are not node-postgres. */
export function trustedAuthorityPem(): string {
  if (!trustedAuthority) throw new Error('no CA trusted yet: trustAuthority(file) first');
  return readFileSync(trustedAuthority, 'utf8');
}

/**
 * A raw login (test/helpers/raw-pg.ts) as the connection string says (its password unless `password` is given),
 * over TLS checked against the trusted CA when the string asks for TLS, paused after the server read the role's
 * verifier: to finish it later, e.g. across a rotation.
 */
export function pausedLoginAs(connectionString: string, password?: string): Promise<PausedLogin> {
  const url = new URL(connectionString);
  const sslmode = url.searchParams.get('sslmode');
  const tls = sslmode && sslmode !== 'disable' ? { ca: trustedAuthorityPem() } : undefined;
  return beginLogin({
    host: url.hostname,
    port: Number(url.port),
    user: decodeURIComponent(url.username),
    password: password ?? decodeURIComponent(url.password),
    database: decodeURIComponent(url.pathname.slice(1)),
    ...(tls ? { tls } : {}),
  });
}

/**
 * Who a finished paused login's session runs as: "user@database" from the server, or undefined when it got no
 * session, or its session cannot run a query. Asks at once; what it resolves to is known when the query ends, or
 * after `waitMs` with no answer (undefined: it ran nothing so far). Through the pooler a login may be admitted by
 * PgBouncer (which checks the password itself) and still fail at the server: its query waits for a server
 * connection PgBouncer cannot open for it; one a fresh login opens meanwhile must not serve it either.
 */
export function sessionIdentity(login: PausedLogin, finished: FinishResult, waitMs = 20_000): Promise<string | undefined> {
  if (!finished.ok) return Promise.resolve(undefined);
  const query = login.query("SELECT current_user || '@' || current_database()").then(
    (identity) => identity ?? undefined,
    () => undefined,
  );
  let timer: NodeJS.Timeout | undefined;
  const unanswered = new Promise<undefined>((resolve) => (timer = setTimeout(resolve, waitMs, undefined)));
  return Promise.race([query, unanswered]).finally(() => clearTimeout(timer));
}
