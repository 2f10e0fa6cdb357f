// An app's own sessions: connections made exactly as an app would make them, from the connection string the
// service returned.
import pg from 'pg';

/** Connects as an app would, with a connection string exactly as the service returned it. */
export async function connectAs(connectionString: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: 5000 });
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
