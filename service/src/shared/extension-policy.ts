// Owns which extensions the service may install as the superuser into an app's database: the operator's list
// (APP_EXTENSIONS_ALLOWED, src/shared/config.ts), its default, and the built-in refusals no setting overrides,
// each with the reason an operator is told at start. Extensions Postgres marks trusted are not the service's
// business: an app creates those itself (SECURITY.md, promise 2).
import { EXTENSION_NAME_PATTERN } from './object-names.js';

/**
 * The default APP_EXTENSIONS_ALLOWED: extensions that need a superuser to create, and give an app nothing of
 * another app's. pg_stat_statements: the statistics of the app's own statements (other roles' query texts show
 * as <insufficient privilege>; needs shared_preload_libraries, postgres.conf). pgstattuple: tuple-level
 * statistics of the app's own tables and indexes (the service grants its functions to the app).
 */
export const DEFAULT_ALLOWED_EXTENSIONS: readonly string[] = ['pg_stat_statements', 'pgstattuple'];

const CONNECTS_OUT = 'it opens connections out of the app\'s database: to other apps\' databases on this server, or to anywhere on the network';
const UNTRUSTED_LANGUAGE = 'an untrusted language: its functions run any code as the Postgres OS user, which reads every database\'s files';

/** Refused whatever APP_EXTENSIONS_ALLOWED says: each lets an app leave its database, or see other apps' data. */
const REFUSED_EXTENSIONS: ReadonlyMap<string, string> = new Map([
  ['dblink', CONNECTS_OUT],
  ['postgres_fdw', CONNECTS_OUT],
  ['file_fdw', 'it reads files on the server, and the output of programs it runs there'],
  ['adminpack', 'it writes, renames and removes files on the server'],
  ['plpython3u', UNTRUSTED_LANGUAGE],
  ['plpython2u', UNTRUSTED_LANGUAGE],
  ['plpythonu', UNTRUSTED_LANGUAGE],
  ['plperlu', UNTRUSTED_LANGUAGE],
  ['pltclu', UNTRUSTED_LANGUAGE],
  ['pg_walinspect', 'it reads the write-ahead log, which holds every database\'s changes: other apps\' rows'],
  ['pageinspect', 'it reads raw pages of any relation, shared catalogs included: pg_authid holds every role\'s password verifier'],
  ['pg_buffercache', 'it shows every database\'s pages in shared memory: which of other apps\' tables are read, and how much'],
  ['xml2', 'deprecated, and its XSLT processing has read server files before (CVE-2012-3488)'],
]);

/** Why the service refuses `name` whatever the settings say, or undefined if it does not. */
export function refusalOf(name: string): string | undefined {
  const listed = REFUSED_EXTENSIONS.get(name);
  if (listed) return listed;
  // Every foreign-data wrapper reaches outside the database (another server, files): mysql_fdw, oracle_fdw, …
  if (name.endsWith('_fdw')) return 'a foreign-data wrapper: it reaches outside the app\'s database (another server, or files)';
  return undefined;
}

/** The names refused by name (for documentation and tests); `*_fdw` is refused too. */
export const REFUSED_EXTENSION_NAMES: readonly string[] = [...REFUSED_EXTENSIONS.keys()];

/**
 * APP_EXTENSIONS_ALLOWED as written (comma-separated; empty: none) to the names it allows, and the problems
 * with it: a name outside the rule, or one the service refuses (named, with the reason).
 */
export function parseAllowedExtensions(text: string): { names: string[]; problems: string[] } {
  const names: string[] = [];
  const problems: string[] = [];
  for (const name of text.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '')) {
    if (!EXTENSION_NAME_PATTERN.test(name)) {
      problems.push(`${JSON.stringify(name)} is not an extension name (lowercase letters, digits, _ and -)`);
      continue;
    }
    const refused = refusalOf(name);
    if (refused) problems.push(`${name} is refused by the service whatever this setting says: ${refused}`);
    else if (!names.includes(name)) names.push(name);
  }
  return { names, problems };
}

/**
 * Extensions whose library must be loaded at the server's start (shared_preload_libraries in postgres.conf):
 * installed without it, their views fail. The service refuses to install them on a server that did not load it.
 */
export const PRELOAD_LIBRARY_OF: ReadonlyMap<string, string> = new Map([['pg_stat_statements', 'pg_stat_statements']]);
