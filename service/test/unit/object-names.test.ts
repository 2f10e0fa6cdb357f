// The proof that names never collide (src/shared/object-names.ts): over every family of names the service gives
// Postgres objects (apps' databases, access and login roles; companion databases and their access roles; extra
// credentials' login roles; the ready pool's sets; agents; work databases; the service's own), for many app names,
// the tricky ones included (ending in _user, holding __, 3 and 32 characters long, digits only, named like the
// service's own prefixes): no two different objects get one name in a catalog, no database is named like a role of
// another owner (pg_hba.conf's samerole would admit that role's members there), every name fits Postgres's 63
// characters, and a companion's or a credential's name splits back into exactly one (app, name) pair.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  AGENTS_GROUP_ROLE,
  agentName,
  APP_NAME_PATTERN,
  APPS_GROUP_ROLE,
  appIdentifiers,
  collidingAppNames,
  COMPANION_NAME_MAX_LENGTH,
  CompanionNameSchema,
  COMPANION_SQL,
  companionIdentifiers,
  CREDENTIAL_SQL,
  credentialOfRole,
  credentialRole,
  parseCompanionName,
  POOLER_ADMIN_USER,
  READY_SET_ID_ALPHABET,
  READY_SET_ID_LENGTH,
  readySetNames,
  WORK_DATABASE_PREFIXES,
} from '../../src/shared/object-names.js';

/** Postgres cuts identifiers longer than this (NAMEDATALEN - 1), which would make two names one. */
const POSTGRES_IDENTIFIER_MAX = 63;

/** A small seeded generator (mulberry32): the same names at every run. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function generated(count: number, alphabet: string, minLength: number, maxLength: number, seed: number, lookAlikes = true): string[] {
  const next = random(seed);
  return Array.from({ length: count }, () => {
    const length = minLength + Math.floor(next() * (maxLength - minLength + 1));
    // Half of them with underscores and the letters of "user" and "app" often, so that look-alikes come up.
    const pool = lookAlikes && next() < 0.5 ? `${alphabet}____useruserapp` : alphabet;
    return Array.from({ length }, () => pool[Math.floor(next() * pool.length)]).join('');
  });
}

const APP_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789_';

const TRICKY_APP_NAMES = [
  'abc', 'shop', 'shop_user', 'shop_user_user', 'shop_test', 'shop_test_user', 'x_user', 'abc_user', 'user', '_user', '__user',
  'x__y', '___', '____', 'a__', '__a', 'a__user', '123', '000', '007', '1'.repeat(32), '9'.repeat(3), 'a'.repeat(32), `${'z'.repeat(27)}_user`,
  'app', 'app_x', 'app_abc', 'abc_app', 'user_abc', 'pgprov', 'pgprov_x', 'ready_x', 'dump_abc', 'restore_abc', 'retired_abc', 'postgres', 'template1',
  'provisioner', 'provisioned_apps', 'main', 'test', 'abc_test',
];
const TRICKY_SUFFIXES = ['a', '_', '__', '0', 'test', 'user', '_user', 'shadow', 'main', 'abc', 'x'.repeat(COMPANION_NAME_MAX_LENGTH), '1'.repeat(COMPANION_NAME_MAX_LENGTH)];

/** The app names the service would hold at once: each candidate, unless it collides with one taken before (409). */
function appsThatCoexist(candidates: string[]): string[] {
  const taken = new Set<string>();
  for (const name of candidates) {
    if (!APP_NAME_PATTERN.test(name) || taken.has(name)) continue;
    if (collidingAppNames(name).some((other) => taken.has(other))) continue;
    taken.add(name);
  }
  return [...taken];
}

interface Named {
  catalog: 'role' | 'database';
  name: string;
  /** Who the object belongs to: an app, a ready set, or the service itself. */
  owner: string;
  /** What it is, with its owner: two objects are the same object only if this is equal. */
  object: string;
}

/** Every object the service would name for these apps, companions, credentials and ready sets. */
function everyObject(apps: string[], suffixes: string[], readySetIds: string[]): Named[] {
  const objects: Named[] = [];
  const add = (catalog: Named['catalog'], name: string, owner: string, what: string) => objects.push({ catalog, name, owner, object: `${what} of ${owner}` });
  for (const appName of apps) {
    const app = appIdentifiers(appName);
    const owner = `app ${appName}`;
    add('database', app.database, owner, 'database');
    add('role', app.accessRole, owner, 'access role');
    add('role', app.username, owner, 'login role');
    for (const suffix of suffixes) {
      const companion = companionIdentifiers(appName, suffix);
      add('database', companion.database, owner, `companion database ${suffix}`);
      add('role', companion.accessRole, owner, `companion access role ${suffix}`);
      add('role', credentialRole(app, suffix), owner, `credential ${suffix}`);
    }
    add('role', agentName('dump', app), owner, 'dump agent');
    add('role', agentName('restore', app), owner, 'restore agent');
    add('database', WORK_DATABASE_PREFIXES.restoring + appName, owner, 'restore work database');
    add('database', WORK_DATABASE_PREFIXES.retired + appName, owner, 'retired database');
  }
  for (const id of readySetIds) {
    const set = readySetNames(id);
    const owner = `ready set ${id}`;
    add('database', set.database, owner, 'database');
    add('role', set.accessRole, owner, 'access role');
    add('role', set.username, owner, 'login role');
  }
  for (const role of [APPS_GROUP_ROLE, AGENTS_GROUP_ROLE, POOLER_ADMIN_USER, 'postgres']) add('role', role, 'the service', role);
  for (const database of ['postgres', 'template0', 'template1', 'provisioner']) add('database', database, 'the service', database);
  return objects;
}

/** Every way to split `name` at `separator` into a valid app name and a valid second part, as "app|part". */
function splits(name: string, separator: string, prefix: string, part: RegExp): string[] {
  const found: string[] = [];
  if (!name.startsWith(prefix)) return found;
  const rest = name.slice(prefix.length);
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] !== separator) continue;
    const appName = rest.slice(0, i);
    const second = rest.slice(i + 1);
    if (APP_NAME_PATTERN.test(appName) && part.test(second)) found.push(`${appName}|${second}`);
  }
  return found;
}

const NAME_PART = /^[a-z0-9_]{1,20}$/;

describe('names never collide', () => {
  const apps = appsThatCoexist([...TRICKY_APP_NAMES, ...generated(400, APP_ALPHABET, 3, 32, 15)]);
  const suffixes = [...new Set([...TRICKY_SUFFIXES, ...generated(30, APP_ALPHABET, 1, COMPANION_NAME_MAX_LENGTH, 1515)])];
  const readySetIds = generated(50, READY_SET_ID_ALPHABET, READY_SET_ID_LENGTH, READY_SET_ID_LENGTH, 151515, false);
  const objects = everyObject(apps, suffixes, readySetIds);

  it('covers the tricky app names the service lets coexist', () => {
    for (const name of ['shop', 'shop_test', 'x__y', '123', 'a'.repeat(32), '1'.repeat(32), 'abc', `${'z'.repeat(27)}_user`]) assert.ok(apps.includes(name), name);
    // shop_user and shop cannot coexist (SECURITY.md, promise 3): the second is refused, so it is not here.
    assert.ok(!apps.includes('shop_user'));
    assert.ok(apps.length > 300, `${apps.length} apps`);
    assert.ok(objects.length > 50_000, `${objects.length} objects`);
  });

  it('gives no two different objects one name in a catalog (roles; databases)', () => {
    for (const catalog of ['role', 'database'] as const) {
      const byName = new Map<string, string>();
      for (const object of objects.filter((o) => o.catalog === catalog)) {
        const other = byName.get(object.name);
        assert.ok(other === undefined || other === object.object, `${catalog} ${object.name}: ${other} and ${object.object}`);
        byName.set(object.name, object.object);
      }
    }
  });

  it('names no database like a role of another owner (samerole would admit that role there)', () => {
    const roleOwners = new Map(objects.filter((o) => o.catalog === 'role').map((o) => [o.name, o.owner]));
    for (const database of objects.filter((o) => o.catalog === 'database')) {
      const owner = roleOwners.get(database.name);
      assert.ok(owner === undefined || owner === database.owner, `database ${database.name} (${database.owner}) is named like a role of ${owner}`);
    }
    // And no login role is named like any database: a login role is admitted only through its access roles.
    const databases = new Set(objects.filter((o) => o.catalog === 'database').map((o) => o.name));
    for (const appName of apps) assert.ok(!databases.has(appIdentifiers(appName).username), appName);
  });

  it('keeps every name within Postgres identifier length (63), so none is cut into another', () => {
    const longest = Math.max(...objects.map((o) => o.name.length));
    assert.ok(longest <= POSTGRES_IDENTIFIER_MAX, `${longest} characters`);
    assert.equal(companionIdentifiers('a'.repeat(32), 'x'.repeat(COMPANION_NAME_MAX_LENGTH)).database.length, 57);
  });

  it('splits every companion name back into exactly its (app, companion), and no other name into any', () => {
    const pattern = new RegExp(COMPANION_SQL.pattern);
    for (const object of objects) {
      const parsed = parseCompanionName(object.name);
      const ways = splits(object.name, '-', 'app_', NAME_PART);
      if (object.object.includes('companion')) {
        const [appName, suffix] = [object.owner.replace(/^app /, ''), object.object.replace(/^companion (database|access role) (\S+) of .*$/, '$2')];
        assert.deepEqual(parsed, { appName, name: suffix }, object.name);
        assert.deepEqual(ways, [`${appName}|${suffix}`], `${object.name} splits one way only`);
        assert.equal(pattern.exec(object.name)?.[1], appName, 'the SQL pattern captures the app');
      } else {
        assert.equal(parsed, undefined, object.name);
        assert.deepEqual(ways, [], object.name);
        assert.equal(pattern.test(object.name), false, object.name);
      }
    }
  });

  it("splits every credential's login role back into exactly its (app, credential), and no other name into any", () => {
    const pattern = new RegExp(CREDENTIAL_SQL.rolePattern);
    for (const object of objects) {
      const ways = splits(object.name, '.', 'app_', NAME_PART);
      const parsed = credentialOfRole(object.name);
      if (object.object.startsWith('credential ')) {
        const appName = object.owner.replace(/^app /, '');
        const credential = object.object.replace(/^credential (\S+) of .*$/, '$1');
        assert.deepEqual(ways, [`${appName}|${credential}`], object.name);
        assert.deepEqual(parsed, { appName, credential }, object.name);
        assert.equal(pattern.exec(object.name)?.[1], appName, 'the SQL pattern captures the app');
      } else {
        assert.deepEqual(ways, [], object.name);
        assert.equal(parsed, undefined, object.name);
        assert.equal(pattern.test(object.name), false, object.name);
      }
    }
  });

  it('counts a companion into its own app only, by the pattern sizes use', () => {
    const sizes = new RegExp(COMPANION_SQL.appDatabasePattern);
    for (const object of objects.filter((o) => o.catalog === 'database')) {
      const app = sizes.exec(object.name)?.[1];
      if (object.owner.startsWith('app ') && (object.object.startsWith('database ') || object.object.startsWith('companion database'))) {
        assert.equal(app, object.owner.replace(/^app /, ''), object.name);
      } else {
        assert.equal(app, undefined, object.name);
      }
    }
  });
});

describe('companion names', () => {
  it('takes 1-20 characters of [a-z0-9_], and refuses anything else with a message saying what is wrong', () => {
    for (const name of ['a', '_', '0', 'test', 'shadow_db', 'x'.repeat(20)]) assert.equal(CompanionNameSchema.safeParse(name).success, true, name);
    const cases: Array<[unknown, RegExp]> = [
      ['', /at least 1/],
      ['x'.repeat(21), /at most 20/],
      ['Test', /lowercase/],
      ['a-b', /lowercase/],
      ['a.b', /lowercase/],
      ['a b', /lowercase/],
      ['tеst', /lowercase/], // Cyrillic е
      ["x'; --", /lowercase/],
      [7, /must be a string/],
    ];
    for (const [name, message] of cases) {
      const result = CompanionNameSchema.safeParse(name);
      assert.equal(result.success, false, String(name));
      assert.match(result.error!.issues.map((i) => i.message).join(' '), message, String(name));
    }
  });

  it('derives app_<app>-<name> for the database and its access role, with the app login role, and refuses unchecked names', () => {
    assert.deepEqual(companionIdentifiers('shop', 'test'), { appName: 'shop', name: 'test', database: 'app_shop-test', accessRole: 'app_shop-test', username: 'app_shop_user' });
    assert.throws(() => companionIdentifiers('shop', 'Test'), TypeError);
    assert.throws(() => companionIdentifiers('shop', 'a-b'), TypeError);
    assert.throws(() => companionIdentifiers('shop', ''), TypeError);
    assert.throws(() => companionIdentifiers('sh', 'test'), TypeError);
  });
});
