// The system's own database under versioned migrations (src/db/system-store/migrations.ts), on a real stack: a
// fresh database records every migration; a database made before migrations (no schema_migrations) is adopted
// with its rows; a database newer than the code stops the service with an error naming both versions; two
// instances migrating at once apply each migration once. Scratch databases in the same cluster take the cases the
// running service cannot show (an older shape of the tables, a slow migration raced by two sessions).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { pino } from 'pino';
import { SuperuserConnections } from '../../src/db/superuser-connections.js';
import { SystemStore } from '../../src/db/system-store/system-store.js';
import { lockMigrations, unlockMigrations } from '../../src/db/system-store/locks.js';
import { migrate, MIGRATIONS, type Migration } from '../../src/db/system-store/migrations.js';
import { loadConfig } from '../../src/shared/config.js';
import { SchemaNewerThanCodeError } from '../../src/shared/errors.js';
import { rejectionOf } from '../helpers/conditions.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let t: TestStack;

before(async () => {
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', LOG_LEVEL: 'info', READY_POOL_SIZE: '0' } });
});
after(async () => {
  await t?.stop();
});

const NEWEST = MIGRATIONS.at(-1)!.version;
const EVERY_MIGRATION = MIGRATIONS.map(({ version, name }) => ({ version, name }));

/** The versions and names a database records, oldest first. */
async function recordedIn(database: string): Promise<Array<{ version: number; name: string }>> {
  return t.superuser(async (c) => (await c.query('SELECT version, name FROM schema_migrations ORDER BY version')).rows, database);
}

/** A new empty database in the stack's cluster, for one test. */
async function scratchDatabase(name: string): Promise<string> {
  await t.superuser((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
  await t.superuser((c) => c.query(`CREATE DATABASE ${name}`));
  return name;
}

/** A superuser session of its own in `database`, ended after `work`. */
async function session<T>(database: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  return t.superuser(work, database);
}

/** The system store, as the service makes it, in `database`. */
function serviceConnections(database = 'provisioner'): SystemStore {
  const config = loadConfig({ ...t.stack.serviceEnvironment(), SYSTEM_DATABASE: database, LOG_LEVEL: 'silent' });
  const address = { host: config.DATABASE_HOST, port: config.DATABASE_PORT, user: config.POSTGRES_USER, password: config.POSTGRES_PASSWORD };
  return new SystemStore(new SuperuserConnections(address, database, config, pino({ level: 'silent' })), config);
}

describe('versioned migrations of the system database', () => {
  it('records every migration, once, on the fresh database the stack made', async () => {
    assert.deepEqual(await recordedIn('provisioner'), EVERY_MIGRATION);
  });

  it('adopts a database made before migrations (no schema_migrations), keeping every row', async () => {
    const app = await t.provision('kept_app');
    const rowsBefore = await session('provisioner', async (c) => ({
      apps: (await c.query('SELECT app_name, state, incarnation, created_at FROM apps ORDER BY app_name')).rows,
      audit: (await c.query('SELECT id, action, app_name, outcome FROM audit_log ORDER BY id')).rows,
    }));
    assert.ok(rowsBefore.apps.some((row) => row.app_name === 'kept_app'));
    assert.ok(rowsBefore.audit.some((row) => row.action === 'provision' && row.app_name === 'kept_app'));

    await t.stack.stopService();
    await session('provisioner', (c) => c.query('DROP TABLE schema_migrations'));
    await t.stack.startService();

    assert.deepEqual(await recordedIn('provisioner'), EVERY_MIGRATION);
    const rowsAfter = await session('provisioner', async (c) => ({
      apps: (await c.query('SELECT app_name, state, incarnation, created_at FROM apps ORDER BY app_name')).rows,
      audit: (await c.query('SELECT id, action, app_name, outcome FROM audit_log WHERE id <= $1 ORDER BY id', [rowsBefore.audit.at(-1)!.id])).rows,
    }));
    assert.deepEqual(rowsAfter, rowsBefore);
    const listed = await t.admin('GET', '/apps/kept_app');
    assert.equal(listed.status, 200, listed.text);
    assert.equal(listed.body.database, app.database);
  });

  it('adopts the tables of an older version (apps without incarnation), filling in what it adds', async () => {
    const database = await scratchDatabase('migrations_old_shape');
    await session(database, async (c) => {
      // The shape before incarnations: what an old data directory holds.
      await c.query(`
        CREATE TABLE apps (app_name text PRIMARY KEY, state text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
        CREATE TABLE audit_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), action text NOT NULL, app_name text,
                                outcome text NOT NULL, request_id text, client text, detail jsonb);
        CREATE TABLE ready_pool (id text PRIMARY KEY, state text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
        INSERT INTO apps (app_name, state, created_at) VALUES ('old_app', 'ready', '2024-01-02T03:04:05Z'), ('half_made', 'creating', '2024-02-03T04:05:06Z');
        INSERT INTO audit_log (action, app_name, outcome) VALUES ('provision', 'old_app', 'ok'), ('delete', 'gone_app', 'ok');
        INSERT INTO ready_pool (id, state) VALUES ('abcdefghijkl', 'ready');`);
    });
    const applied = await session(database, (c) => migrate(c));
    assert.deepEqual(applied, MIGRATIONS.map((m) => m.version));
    assert.deepEqual(await recordedIn(database), EVERY_MIGRATION);
    await session(database, async (c) => {
      const apps = (await c.query("SELECT app_name, state, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS created, incarnation FROM apps ORDER BY app_name")).rows;
      assert.deepEqual(
        apps.map(({ app_name, state, created }) => ({ app_name, state, created })),
        [
          { app_name: 'half_made', state: 'creating', created: '2024-02-03 04:05:06' },
          { app_name: 'old_app', state: 'ready', created: '2024-01-02 03:04:05' },
        ],
      );
      for (const row of apps) assert.match(row.incarnation, /^[0-9a-f]{16}$/, 'migration 1 gave every app an incarnation');
      assert.deepEqual((await c.query('SELECT action, app_name, outcome FROM audit_log ORDER BY id')).rows, [
        { action: 'provision', app_name: 'old_app', outcome: 'ok' },
        { action: 'delete', app_name: 'gone_app', outcome: 'ok' },
      ]);
      assert.deepEqual((await c.query('SELECT id, state FROM ready_pool')).rows, [{ id: 'abcdefghijkl', state: 'ready' }]);
      // Migration 1 ran whole: the audit log is append-only now.
      assert.equal((await rejectionOf(c.query('DELETE FROM audit_log'))).message, 'audit_log is append-only');
    });
    assert.deepEqual(await session(database, (c) => migrate(c)), [], 'a second run applies nothing');
    await t.superuser((c) => c.query(`DROP DATABASE ${database} WITH (FORCE)`));
  });

  it('refuses a database newer than the code: ensureSchema rejects naming both versions, and tries again on the next call', async () => {
    const future = NEWEST + 1;
    await session('provisioner', (c) => c.query("INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_a_newer_service')", [future]));
    const connections = serviceConnections();
    try {
      const refused = await rejectionOf(connections.ensureSchema());
      assert.ok(refused instanceof SchemaNewerThanCodeError, String(refused));
      assert.equal(refused.code, 'SCHEMA_NEWER_THAN_CODE');
      assert.equal(refused.databaseVersion, future);
      assert.equal(refused.codeVersion, NEWEST);
      assert.match(refused.message, new RegExp(`schema version ${future}, newer than this service knows \\(its newest migration is ${NEWEST}\\)`));
      // Still refused on the next call (a refusal is not remembered as success) …
      assert.ok((await rejectionOf(connections.ensureSchema())) instanceof SchemaNewerThanCodeError);
      // … and once the database is one the code knows, the next call succeeds.
      await session('provisioner', (c) => c.query('DELETE FROM schema_migrations WHERE version = $1', [future]));
      await connections.ensureSchema();
    } finally {
      await connections.close();
    }
    assert.deepEqual(await recordedIn('provisioner'), EVERY_MIGRATION);
  });

  it('stops the service at start on a database newer than the code, with an error naming both versions', async () => {
    const future = NEWEST + 1;
    await t.stack.stopService();
    await session('provisioner', (c) => c.query("INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_a_newer_service')", [future]));
    try {
      const from = t.serviceLines.length;
      const failed = await rejectionOf(t.stack.startService());
      assert.match(failed.message, /the service exited \(code 1\) before it was ready/);
      const fatal = t.serviceLines.slice(from).find((line) => line.includes('"level":60'));
      assert.ok(fatal, `a fatal line; the service wrote:\n${t.serviceLines.slice(from).join('\n')}`);
      assert.match(fatal, new RegExp(`could not start: the system's own database is at schema version ${future}, newer than this service knows \\(its newest migration is ${NEWEST}\\)`));
      assert.match(fatal, /"code":"SCHEMA_NEWER_THAN_CODE"/);
      // Nothing of the service's ran against it: no reconcile, and the schema is as it was.
      assert.ok(!t.serviceLines.slice(from).some((line) => line.includes('reconcile')), 'no reconcile ran');
      assert.deepEqual(await recordedIn('provisioner'), [...EVERY_MIGRATION, { version: future, name: 'from_a_newer_service' }]);
    } finally {
      await session('provisioner', (c) => c.query('DELETE FROM schema_migrations WHERE version = $1', [future]));
    }
    await t.stack.startService();
    assert.equal((await t.admin('GET', '/apps/kept_app')).status, 200);
  });

  it('refuses a newer database in a scratch database too, applying none of the migrations it would have', async () => {
    const database = await scratchDatabase('migrations_newer');
    await session(database, (c) => c.query("CREATE TABLE schema_migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()); INSERT INTO schema_migrations (version, name) VALUES (3, 'third')"));
    const two: Migration[] = [
      { version: 1, name: 'first', sql: 'CREATE TABLE first_table (id int)' },
      { version: 2, name: 'second', sql: 'CREATE TABLE second_table (id int)' },
    ];
    const refused = await rejectionOf(session(database, (c) => migrate(c, two)));
    assert.ok(refused instanceof SchemaNewerThanCodeError);
    assert.match(refused.message, /schema version 3, newer than this service knows \(its newest migration is 2\)/);
    const tables = await session(database, async (c) => (await c.query("SELECT relname FROM pg_class WHERE relname IN ('first_table', 'second_table')")).rows.map((r) => r.relname));
    assert.deepEqual(tables, [], 'no migration ran');
    await t.superuser((c) => c.query(`DROP DATABASE ${database} WITH (FORCE)`));
  });

  it('applies each migration once when two sessions migrate at the same time', async () => {
    const database = await scratchDatabase('migrations_race');
    // A sequence is not transactional: its value counts every time a migration ran, rolled back or not.
    await session(database, (c) => c.query('CREATE SEQUENCE migration_runs'));
    const slow = (version: number): Migration => ({
      version,
      name: `slow_${version}`,
      sql: `SELECT nextval('migration_runs'); SELECT pg_sleep(0.3); CREATE TABLE made_by_${version} (id int);`,
    });
    const list = [slow(1), slow(2), slow(3)];
    const [first, second] = await Promise.all([session(database, (c) => migrate(c, list)), session(database, (c) => migrate(c, list))]);
    assert.deepEqual([...first, ...second].sort(), [1, 2, 3], `one session applied them all, in order: ${JSON.stringify([first, second])}`);
    assert.ok(first.length === 0 || second.length === 0, 'the other found them recorded');
    assert.equal(await session(database, async (c) => Number((await c.query('SELECT last_value FROM migration_runs')).rows[0].last_value)), 3, 'each ran once');
    assert.deepEqual(await recordedIn(database), list.map(({ version, name }) => ({ version, name })));
    await t.superuser((c) => c.query(`DROP DATABASE ${database} WITH (FORCE)`));
  });

  it('applies each of the service\'s migrations once when two instances start at the same time', async () => {
    const database = await scratchDatabase('migrations_two_instances');
    const instances = [serviceConnections(database), serviceConnections(database)];
    try {
      await Promise.all(instances.map((instance) => instance.ensureSchema()));
    } finally {
      await Promise.all(instances.map((instance) => instance.close()));
    }
    assert.deepEqual(await recordedIn(database), EVERY_MIGRATION);
    await t.superuser((c) => c.query(`DROP DATABASE ${database} WITH (FORCE)`));
  });

  it('keeps its lock in the two-int4 key space, apart from every app and ready-set lock', async () => {
    await session('provisioner', async (c) => {
      await lockMigrations(c);
      try {
        const held = (await c.query("SELECT classid::bigint AS classid, objid::bigint AS objid, objsubid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")).rows;
        assert.deepEqual(held, [{ classid: '1885827190', objid: '1', objsubid: 2 }]);
      } finally {
        await unlockMigrations(c);
      }
    });
  });
});
