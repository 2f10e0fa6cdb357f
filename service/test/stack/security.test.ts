// SECURITY.md's promises, each attacked with real Postgres sessions as a hostile app (A) against another app
// (B) and the server. Every expectation here is a lock that holds; the comment says which one.
//
// An app has two doors: the pooler (PgBouncer, its connection_string, the one apps use) and Postgres itself (its
// direct_connection_string, which the operator may open). Every attack a tenant makes through a session runs
// through both (DOORS; the door is in the test's name): a lock that holds at one door must hold at the other.
// Where a test is by nature about one door, it says why.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { parse as parseYaml } from 'yaml';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
import { poolerAdminPassword } from '../../src/db/pooler/pgbouncer.js';
import { asApp, connectAs, DOORS, doorString, pausedLoginAs, trustedAuthorityPem, withAuthority, withDatabase, withLogin, type AppDoors, type Door } from '../helpers/app-sessions.js';
import { eventually, rejectionOf } from '../helpers/conditions.js';
import { type ProvisionedApp } from '../helpers/service-client.js';
import { catalogOf } from '../helpers/catalog.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

type App = ProvisionedApp & AppDoors & { pooling?: string };

let t: TestStack;
let a: App;
let b: App;
const CONNECTION_LIMIT = 5;

// A statement timeout no server default has: what the app's session shows can only come from its role.
const APP_STATEMENT_TIMEOUT = '1h';

/** The system's own databases: no app reaches them, at either door. */
const SYSTEM_DATABASES = ['postgres', 'template1', 'template0', 'provisioner'];

const catalog = catalogOf(() => t);
const readySetIds = () => catalog.readySetIds();

/** The ready pool's sets once at least `count` are ready; fails, saying so, if they are not within a minute. */
async function readySets(count: number): Promise<string[]> {
  const ids = await eventually(readySetIds, (found) => found.length >= count, 60_000);
  assert.ok(ids.length >= count, `the ready pool has ${ids.length} sets ready after a minute, not ${count}`);
  return ids;
}

before(async () => {
  t = await startTestStack({
    serviceEnv: {
      LOG_PRETTY: 'false',
      APP_CONNECTION_LIMIT: String(CONNECTION_LIMIT),
      APP_TEMP_FILE_LIMIT: '1MB',
      APP_STATEMENT_TIMEOUT,
      READY_POOL_SIZE: '3',
      READY_POOL_REFILL_PER_SECOND: '20',
      // A request held on a lock by a test waits this long before giving up: ample, on a busy machine too.
      DATABASE_LOCK_TIMEOUT_MS: '60000',
    },
  });
  // A and B are handed over from the ready pool, so every promise below is tested on that path too.
  const before = await readySets(3);
  assert.equal(before.length, 3);
  a = (await t.provision('hostile_a')) as App;
  b = (await t.provision('victim_b')) as App;
  assert.ok((await readySetIds()).filter((id) => before.includes(id)).length <= 1, 'A and B came from the ready pool');
  assert.equal(a.pooling, 'transaction', 'connection_string names the pooler');
  await asApp(b.connection_string, (c) => c.query("CREATE TABLE secrets AS SELECT 'b-private' AS v"));
});
after(async () => {
  await t?.stop();
});

/** A pg.Client whose TCP connection leaves from another loopback address (another "host" on loopback). */
function clientFrom(sourceAddress: string, config: pg.ClientConfig): pg.Client {
  const stream = () => {
    const socket = new Socket();
    const connect = socket.connect.bind(socket);
    // pg calls stream.connect(port, host); add the source address.
    Object.assign(socket, { connect: (port: number, host: string) => connect({ port, host, localAddress: sourceAddress }) });
    return socket;
  };
  const client = new pg.Client({ ...config, host: '127.0.0.1', stream } as pg.ClientConfig);
  client.on('error', () => {});
  return client;
}

const sqlError = (promise: Promise<unknown>) => rejectionOf(promise).then((err) => err.code);

/** Postgres's own refusal by pg_hba.conf: `samerole` admits an app's login to its own database only. */
const PG_HBA_REFUSAL = /pg_hba\.conf rejects|no pg_hba\.conf entry/;

/**
 * Another app's database (or any but its own), through the pooler: refused by pgbouncer-hba.conf if it names who
 * may reach which database ("login rejected"), else by Postgres's pg_hba.conf when PgBouncer logs in to it as the
 * app, a refusal PgBouncer passes on. Either way the login is refused and no statement runs.
 */
const POOLED_APP_DATABASE_REFUSAL = /^login rejected$|pg_hba\.conf rejects|no pg_hba\.conf entry/;

/**
 * How `door` refuses an app's login (with its right password) to `database`, which is not its own. Directly,
 * Postgres's pg_hba.conf. Through PgBouncer: pgbouncer-hba.conf refuses the system's databases before Postgres is
 * asked ("login rejected"), and its admin console refuses every user but its admin ("not allowed").
 */
function refusalAt(door: Door, database: string): RegExp {
  if (door === 'direct') return PG_HBA_REFUSAL;
  if (database === 'pgbouncer') return /^not allowed$/;
  if (SYSTEM_DATABASES.includes(database)) return /^login rejected$/;
  return POOLED_APP_DATABASE_REFUSAL;
}

/** The login is refused: connecting fails (so no statement ran), with the door's refusal. */
async function assertRefused(connectionString: string, expected: RegExp, what: string): Promise<void> {
  const err = await rejectionOf(asApp(connectionString, (c) => c.query('SELECT 1')));
  assert.match(err.message, expected, what);
}

describe("app A cannot reach app B's database or the system's", () => {
  for (const { door, title } of DOORS) {
    const as = (app: App) => doorString(app, door);

    it(`is refused at every database but its own (${title})`, async () => {
      const own = await asApp(as(a), async (c) => (await c.query('SELECT current_user AS u, current_database() AS d')).rows[0]);
      assert.deepEqual(own, { u: 'app_hostile_a_user', d: 'app_hostile_a' }, 'A reaches its own database through this door');
      // pgbouncer: the pooler's admin console, a database name only PgBouncer knows.
      for (const database of ['app_victim_b', ...SYSTEM_DATABASES, 'pgbouncer']) {
        await assertRefused(withDatabase(as(a), database), refusalAt(door, database), database);
      }
    });

    it(`is refused by pg_hba.conf even when the privilege lock is opened (first lock alone; ${title})`, async () => {
      // Through the pooler, pgbouncer-hba.conf refuses the system's databases first; app_victim_b is Postgres's.
      await t.superuser((db) => db.query('GRANT CONNECT ON DATABASE app_victim_b TO PUBLIC; GRANT CONNECT ON DATABASE postgres TO PUBLIC; GRANT CONNECT ON DATABASE provisioner TO PUBLIC'));
      try {
        for (const database of ['app_victim_b', 'postgres', 'provisioner']) {
          await assertRefused(withDatabase(as(a), database), refusalAt(door, database), database);
        }
      } finally {
        await t.superuser((db) => db.query('REVOKE CONNECT ON DATABASE app_victim_b FROM PUBLIC; REVOKE ALL ON DATABASE postgres FROM PUBLIC; REVOKE ALL ON DATABASE provisioner FROM PUBLIC'));
      }
    });

    it(`is refused by privileges even when the pg_hba.conf lock is passed (second lock alone; ${title})`, async () => {
      // The system's databases: pg_hba.conf never admits an app role to them, so the privilege lock is asked of
      // Postgres directly. init/03-grants.sql took CONNECT and TEMPORARY away from PUBLIC there.
      const privileges = await catalog.databasePrivileges('app_hostile_a_user', ['postgres', 'template1', 'provisioner']);
      assert.deepEqual(privileges, ['postgres', 'provisioner', 'template1'].map((datname) => ({ datname, can_connect: false, can_make_temp: false })));
      // Making A a member of B's access role lets A pass `samerole` for app_victim_b; CONNECT still stops it. (Through
      // the pooler, PgBouncer admits A's password and Postgres refuses the login it makes as A, unless
      // pgbouncer-hba.conf already refused A there: the first lock, at the pooler.)
      await t.superuser((db) => db.query('GRANT app_victim_b TO app_hostile_a_user'));
      try {
        const refusal = door === 'direct' ? /permission denied for database "app_victim_b"/ : /permission denied for database "app_victim_b"|^login rejected$/;
        await assertRefused(withDatabase(as(a), 'app_victim_b'), refusal, 'app_victim_b');
      } finally {
        await t.superuser((db) => db.query('REVOKE app_victim_b FROM app_hostile_a_user'));
      }
    });

    it(`cannot open its own database to B, so B still cannot get in (${title})`, async () => {
      await asApp(as(a), async (c) => {
        await c.query('GRANT CONNECT ON DATABASE app_hostile_a TO PUBLIC'); // "no privileges were granted": A is not the owner
        await c.query('GRANT CONNECT ON DATABASE app_hostile_a TO app_victim_b_user');
        assert.equal(await sqlError(c.query('ALTER DATABASE app_hostile_a OWNER TO app_hostile_a_user')), '42501');
        assert.equal(await sqlError(c.query("ALTER DATABASE app_hostile_a SET log_statement = 'all'")), '42501');
      });
      const acl = await catalog.databaseAcl('app_hostile_a');
      assert.equal(acl, '{postgres=CTc/postgres,app_hostile_a_user=CTc/postgres}');
      await assertRefused(withDatabase(as(b), 'app_hostile_a'), refusalAt(door, 'app_hostile_a'), 'B at app_hostile_a');
    });

    it(`cannot read B's queries from pg_stat_activity (${title})`, async () => {
      // B's query waits on a lock another session of B holds, so it is running while A looks, however slow the
      // machine. Transaction-scoped locks, each in a transaction: through the pooler, a client keeps one server
      // connection only for a transaction, so the holder and the waiter are surely two server sessions.
      const marker = `b-query-secret-${door}`;
      const holder = await connectAs(as(b));
      const victim = await connectAs(as(b));
      try {
        await holder.query('BEGIN');
        await holder.query('SELECT pg_advisory_xact_lock(4242)');
        const running = victim.query(`SELECT '${marker}' AS marker, pg_advisory_xact_lock(4242)`);
        running.catch(() => {}); // if an assertion below fails, its message is the test's failure, not this query's end
        const seen = await eventually(
          () =>
            t.superuser(async (db) =>
              (await db.query("SELECT pid, query FROM pg_stat_activity WHERE usename = 'app_victim_b_user' AND state = 'active' AND wait_event_type = 'Lock'")).rows,
            ),
          (rows) => rows.length === 1,
          30_000,
        );
        assert.match(String(seen[0]?.query), new RegExp(marker), "B's query is running, and the superuser sees its text");
        const pid = seen[0]!.pid as number;
        const rows = await asApp(as(a), async (c) => (await c.query("SELECT pid, query FROM pg_stat_activity WHERE usename = 'app_victim_b_user'")).rows);
        assert.ok(rows.some((row) => row.pid === pid), "A sees B's running session");
        for (const row of rows) assert.equal(row.query, '<insufficient privilege>');
        await holder.query('COMMIT');
        await running;
      } finally {
        await victim.end();
        await holder.end();
      }
    });
  }
});

describe('app A cannot raise its own powers', () => {
  for (const { door, title } of DOORS) {
    const as = (app: App) => doorString(app, door);

    it(`cannot create databases or roles, or become or join another role (${title})`, async () => {
      await asApp(as(a), async (c) => {
        const attempts = [
          'CREATE DATABASE stolen',
          'CREATE ROLE minion LOGIN',
          'SET ROLE app_victim_b_user',
          'SET ROLE postgres',
          'SET SESSION AUTHORIZATION postgres',
          'GRANT app_victim_b_user TO app_hostile_a_user',
          'GRANT app_victim_b TO app_hostile_a_user',
          'GRANT pg_read_server_files TO app_hostile_a_user',
          'GRANT pg_execute_server_program TO app_hostile_a_user',
          'GRANT provisioned_apps TO app_victim_b_user',
          'DROP DATABASE app_victim_b',
          'DROP ROLE app_victim_b_user',
          "ALTER ROLE app_victim_b_user PASSWORD 'taken-over'",
        ];
        for (const sql of attempts) assert.equal(await sqlError(c.query(sql)), '42501', sql);
      });
    });

    it(`cannot lift its own limits or attributes (${title})`, async () => {
      await asApp(as(a), async (c) => {
        const attempts = [
          'ALTER ROLE app_hostile_a_user CONNECTION LIMIT -1',
          'ALTER ROLE app_hostile_a_user SUPERUSER',
          'ALTER ROLE app_hostile_a_user CREATEDB',
          'ALTER ROLE app_hostile_a_user CREATEROLE',
          'ALTER ROLE app_hostile_a_user REPLICATION',
          'ALTER ROLE app_hostile_a_user BYPASSRLS',
          "ALTER ROLE app_hostile_a_user SET temp_file_limit = '-1'",
          "SET temp_file_limit = '-1'",
          "SET log_statement = 'all'",
          "SET session_replication_role = 'replica'",
          "ALTER SYSTEM SET max_connections = '500'",
          'SELECT pg_reload_conf()',
        ];
        for (const sql of attempts) assert.equal(await sqlError(c.query(sql)), '42501', sql);
      });
    });

    it(`cannot read or write server files, or run programs (${title})`, async () => {
      await asApp(as(a), async (c) => {
        const loot = `loot_${door}`;
        await c.query(`CREATE TABLE ${loot} (line text)`);
        const attempts = [
          `COPY ${loot} FROM '/etc/passwd'`,
          `COPY ${loot} TO '/tmp/pgprov-exfiltrated'`,
          `COPY ${loot} FROM PROGRAM 'id'`,
          `COPY ${loot} TO PROGRAM 'sh -c id'`,
          "SELECT pg_read_file('/etc/passwd')",
          "SELECT pg_read_binary_file('postgresql.auto.conf')",
          "SELECT pg_ls_dir('.')",
          "SELECT pg_stat_file('PG_VERSION')",
          "SELECT lo_import('/etc/passwd')",
          "SELECT lo_export(0, '/tmp/pgprov-exfiltrated')",
        ];
        for (const sql of attempts) assert.equal(await sqlError(c.query(sql)), '42501', sql);
      });
    });

    it(`cannot load untrusted extensions, languages or libraries; may use trusted extensions (${title})`, async () => {
      await asApp(as(a), async (c) => {
        for (const extension of ['file_fdw', 'dblink', 'postgres_fdw', 'adminpack']) {
          assert.equal(await sqlError(c.query(`CREATE EXTENSION ${extension}`)), '42501', extension);
        }
        assert.equal(await sqlError(c.query("CREATE FUNCTION evil() RETURNS int LANGUAGE c AS 'libc.so.6', 'getpid'")), '42501');
        assert.equal(await sqlError(c.query("LOAD '/usr/lib/x86_64-linux-gnu/libc.so.6'")), '42501');
        assert.equal(await sqlError(c.query('CREATE EVENT TRIGGER spy ON ddl_command_start EXECUTE FUNCTION pg_catalog.now()')), '42501');
        assert.equal(await sqlError(c.query("CREATE SUBSCRIPTION s CONNECTION 'dbname=app_victim_b' PUBLICATION p")), '42501');
        // The trusted extensions an app may install itself (SECURITY.md lists them): in a transaction rolled back,
        // so that each door's test installs them afresh.
        await c.query('BEGIN');
        for (const extension of ['pgcrypto', 'citext', 'hstore', 'pg_trgm', '"uuid-ossp"']) await c.query(`CREATE EXTENSION ${extension}`);
        assert.equal((await c.query('SELECT length(gen_random_uuid()::text) AS n')).rows[0].n, 36);
        await c.query('ROLLBACK');
      });
    });

    it(`cannot open a replication connection (${title})`, async () => {
      const client = new pg.Client({ connectionString: withAuthority(as(a)), replication: 'database' } as pg.ClientConfig);
      client.on('error', () => {});
      const err = await rejectionOf(client.connect());
      // PgBouncer speaks no replication protocol (1.18) and refuses the startup parameter; Postgres refuses the role.
      const refusal = door === 'pooled' ? /^unsupported startup parameter: replication$/ : /no pg_hba\.conf entry for replication connection|must be superuser or replication role/;
      assert.match(err.message, refusal);
    });

    it(`cannot end B's sessions or the service's (${title})`, async () => {
      const victim = await connectAs(as(b));
      try {
        // In a transaction: through the pooler, B's client keeps the server session A aims at until it commits.
        await victim.query('BEGIN');
        const pid = (await victim.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
        await asApp(as(a), async (c) => {
          assert.equal(await sqlError(c.query('SELECT pg_terminate_backend($1)', [pid])), '42501');
          assert.equal(await sqlError(c.query('SELECT pg_cancel_backend($1)', [pid])), '42501');
        });
        assert.equal((await victim.query('SELECT pg_backend_pid() AS pid, 1 AS alive')).rows[0].pid, pid, 'the same session, still there');
        await victim.query('COMMIT');
      } finally {
        await victim.end();
      }

      // The service's sessions: a request of the service's is held in the middle of its query (its read of the
      // registry, GET /apps/:name's, waits for a lock the operator holds), so its session certainly exists while A
      // attacks it. (Background work that reads the registry may wait too; only the request's session is targeted.)
      const operator = new pg.Client(t.stack.superuserConnection('provisioner'));
      await operator.connect();
      try {
        await operator.query('BEGIN; LOCK TABLE apps IN ACCESS EXCLUSIVE MODE');
        const held = t.admin('GET', '/apps/hostile_a');
        held.catch(() => {}); // awaited below; if an assertion fails first, its message is the test's failure
        const waiting = await eventually(
          () =>
            t.superuser(async (db) =>
              (
                await db.query(
                  `SELECT pid FROM pg_stat_activity
                    WHERE application_name = 'pg-provisioner' AND usename = 'postgres' AND state = 'active' AND wait_event_type = 'Lock'
                      AND query LIKE '%FROM apps%WHERE state = ''ready'' AND ($1::text IS NULL%'`,
                )
              ).rows.map((r) => r.pid as number),
            ),
          (pids) => pids.length > 0,
          30_000,
        );
        assert.ok(waiting.length > 0, "a session of the service's is waiting in the middle of a request");
        await asApp(as(a), async (c) => {
          const visible = (await c.query('SELECT pid, usename, application_name FROM pg_stat_activity WHERE pid = ANY($1)', [waiting])).rows;
          assert.equal(visible.length, waiting.length, "A can see the service's sessions, pids included");
          for (const pid of waiting) {
            assert.equal(await sqlError(c.query('SELECT pg_terminate_backend($1)', [pid])), '42501', `pg_terminate_backend(${pid})`);
            assert.equal(await sqlError(c.query('SELECT pg_cancel_backend($1)', [pid])), '42501', `pg_cancel_backend(${pid})`);
          }
        });
        const alive = await t.superuser(async (db) => (await db.query('SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)', [waiting])).rows.map((r) => r.pid as number));
        assert.deepEqual(alive.sort(), [...waiting].sort(), "every session of the service's A tried to end is still there");
        await operator.query('COMMIT');
        const answer = await held;
        assert.equal(answer.status, 200, `the held request is answered, its session intact: ${answer.text}`);
        assert.equal(answer.body.app_name, 'hostile_a');
      } finally {
        await operator.query('ROLLBACK').catch(() => {});
        await operator.end();
      }
    });
  }
});

/** A's sessions on the server, whichever door they came through (the pooler's server connections are A's too). */
const sessionsOfA = () =>
  t.superuser(async (db) => (await db.query("SELECT pid, state, wait_event_type FROM pg_stat_activity WHERE usename = 'app_hostile_a_user'")).rows);

/** A setting of the repo's pgbouncer.ini, as the stack runs it. */
function pgbouncerSetting(name: string): string {
  const value = new RegExp(`^${name}\\s*=\\s*(\\S+)`, 'm').exec(readFileSync(join(REPO_ROOT, 'pgbouncer.ini'), 'utf8'))?.[1];
  assert.ok(value, `pgbouncer.ini sets ${name}`);
  return value;
}

describe('one app cannot starve the others', () => {
  // Direct only: a role's CONNECTION LIMIT counts Postgres sessions, which only the direct door gives an app one
  // per connection. Through the pooler an app's clients never reach it; the test after this one is that door's.
  it(`stops A at ${CONNECTION_LIMIT} connections while B still connects (direct)`, async () => {
    // The pooler's server connections of A (from the tests before) count against the same limit: none left first.
    await t.superuser((db) => db.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app_hostile_a_user'"));
    assert.deepEqual(await eventually(sessionsOfA, (rows) => rows.length === 0, 10_000), [], 'A has no session left');
    const held: pg.Client[] = [];
    try {
      for (let i = 0; i < CONNECTION_LIMIT; i++) held.push(await connectAs(doorString(a, 'direct')));
      const err = await rejectionOf(connectAs(doorString(a, 'direct')));
      assert.equal(err.code, '53300');
      assert.match(err.message, /too many connections for role "app_hostile_a_user"/);
      for (const { door } of DOORS) {
        await asApp(doorString(b, door), async (c) => assert.equal((await c.query('SELECT v FROM secrets')).rows[0].v, 'b-private', door));
      }
      assert.equal((await t.get('/health')).status, 200, 'the service keeps its way in');
    } finally {
      await Promise.all(held.map((c) => c.end()));
    }
  });

  it('holds A to its pool of server connections however many clients it opens, while B still connects (through the pooler)', async () => {
    // pgbouncer.ini: each app's pool (and each database) has at most this many server connections.
    const poolSize = Number(pgbouncerSetting('default_pool_size'));
    assert.equal(Number(pgbouncerSetting('max_db_connections')), poolSize);
    assert.ok(poolSize < CONNECTION_LIMIT, 'the pool is smaller than the role limit: the pooler, not Postgres, holds A back');
    const clientCount = 50;
    // Every query of A's waits on a lock the superuser holds in A's database, so A's server connections stay busy
    // while the test looks, however slow the machine.
    const lock = new pg.Client(t.stack.superuserConnection('app_hostile_a'));
    await lock.connect();
    const clients: pg.Client[] = [];
    try {
      await lock.query('SELECT pg_advisory_lock(7301)');
      for (let i = 0; i < clientCount; i++) clients.push(await connectAs(a.connection_string)); // each admitted: the pooler queues, it does not refuse
      const queries = clients.map((c) => c.query('SELECT pg_advisory_xact_lock(7301)'));
      for (const query of queries) query.catch(() => {}); // awaited below
      // Until exactly the pool's server sessions of A run its queries (sessions of the test before may take a
      // moment to go); were there more, this would not hold within the wait, and the next lines would say so.
      const busy = await eventually(sessionsOfA, (rows) => rows.length === poolSize && rows.every((row) => row.wait_event_type === 'Lock'), 30_000);
      assert.equal(busy.filter((row) => row.wait_event_type === 'Lock').length, poolSize, `${poolSize} of A's queries run on the server`);
      assert.equal(busy.length, poolSize, `A's ${clientCount} clients hold ${poolSize} server sessions, no more`);
      for (const { door } of DOORS) {
        await asApp(doorString(b, door), async (c) => assert.equal((await c.query('SELECT v FROM secrets')).rows[0].v, 'b-private', door));
      }
      assert.equal((await t.get('/health')).status, 200, 'the service keeps its way in');
      assert.ok((await sessionsOfA()).length <= poolSize, 'still no more while B worked');
      await lock.query('SELECT pg_advisory_unlock(7301)');
      await Promise.all(queries); // every one of A's queries waited its turn, none was refused
    } finally {
      await lock.end().catch(() => {});
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
    }
  });

  for (const { door, title } of DOORS) {
    const as = (app: App) => doorString(app, door);

    it(`enforces the app's temp_file_limit, which it cannot raise (${title})`, async () => {
      await asApp(as(a), async (c) => {
        assert.equal((await c.query('SHOW temp_file_limit')).rows[0].temp_file_limit, '1MB');
        // In a transaction, SET LOCAL: through the pooler, a session's SET would stay on a shared server connection.
        await c.query('BEGIN');
        await c.query("SET LOCAL work_mem = '64kB'");
        const err = await rejectionOf(c.query('SELECT count(*) FROM (SELECT g FROM generate_series(1, 500000) g ORDER BY g DESC) s'));
        assert.equal(err.code, '53400');
        assert.match(err.message, /temp_file_limit/);
        await c.query('ROLLBACK');
      });
    });

    it(`gives every app its timeouts on its role, which it may change for its own sessions (${title})`, async () => {
      // On the role, not merely the server's defaults: postgres.conf also says 10min for idle transactions, so a
      // session's SHOW alone could not tell whether the service set it. APP_STATEMENT_TIMEOUT is 1h here, which no
      // server default says.
      const settings = await t.superuser(async (db) =>
        (await db.query("SELECT unnest(setconfig) AS s FROM pg_db_role_setting WHERE setrole = 'app_hostile_a_user'::regrole AND setdatabase = 0")).rows.map((r) => r.s as string),
      );
      assert.ok(settings.includes('idle_in_transaction_session_timeout=10min'), settings.join(' '));
      assert.ok(settings.includes(`statement_timeout=${APP_STATEMENT_TIMEOUT}`), settings.join(' '));
      await asApp(as(a), async (c) => {
        assert.equal((await c.query('SHOW idle_in_transaction_session_timeout')).rows[0].idle_in_transaction_session_timeout, '10min');
        assert.equal((await c.query('SHOW statement_timeout')).rows[0].statement_timeout, APP_STATEMENT_TIMEOUT);
        // The app may change both for its own sessions (SECURITY.md says so): a lower statement timeout applies.
        // SET LOCAL, in a transaction: what an app does through the pooler (README, "Pooled or direct").
        await c.query('BEGIN');
        await c.query("SET LOCAL idle_in_transaction_session_timeout = '1min'");
        await c.query("SET LOCAL statement_timeout = '50ms'");
        assert.equal((await rejectionOf(c.query('SELECT pg_sleep(30)'))).code, '57014');
        await c.query('ROLLBACK');
      });
    });
  }
});

describe('names that look alike stay apart', () => {
  const names = ['kin', 'kin_user_user', 'app_kin', 'kin_app', 'user_kin', 'kin_db', 'kin1', 'kin_1', 'k_i_n'];
  const apps: App[] = [];
  before(async () => {
    for (const name of names) apps.push((await t.provision(name)) as App);
  });

  for (const { door, title } of DOORS) {
    it(`provisions a family of look-alike names, each reaching only its own database (${title})`, async () => {
      for (const [i, app] of apps.entries()) {
        await asApp(doorString(app, door), (c) => c.query('SELECT 1'));
        for (const [j, other] of apps.entries()) {
          if (i === j) continue;
          await assertRefused(withDatabase(doorString(app, door), other.database), refusalAt(door, other.database), `${app.app_name} -> ${other.database}`);
        }
      }
    });
  }

  it('refuses the second of a colliding pair, in either order, and names the other app', async () => {
    await t.provision('pair_user');
    const response = await t.post('/provision', { app_name: 'pair', admin_key: t.stack.adminKey });
    assert.equal(response.status, 409);
    assert.equal(response.body.message, "app_name 'pair' cannot be used while app 'pair_user' exists: Postgres would give both a role named app_pair_user");
    const middle = await t.post('/provision', { app_name: 'kin_user', admin_key: t.stack.adminKey });
    assert.equal(middle.status, 409, 'kin_user collides with kin and kin_user_user');
  });
});

describe('the ready pool', () => {
  for (const { door, title } of DOORS) {
    it(`lets no one log in to, or connect to, a prepared set before it is handed over (${title})`, async () => {
      const [id] = await readySets(1);
      assert.equal(await catalog.loginAllowed(`pgprov_ready_${id}_user`), false);
      assert.match(String(await catalog.storedPassword(`pgprov_ready_${id}_user`)), /^SCRAM-SHA-256\$4096:/, 'a verifier of a password only the service holds');
      const atSet = withDatabase(doorString(a, door), `pgprov_ready_${id}`);
      // Raw SCRAM logins (node-postgres will not send an empty password): the server's verdict on each.
      for (const [user, password] of [[`pgprov_ready_${id}_user`, ''], [`pgprov_ready_${id}_user`, 'guess'], [`pgprov_ready_${id}`, 'guess']] as const) {
        const login = await pausedLoginAs(withLogin(atSet, user, password)).catch((err: Error) => err);
        if (login instanceof Error) continue; // refused before the password was asked for
        try {
          const finished = await login.finish();
          assert.equal(finished.ok, false, `${user} with ${password ? 'a guessed' : 'an empty'} password`);
        } finally {
          login.close();
        }
      }
      // A's own login, at the set's database.
      await assertRefused(atSet, refusalAt(door, `pgprov_ready_${id}`), `pgprov_ready_${id}`);
    });
  }
});

describe('secrets stay out of every log', () => {
  for (const { door, title } of DOORS) {
    it(`keeps passwords and apps' data out of Postgres's and the pooler's logs, even what an app sends in its own statements (${title})`, async () => {
      const name = `log_probe_${door}`;
      const user = `app_${name}_user`;
      const throwaway = (await t.provision(name)) as App;
      await asApp(doorString(throwaway, door), async (c) => {
        await c.query(`ALTER ROLE ${user} PASSWORD 'Plaintext-Secret-Change-1'`);
        await rejectionOf(c.query("SELECT 'Plaintext-Secret-Failing-2'::int"));
        await c.query('CREATE TABLE users (email text UNIQUE)');
        await c.query("INSERT INTO users VALUES ('Plaintext-Secret-Email-3')");
        await rejectionOf(c.query("INSERT INTO users VALUES ('Plaintext-Secret-Email-3')"));
      });
      await rejectionOf(connectAs(withLogin(doorString(throwaway, door), user, 'Plaintext-Secret-Guess-4')));
      // The door that checked the wrong password logs it: Postgres directly, PgBouncer (which checks passwords
      // itself) through the pooler.
      const readLog = (file: string) => async () => readFileSync(join(t.stack.paths.logs, file), 'utf8');
      const [doorLog, failedLogin] =
        door === 'direct'
          ? ['postgres.log', new RegExp(`password authentication failed for user "${user}"`)]
          : ['pgbouncer.log', new RegExp(`/${user}@[^ ]+ password authentication failed`)];
      assert.match(await eventually(readLog(doorLog), (text) => failedLogin.test(text), 30_000), failedLogin, 'the failed login is logged');
      // Last, a login Postgres itself refuses (A's, at a database pg_hba.conf does not admit it to; at Postgres's own
      // door, whichever door this test is about: it marks how far Postgres's log has been written): once its line is
      // in Postgres's log, whatever the statements before it made Postgres write is there too.
      const marker = `log_marker_${door}`;
      await assertRefused(withDatabase(doorString(a, 'direct'), marker), PG_HBA_REFUSAL, marker);
      const postgresLog = await eventually(readLog('postgres.log'), (text) => text.includes(`database "${marker}"`), 30_000);
      assert.ok(postgresLog.includes(`database "${marker}"`), 'server events are logged');
      assert.doesNotMatch(postgresLog, /Plaintext-Secret/);
      assert.doesNotMatch(await readLog('pgbouncer.log')(), /Plaintext-Secret/);
      const logs = t.allLogs();
      for (const app of [a, b, throwaway]) assert.ok(!logs.includes(new URL(app.connection_string).password));
      assert.ok(!logs.includes('postgres://'));
      assert.equal(logs.split(t.stack.adminKey).length - 1, 1, 'the admin key once, at boot');
    });
  }
});

describe('the superuser and where Postgres listens', () => {
  it('accepts the superuser over the socket and from loopback where the service runs, and nowhere else', async () => {
    const password = t.stack.postgresPassword;
    // The service's way in (the Unix socket), and the operator's psql on Postgres's own machine (127.0.0.1).
    const socket = new pg.Client({ ...t.stack.superuserConnection(), host: t.stack.paths.socketDir });
    await socket.connect();
    try {
      assert.equal((await socket.query("SELECT inet_client_addr() IS NULL AS over_socket, current_setting('is_superuser') AS su")).rows[0].over_socket, true);
    } finally {
      await socket.end();
    }
    await t.superuser((db) => db.query('SELECT 1'));
    const foreign = clientFrom('127.0.0.2', { port: t.stack.settings.pgPort, user: 'postgres', password, database: 'postgres' });
    const err = await rejectionOf(foreign.connect());
    assert.match(err.message, /pg_hba\.conf rejects connection for host "127\.0\.0\.2", user "postgres"/);
    // The same other "host" is an app network: an app role may connect from it (to Postgres itself: the direct door).
    const url = new URL(doorString(a, 'direct'));
    assert.equal(Number(url.port), t.stack.settings.pgPort);
    const app = clientFrom('127.0.0.2', { port: Number(url.port), user: url.username, password: url.password, database: url.pathname.slice(1), ssl: { ca: trustedAuthorityPem() } });
    await app.connect();
    await app.end();
    // Every line of pg_hba.conf that could admit the superuser, as Postgres parsed it: the socket and the
    // loopback addresses only (in compose, loopback inside the postgres container is Postgres itself).
    const admitting = await t.superuser(async (db) =>
      (
        await db.query(
          "SELECT type, address, netmask FROM pg_hba_file_rules WHERE auth_method <> 'reject' AND ('postgres' = ANY(user_name) OR 'all' = ANY(user_name)) ORDER BY line_number",
        )
      ).rows,
    );
    assert.deepEqual(admitting, [
      { type: 'local', address: null, netmask: null },
      { type: 'host', address: '127.0.0.1', netmask: '255.255.255.255' },
      { type: 'host', address: '::1', netmask: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff' },
    ]);
  });

  it('never lets the superuser or the admin console in at the pooler (through the pooler)', async () => {
    // The pooler's own door: the superuser has no line in PgBouncer's auth_file (the service writes app login roles
    // only), so PgBouncer never logs in to Postgres as the superuser; pgbouncer-hba.conf refuses the system's
    // databases whoever asks; its admin console answers only on its Unix socket, never over TCP.
    const password = t.stack.postgresPassword;
    const asSuperuser = withLogin(a.connection_string, 'postgres', password);
    for (const database of SYSTEM_DATABASES) await assertRefused(withDatabase(asSuperuser, database), /^login rejected$/, `postgres at ${database}`);
    // PgBouncer knows no such user (its password check fails whatever the password), or pgbouncer-hba.conf admits
    // only each app's own login role to the app's database.
    await assertRefused(asSuperuser, /^SASL authentication failed$|^login rejected$/, 'postgres at app_hostile_a');
    const adminConsole = withDatabase(withLogin(a.connection_string, 'pgprov_pooler_admin', poolerAdminPassword(password)), 'pgbouncer');
    await assertRefused(adminConsole, /^login rejected$/, 'the admin console over TCP, with its password');
  });

  it('admits app logins at the pooler only over TLS and only by scram-sha-256 (through the pooler)', async () => {
    const plain = new URL(a.connection_string);
    plain.searchParams.set('sslmode', 'disable');
    await assertRefused(plain.toString(), /^login rejected$/, 'A without TLS');
    // pgbouncer-hba.conf as the stack runs it (the repo's, rendered by the service with each app's lines): every
    // line that admits anyone asks for scram-sha-256, every one from the network is hostssl (the admin console's
    // is its socket's), and each app's admits its login role to its own database only.
    const rendered = readFileSync(join(t.stack.pgbouncer!.paths.authDir, 'pgbouncer-hba.conf'), 'utf8');
    assert.match(rendered, /^hostssl app_hostile_a app_hostile_a_user 0\.0\.0\.0\/0 scram-sha-256$/m);
    const rules = rendered
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '' && !line.startsWith('#'))
      .map((line) => line.split(/\s+/));
    assert.ok(rules.length > 0);
    for (const rule of rules) {
      const [type] = rule;
      const method = rule.at(-1);
      assert.ok(['local', 'host', 'hostssl'].includes(type!), rule.join(' '));
      assert.ok(['scram-sha-256', 'reject'].includes(method!), rule.join(' '));
      if (method !== 'reject') assert.ok(type === 'hostssl' || type === 'local', `admits over TLS only: ${rule.join(' ')}`);
      // An app's login role, or one of its extra credentials (app_<app>.<credential>), to the app's database only.
      if (type === 'hostssl') assert.ok(rule[2] === `${rule[1]}_user` || rule[2]!.startsWith(`${rule[1]}.`), `an app's login to its own database only: ${rule.join(' ')}`);
    }
  });

  it('refuses every login without scram-sha-256, and parses pg_hba.conf without errors', async () => {
    const rules = await t.superuser(async (db) => (await db.query('SELECT type, auth_method, error FROM pg_hba_file_rules')).rows);
    assert.ok(rules.length > 0);
    for (const rule of rules) {
      assert.equal(rule.error, null);
      assert.ok(['scram-sha-256', 'reject'].includes(rule.auth_method), JSON.stringify(rule));
    }
  });

  it("runs the repo's postgres.conf, overriding only where it listens, and listens on 127.0.0.1 only", async () => {
    // The repo's file, read as Postgres reads it (the last assignment of a name wins).
    const repoConf = parsePostgresConf(readFileSync(join(REPO_ROOT, 'postgres.conf'), 'utf8'));
    // In compose, Postgres listens on every interface of its container: the container's networks are internal
    // and compose publishes no Postgres port (the next test). Nothing else may make it listen more widely.
    assert.equal(repoConf.get('listen_addresses'), '*');
    assert.ok(!repoConf.has('include') && !repoConf.has('include_dir') && !repoConf.has('include_if_exists'), 'postgres.conf includes no other file');

    // What Postgres made of it: every line applied as written, except the three the local stack sets on its
    // command line (listen_addresses, port, unix_socket_directories).
    const overridden = ['listen_addresses', 'port', 'unix_socket_directories'];
    const fileRows = await t.superuser(async (db) =>
      (await db.query("SELECT name, setting, applied, error FROM pg_file_settings WHERE sourcefile = current_setting('config_file') ORDER BY seqno")).rows,
    );
    const applied = new Map(fileRows.map((row) => [row.name as string, row]));
    assert.deepEqual([...applied.keys()].sort(), [...repoConf.keys()].sort(), "Postgres read the repo's postgres.conf");
    for (const [name, value] of repoConf) {
      const row = applied.get(name)!;
      assert.equal(row.setting, value, name);
      if (overridden.includes(name)) {
        // The running value came from the command line; the file's differs, and needs a restart Postgres will not do.
        assert.equal(row.applied, false, `${name}: overridden by the local stack`);
      } else {
        assert.deepEqual({ applied: row.applied, error: row.error }, { applied: true, error: null }, name);
      }
    }
    const listen = await t.superuser(async (db) => (await db.query("SELECT setting, source FROM pg_settings WHERE name = 'listen_addresses'")).rows[0]);
    assert.deepEqual(listen, { setting: '127.0.0.1', source: 'command line' });

    // What Postgres actually listens on: the kernel's table of listening TCP sockets.
    assert.deepEqual(listeningAddresses(t.stack.settings.pgPort), ['127.0.0.1'], 'the local stack listens on loopback only');
  });

  it('publishes no Postgres port in compose; only nginx faces the network; host psql is opt-in and loopback-only', () => {
    const compose = parseYaml(readFileSync(join(REPO_ROOT, 'docker-compose.yml'), 'utf8'));
    assert.equal(compose.services.postgres.ports, undefined);
    assert.equal(compose.services.postgres.network_mode, undefined);
    assert.ok(!compose.services.postgres.command.join(' ').includes('listen_addresses'), "compose runs postgres.conf's listen_addresses as it is");
    assert.equal(compose.services.service.ports, undefined);
    assert.deepEqual(compose.services.nginx.ports, ['${HTTP_PORT:-80}:80']);
    assert.equal(compose.networks.backend.internal, true);
    assert.equal(compose.networks.apps.internal, true);
    const postgresNetworks = Array.isArray(compose.services.postgres.networks) ? compose.services.postgres.networks : Object.keys(compose.services.postgres.networks ?? {});
    assert.ok(postgresNetworks.length > 0, 'Postgres is on named networks, not the default one');
    for (const network of postgresNetworks) assert.equal(compose.networks[network]?.internal, true, `network ${network} is internal`);
    assert.doesNotMatch(readFileSync(join(REPO_ROOT, 'service', 'Dockerfile'), 'utf8'), /POSTGRES_PASSWORD/);
    const override = parseYaml(readFileSync(join(REPO_ROOT, 'docker-compose.host-postgres.yml'), 'utf8'));
    for (const port of override.services.postgres.ports) assert.match(port, /^127\.0\.0\.1:/);
  });
});

describe('app roles made before a setting', () => {
  it('are given log_min_messages = fatal when the service starts', async () => {
    await t.provision('older_role');
    const setting = () =>
      t.superuser(async (db) =>
        (await db.query("SELECT unnest(setconfig) AS s FROM pg_db_role_setting WHERE setrole = 'app_older_role_user'::regrole AND setdatabase = 0")).rows.map((r) => r.s as string),
      );
    assert.ok((await setting()).includes('log_min_messages=fatal'), 'a new role has it');
    // As a role made by a version of the service before the setting: without it.
    await t.superuser((db) => db.query('ALTER ROLE app_older_role_user RESET log_min_messages'));
    assert.ok(!(await setting()).includes('log_min_messages=fatal'));
    await t.stack.stopService();
    await t.stack.startService();
    const after = await eventually(setting, (found) => found.includes('log_min_messages=fatal'), 30_000);
    assert.ok(after.includes('log_min_messages=fatal'), `the service's start gave it back: ${after.join(' ')}`);
  });
});

/** postgres.conf as Postgres reads it: `name = value` or `name value`, comments, quoted values; the last one wins. */
function parsePostgresConf(text: string): Map<string, string> {
  const settings = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([A-Za-z0-9_.]+)\s*(?:=\s*|\s+)('(?:[^'\\]|\\.|'')*'|[^\s#]+)/.exec(line);
    assert.ok(match, `postgres.conf: cannot parse ${JSON.stringify(line)}`);
    const [, name, value] = match;
    settings.set(name!.toLowerCase(), value!.startsWith("'") ? value!.slice(1, -1).replaceAll("''", "'").replace(/\\(.)/g, '$1') : value!);
  }
  return settings;
}

/** The local addresses of the TCP sockets listening on `port` (Linux's /proc/net/tcp and tcp6). */
function listeningAddresses(port: number): string[] {
  const addresses: string[] = [];
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue; // no IPv6 on this machine
    }
    for (const line of text.split('\n').slice(1)) {
      const [, local, , state] = line.trim().split(/\s+/);
      if (!local || state !== '0A') continue; // 0A: LISTEN
      const [hex, portHex] = local.split(':');
      if (parseInt(portHex!, 16) !== port) continue;
      addresses.push(hex!.length === 8 ? ipv4FromProc(hex!) : ipv6FromProc(hex!));
    }
  }
  return addresses.sort();
}

/** /proc/net/tcp writes an IPv4 address as one little-endian 32-bit word in hex. */
const ipv4FromProc = (hex: string) => [6, 4, 2, 0].map((i) => parseInt(hex.slice(i, i + 2), 16)).join('.');

/** /proc/net/tcp6 writes an IPv6 address as four little-endian 32-bit words in hex. */
function ipv6FromProc(hex: string): string {
  const bytes: number[] = [];
  for (let word = 0; word < 4; word++) for (const i of [6, 4, 2, 0]) bytes.push(parseInt(hex.slice(word * 8 + i, word * 8 + i + 2), 16));
  const groups = Array.from({ length: 8 }, (_, i) => ((bytes[2 * i]! << 8) | bytes[2 * i + 1]!).toString(16));
  return groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
}
