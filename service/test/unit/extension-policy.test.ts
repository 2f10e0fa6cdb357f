// The extensions an operator enables (src/shared/extension-policy.ts): APP_EXTENSIONS_ALLOWED as the config reads
// it, the built-in refusals no setting overrides, and how a restore reads a dump's listing for the extensions in it
// (src/db/postgres-server/dump-contents.ts), hostile object names included. End to end: test/stack/extensions.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { dumpExtensions, listingWithout, parseDumpListing, systemCatalogAclEntryIds } from '../../src/db/postgres-server/dump-contents.js';
import { ConfigError, loadConfig } from '../../src/shared/config.js';
import { DEFAULT_ALLOWED_EXTENSIONS, REFUSED_EXTENSION_NAMES, refusalOf } from '../../src/shared/extension-policy.js';
import { EXTENSION_NAME_PATTERN } from '../../src/shared/object-names.js';

const configWith = (allowed?: string) => loadConfig({ POSTGRES_PASSWORD: 'x', ...(allowed === undefined ? {} : { APP_EXTENSIONS_ALLOWED: allowed }) });

describe('APP_EXTENSIONS_ALLOWED', () => {
  it('defaults to superuser-only extensions that show an app nothing of another app: pg_stat_statements and pgstattuple', () => {
    assert.deepEqual(configWith().APP_EXTENSIONS_ALLOWED, ['pg_stat_statements', 'pgstattuple']);
    assert.deepEqual(DEFAULT_ALLOWED_EXTENSIONS, ['pg_stat_statements', 'pgstattuple']);
  });

  it('takes a comma-separated list (spaces and repeats forgiven); empty allows none', () => {
    assert.deepEqual(configWith(' pgrowlocks , bloom,pgrowlocks,,uuid-ossp ').APP_EXTENSIONS_ALLOWED, ['pgrowlocks', 'bloom', 'uuid-ossp']);
    assert.deepEqual(configWith('').APP_EXTENSIONS_ALLOWED, []);
  });

  it('stops the start naming each refused extension and why, whatever else the list holds', () => {
    assert.throws(() => configWith('pg_stat_statements,dblink,file_fdw'), (thrown: unknown) => {
      assert.ok(thrown instanceof ConfigError);
      assert.match(thrown.message, /APP_EXTENSIONS_ALLOWED is invalid: dblink is refused by the service whatever this setting says: it opens connections out of the app's database/);
      assert.match(thrown.message, /APP_EXTENSIONS_ALLOWED is invalid: file_fdw is refused .*: it reads files on the server/);
      return true;
    });
  });

  it('refuses, each with a reason: connections out, server files, untrusted languages, other databases\' data, any foreign-data wrapper', () => {
    for (const name of ['dblink', 'postgres_fdw', 'file_fdw', 'adminpack', 'plpython3u', 'plperlu', 'pltclu', 'pg_walinspect', 'pageinspect', 'pg_buffercache']) {
      assert.ok(REFUSED_EXTENSION_NAMES.includes(name), name);
      assert.throws(() => configWith(name), new RegExp(`${name} is refused by the service whatever this setting says: \\S`), name);
    }
    assert.match(refusalOf('mysql_fdw') ?? '', /foreign-data wrapper/);
    assert.equal(refusalOf('pg_stat_statements'), undefined);
    assert.equal(refusalOf('pgstattuple'), undefined);
  });

  it('refuses a name outside the rule (no SQL, no quotes, no upper case)', () => {
    for (const bad of ['Pg_Stat', 'a;b', 'x"y', "x'y", 'a b', 'x'.repeat(64), '-x']) {
      assert.throws(() => configWith(bad), /APP_EXTENSIONS_ALLOWED is invalid: .* is not an extension name/, bad);
    }
    assert.ok(EXTENSION_NAME_PATTERN.test('uuid-ossp'));
  });
});

describe("a dump's listing, for a restore", () => {
  // As pg_restore --list prints it for an app with pg_stat_statements and pgstattuple (installed by the service,
  // with its grant on a pgstattuple function), citext (made by the app in the service's schema) and pg_trgm (the
  // app's, in public), plus tenant objects named to look like the service's entries.
  const listing = parseDumpListing(
    [
      ';',
      '; Selected TOC Entries:',
      ';',
      '11; 2615 16391 SCHEMA - extensions postgres',
      '3574; 0 0 ACL - SCHEMA extensions postgres',
      '10; 2615 2200 SCHEMA - public app_t_user',
      '12; 2615 16718 SCHEMA - - app_t_user',
      '3; 3079 16473 EXTENSION - citext ',
      '3576; 0 0 COMMENT - EXTENSION citext ',
      '5; 3079 16669 EXTENSION - pg_stat_statements ',
      '3578; 0 0 COMMENT - EXTENSION pg_stat_statements ',
      '2; 3079 16392 EXTENSION - pg_trgm ',
      '6; 3079 16700 EXTENSION - pgstattuple ',
      '3580; 0 0 COMMENT - EXTENSION pgstattuple ',
      '3581; 0 0 ACL extensions FUNCTION pgstattuple(reloid regclass, OUT table_len bigint) postgres',
      '225; 1259 16719 TABLE - EXTENSION pg_stat_statements app_t_user',
      '3593; 0 0 COMMENT - TABLE "EXTENSION pg_stat_statements" app_t_user',
      '224; 1259 16715 TABLE public x 5; 3079 16669 EXTENSION - dblink app_t_user',
      '226; 1259 16720 TABLE public y SCHEMA - extensions postgres app_t_user',
      '227; 0 0 ACL public TABLE z ACL extensions postgres app_t_user',
      '3575; 0 16710 TABLE DATA public t app_t_user',
    ].join('\n'),
  );

  it('finds the extensions by their catalog (pg_extension), never by a look-alike table name', () => {
    const found = dumpExtensions(listing.entries, new Set(['postgres']));
    assert.deepEqual(found.extensions, [
      { name: 'citext', entryIds: [3, 3576] },
      { name: 'pg_stat_statements', entryIds: [5, 3578] },
      { name: 'pg_trgm', entryIds: [2] },
      { name: 'pgstattuple', entryIds: [6, 3580] },
    ]);
    assert.deepEqual(found.serviceSchemaEntryIds, [11, 3574, 3581]);
  });

  it("sees no service schema where the dump's schema of that name is not a superuser's", () => {
    const tenants = parseDumpListing(['11; 2615 16391 SCHEMA - extensions app_t_user', '3574; 0 0 ACL - SCHEMA extensions app_t_user'].join('\n'));
    assert.equal(dumpExtensions(tenants.entries, new Set(['postgres'])).serviceSchemaEntryIds, undefined);
  });

  it('comments out exactly the skipped entries for --use-list, and keeps every other line as it was', () => {
    const lines = listingWithout(listing, new Set([5, 3578, 11])).split('\n');
    assert.equal(lines.length, listing.lines.length);
    assert.deepEqual(lines.filter((line, i) => line !== listing.lines[i]), [
      ';11; 2615 16391 SCHEMA - extensions postgres',
      ';5; 3079 16669 EXTENSION - pg_stat_statements ',
      ';3578; 0 0 COMMENT - EXTENSION pg_stat_statements ',
    ]);
  });

  it("finds the privileges on pg_catalog's own objects by their schema, which no tenant can name, never by a look-alike", () => {
    const acls = parseDumpListing(
      [
        '3601; 0 0 ACL pg_catalog FUNCTION lo_create(oid) postgres',
        '3602; 0 0 ACL pg_catalog FUNCTION lo_from_bytea(oid, bytea) postgres',
        '3603; 0 0 ACL public TABLE "ACL pg_catalog FUNCTION x" app_t_user',
        '3604; 0 0 ACL - SCHEMA pg_catalog_look_alike app_t_user',
        '3605; 0 0 ACL public FUNCTION "pg_catalog lo_create"() app_t_user',
      ].join('\n'),
    );
    assert.deepEqual(systemCatalogAclEntryIds(acls.entries), [3601, 3602]);
  });
});
