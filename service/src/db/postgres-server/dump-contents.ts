// Owns reading a dump's table of contents (`pg_restore --list`) for what a restore must do as the superuser
// before pg_restore runs as the app's agent: the extensions the dump creates (an agent cannot create one that
// needs a superuser) and the service's schema for them (src/db/postgres-server/extensions.ts), and the list
// pg_restore then follows without their entries (--use-list).
//
// Each entry is a line `<dump id>; <catalog table oid> <oid> <kind> <schema> <name> <owner>`. Names are a
// tenant's choice and may hold spaces (pg_restore turns newlines and carriage returns into spaces), so an entry
// is recognised only by what a tenant cannot choose: the catalog table of an extension (pg_extension), the exact
// line of the service's schema owned by a superuser, and kinds a tenant's objects cannot have.
import { EXTENSION_NAME_PATTERN, SERVICE_EXTENSIONS_SCHEMA } from '../../shared/object-names.js';

/** pg_extension's and pg_namespace's fixed oids: an entry's catalog table. */
const PG_EXTENSION = 3079;
const PG_NAMESPACE = 2615;

export interface DumpEntry {
  id: number;
  catalogTable: number;
  /** The rest of the line: kind, schema, name, owner. */
  text: string;
}

export interface DumpListing {
  /** The listing as pg_restore printed it, line by line (comments included): what --use-list takes back. */
  lines: string[];
  entries: DumpEntry[];
}

const ENTRY_LINE = /^(\d+); (\d+) (\d+) (.*)$/;

export function parseDumpListing(listing: string): DumpListing {
  const lines = listing.split('\n');
  const entries: DumpEntry[] = [];
  for (const line of lines) {
    const match = ENTRY_LINE.exec(line);
    if (match) entries.push({ id: Number(match[1]), catalogTable: Number(match[2]), text: match[4]! });
  }
  return { lines, entries };
}

export interface DumpExtensions {
  /** Every extension the dump creates, with its own entries (its CREATE EXTENSION, and the COMMENT on it). */
  extensions: Array<{ name: string; entryIds: number[] }>;
  /**
   * The entries of the service's schema when the dump has it (owned by a superuser): the schema, the grant and
   * comment on it, and the grants on what is in it (the service's grants on extension functions). Undefined
   * when the dump has no such schema.
   */
  serviceSchemaEntryIds: number[] | undefined;
}

const EXTENSION_NAME = EXTENSION_NAME_PATTERN.source.slice(1, -1);
const EXTENSION_ENTRY = new RegExp(`^EXTENSION - (${EXTENSION_NAME}) ?$`);
const EXTENSION_COMMENT_ENTRY = new RegExp(`^COMMENT - EXTENSION (${EXTENSION_NAME}) ?$`);

/** The extensions in a dump and the service's schema, as `superusers` (their names) tell the service's from a tenant's. */
export function dumpExtensions(entries: DumpEntry[], superusers: ReadonlySet<string>): DumpExtensions {
  const byName = new Map<string, number[]>();
  for (const entry of entries) {
    const created = entry.catalogTable === PG_EXTENSION ? EXTENSION_ENTRY.exec(entry.text) : null;
    if (created) byName.set(created[1]!, [...(byName.get(created[1]!) ?? []), entry.id]);
  }
  for (const entry of entries) {
    const commented = entry.catalogTable === 0 ? EXTENSION_COMMENT_ENTRY.exec(entry.text) : null;
    if (commented && byName.has(commented[1]!)) byName.get(commented[1]!)!.push(entry.id);
  }

  const owners = [...superusers];
  const schemaLine = (entry: DumpEntry) => entry.catalogTable === PG_NAMESPACE && owners.some((owner) => entry.text === `SCHEMA - ${SERVICE_EXTENSIONS_SCHEMA} ${owner}`);
  let serviceSchemaEntryIds: number[] | undefined;
  if (entries.some(schemaLine)) {
    serviceSchemaEntryIds = entries
      .filter(
        (entry) =>
          schemaLine(entry) ||
          (entry.catalogTable === 0 &&
            owners.some(
              (owner) =>
                entry.text === `ACL - SCHEMA ${SERVICE_EXTENSIONS_SCHEMA} ${owner}` ||
                entry.text === `COMMENT - SCHEMA ${SERVICE_EXTENSIONS_SCHEMA} ${owner}` ||
                (entry.text.startsWith(`ACL ${SERVICE_EXTENSIONS_SCHEMA} `) && entry.text.endsWith(` ${owner}`)),
            )),
      )
      .map((entry) => entry.id);
  }
  return { extensions: [...byName].map(([name, entryIds]) => ({ name, entryIds })), serviceSchemaEntryIds };
}

/**
 * The entries that change privileges on pg_catalog's own objects (pg_dump keeps them where they differ from
 * initdb's: the service's, e.g. only the app's login may make large objects where it has credentials). The restore's
 * agent, the app's rights, can change none of them, and one naming a role that is gone (another app's login, for a
 * deleted app's dump) stops pg_restore; the service makes its own again after the restore (grantCredentialsIn).
 * Recognised by the schema, which no tenant can name: `pg_` schemas are reserved, and only a superuser creates in
 * pg_catalog.
 */
export function systemCatalogAclEntryIds(entries: DumpEntry[]): number[] {
  return entries.filter((entry) => entry.text.startsWith('ACL pg_catalog ')).map((entry) => entry.id);
}

/** The listing for --use-list with the entries `skip` commented out (pg_restore reads only each line's dump id). */
export function listingWithout(listing: DumpListing, skip: ReadonlySet<number>): string {
  return listing.lines
    .map((line) => {
      const match = ENTRY_LINE.exec(line);
      return match && skip.has(Number(match[1])) ? `;${line}` : line;
    })
    .join('\n');
}
