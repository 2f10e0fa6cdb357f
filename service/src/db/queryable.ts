// Owns the types through which the rest of the service hands connections to the functions of src/db/: anything
// that runs a query (a pooled connection, one of its own, or the connection pool itself), and what opens short
// connections into one database by name.
import type pg from 'pg';

/** What a function of src/db/ runs its statements on. */
export type Queryable = Pick<pg.ClientBase, 'query'>;

/** A connection of its own, outside the pool, which its holder ends. */
export type OwnConnection = Queryable & Pick<pg.Client, 'end'>;

/** Opens a short-lived superuser connection into `database` (DDL that must run inside it) and ends it after `work`. */
export interface DatabaseOpener {
  inDatabase<T>(database: string, work: (client: Queryable) => Promise<T>): Promise<T>;
}
