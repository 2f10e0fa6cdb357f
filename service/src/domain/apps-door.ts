// Owns what the operations tell the apps' door (the pooler in front of a server, src/db/pooler/pgbouncer.ts) after
// they change an app: its logins changed, or its pooled connections must end. The change itself has committed on
// the server by then, and Postgres enforces it whatever the door knows (a refused login is refused by Postgres
// too): so a door that cannot be told now is logged and catches up in the background, and the operation stands.
import type { PostgresServer } from '../db/postgres-server/postgres-server.js';
import type { AppIdentifiers } from '../shared/object-names.js';

/** Tells the door `what`; if it cannot be told now, says so in the log (`failure`) and lets the operation stand. */
async function tellDoor(server: PostgresServer, app: AppIdentifiers, what: () => Promise<void>, failure: string): Promise<void> {
  try {
    await what();
  } catch (err) {
    server.log.warn({ err, app: app.appName }, failure);
  }
}

/** The door admits the app's logins as they now are on `server` (a new app, a new password, a refused login). */
export function doorTakesLogins(server: PostgresServer, app: AppIdentifiers): Promise<void> {
  return tellDoor(server, app, () => server.pooler.loginsChanged(), 'the pooler has not taken the change to app logins yet; it is tried again in the background');
}

/**
 * Every pooled connection to the app's database ends now, clients' and the server's (rotate, delete), and to each of
 * its companion databases (a client logged in to a companion with an old password must not stay in a pool that
 * server connections opened with the new one serve); or, given `database` (a companion being removed), to it only.
 */
export function doorEndsConnections(server: PostgresServer, app: AppIdentifiers, database = app.database): Promise<void> {
  return tellDoor(server, app, () => server.pooler.endConnections(database), "the pooler could not end the app's pooled connections; Postgres ends their sessions");
}

/**
 * The app's pooled server connections close as they are released; its clients stay, and their next transaction
 * runs on a new server connection (restore: on the restored database; a branch: once its source takes connections
 * again). Safe while the app's logins go on.
 */
export function doorReconnects(server: PostgresServer, app: AppIdentifiers, database = app.database): Promise<void> {
  return tellDoor(server, app, () => server.pooler.reconnect(database), "the pooler could not close the app's pooled server connections; Postgres ends their sessions");
}
