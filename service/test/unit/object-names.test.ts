// The app-name rule and the names derived from it (src/shared/object-names.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { APP_NAME_PATTERN, AppNameSchema, appIdentifiers, collidingAppNames } from '../../src/shared/object-names.js';

describe('app names', () => {
  it('accepts every name of 3-32 characters of [a-z0-9_]', () => {
    for (const name of ['abc', 'a_b', '___', '123', 'x'.repeat(32), 'my_app_2', 'user', 'postgres', 'template1']) {
      assert.equal(AppNameSchema.safeParse(name).success, true, name);
    }
  });

  it('rejects everything else with a message saying what is wrong', () => {
    const cases: Array<[unknown, RegExp]> = [
      ['ab', /at least 3/],
      ['x'.repeat(33), /at most 32/],
      ['MyApp', /lowercase/],
      ['my-app', /lowercase/],
      ['my app', /lowercase/],
      ['аpp', /lowercase/], // Cyrillic а
      ['app\u0000x', /lowercase/],
      ["x'; DROP ROLE postgres; --", /lowercase|at most/],
      [42, /must be a string/],
    ];
    for (const [name, message] of cases) {
      const result = AppNameSchema.safeParse(name);
      assert.equal(result.success, false, String(name));
      assert.match(result.error!.issues.map((i) => i.message).join(' '), message);
    }
  });

  it('derives app_<name> and app_<name>_user, and refuses to derive from an unchecked name', () => {
    assert.deepEqual(appIdentifiers('shop'), { appName: 'shop', database: 'app_shop', username: 'app_shop_user', accessRole: 'app_shop' });
    assert.throws(() => appIdentifiers('Shop"; --'), TypeError);
    assert.equal(APP_NAME_PATTERN.test('a'.repeat(32)), true);
  });

  it('names the apps whose roles would collide with this one', () => {
    assert.deepEqual(collidingAppNames('x_user'), ['x_user_user']); // "x" alone is too short to be an app
    assert.deepEqual(collidingAppNames('abc'), ['abc_user']);
    assert.deepEqual(collidingAppNames('abc_user').sort(), ['abc', 'abc_user_user']);
    assert.deepEqual(collidingAppNames('a'.repeat(32)), []); // a 37-character sibling is not a valid name
    assert.deepEqual(collidingAppNames('ab_user'), ['ab_user_user']); // "ab" is too short to be an app
    // Outside each name's colliding siblings, no two apps share a role name.
    const family = ['abc', 'abc_user_user', 'app_abc', 'abc_app', 'user_abc'];
    const roles = family.flatMap((n) => [appIdentifiers(n).username, appIdentifiers(n).accessRole]);
    assert.equal(new Set(roles).size, roles.length);
  });

  it('keeps every pair of names apart within each catalog, and within Postgres identifier length', () => {
    const family = ['abc', 'abc_user', 'abc_user_user', 'app_abc', 'abc_app', 'user_abc', 'a'.repeat(32)];
    const databases = new Set(family.map((n) => appIdentifiers(n).database));
    const roles = new Set(family.map((n) => appIdentifiers(n).username));
    assert.equal(databases.size, family.length);
    assert.equal(roles.size, family.length);
    for (const n of family) assert.ok(appIdentifiers(n).username.length <= 63);
  });
});
