// An app's own sessions: connections made exactly as an app would make them, from the connection string the
// service returned, and the CA certificate an app using node-postgres is told to add (README, "TLS"):
// node-postgres reads sslmode=require as verify-full, so it checks the server against that CA.
import pg from 'pg';

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
