// SECURITY.md's promises, each attacked with real Postgres sessions as a hostile app (A) against another app
// (B) and the server. Every expectation here is a lock that holds; the comment says which one.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { parse as parseYaml } from 'yaml';
import { REPO_ROOT } from '../scripts/local-stack.js';
import { asApp, connectAs, rejectionOf, startTestStack, withDatabase, type ProvisionedApp, type TestStack } from './helpers/stack.js';

let t: TestStack;
let a: ProvisionedApp;
let b: ProvisionedApp;
const CONNECTION_LIMIT = 5;

const readySetIds = () =>
  t.superuser(async (db) => (await db.query("SELECT id FROM ready_pool WHERE state = 'ready' ORDER BY id")).rows.map((r) => r.id as string), 'provisioner');

before(async () => {
  t = await startTestStack({
    serviceEnv: { LOG_PRETTY: 'false', APP_CONNECTION_LIMIT: String(CONNECTION_LIMIT), APP_TEMP_FILE_LIMIT: '1MB', READY_POOL_SIZE: '3', READY_POOL_REFILL_PER_SECOND: '20' },
  });
  // A and B are handed over from the ready pool, so every promise below is tested on that path too.
  for (let i = 0; i < 100 && (await readySetIds()).length < 3; i++) await new Promise((resolve) => setTimeout(resolve, 100));
  const before = await readySetIds();
  assert.equal(before.length, 3);
  a = await t.provision('hostile_a');
  b = await t.provision('victim_b');
  assert.ok((await readySetIds()).filter((id) => before.includes(id)).length <= 1, 'A and B came from the ready pool');
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

describe("app A cannot reach app B's database or the system's", () => {
  const targets = ['app_victim_b', 'postgres', 'template1', 'template0', 'provisioner'];

  it('is refused at every database but its own', async () => {
    for (const database of targets) {
      const err = await rejectionOf(asApp(withDatabase(a.connection_string, database), (c) => c.query('SELECT 1')));
      assert.match(err.message, /pg_hba\.conf rejects|no pg_hba\.conf entry/, database);
    }
  });

  it('is refused by pg_hba.conf even when the privilege lock is opened (first lock alone)', async () => {
    await t.superuser((db) => db.query('GRANT CONNECT ON DATABASE app_victim_b TO PUBLIC; GRANT CONNECT ON DATABASE postgres TO PUBLIC; GRANT CONNECT ON DATABASE provisioner TO PUBLIC'));
    try {
      for (const database of ['app_victim_b', 'postgres', 'provisioner']) {
        const err = await rejectionOf(asApp(withDatabase(a.connection_string, database), (c) => c.query('SELECT 1')));
        assert.match(err.message, /pg_hba\.conf rejects|no pg_hba\.conf entry/, database);
      }
    } finally {
      await t.superuser((db) => db.query('REVOKE CONNECT ON DATABASE app_victim_b FROM PUBLIC; REVOKE ALL ON DATABASE postgres FROM PUBLIC; REVOKE ALL ON DATABASE provisioner FROM PUBLIC'));
    }
  });

  it('is refused by privileges even when the pg_hba.conf lock is passed (second lock alone)', async () => {
    // Making A a member of B's access role lets A pass `samerole` for app_victim_b; CONNECT still stops it.
    await t.superuser((db) => db.query('GRANT app_victim_b TO app_hostile_a_user'));
    try {
      const err = await rejectionOf(asApp(withDatabase(a.connection_string, 'app_victim_b'), (c) => c.query('SELECT 1')));
      assert.match(err.message, /permission denied for database "app_victim_b"/);
    } finally {
      await t.superuser((db) => db.query('REVOKE app_victim_b FROM app_hostile_a_user'));
    }
  });

  it('cannot open its own database to B, so B still cannot get in', async () => {
    await asApp(a.connection_string, async (c) => {
      await c.query('GRANT CONNECT ON DATABASE app_hostile_a TO PUBLIC'); // "no privileges were granted": A is not the owner
      await c.query('GRANT CONNECT ON DATABASE app_hostile_a TO app_victim_b_user');
      assert.equal(await sqlError(c.query('ALTER DATABASE app_hostile_a OWNER TO app_hostile_a_user')), '42501');
      assert.equal(await sqlError(c.query("ALTER DATABASE app_hostile_a SET log_statement = 'all'")), '42501');
    });
    const acl = await t.superuser(async (db) => (await db.query("SELECT datacl::text FROM pg_database WHERE datname = 'app_hostile_a'")).rows[0].datacl);
    assert.equal(acl, '{postgres=CTc/postgres,app_hostile_a_user=CTc/postgres}');
    const err = await rejectionOf(asApp(withDatabase(b.connection_string, 'app_hostile_a'), (c) => c.query('SELECT 1')));
    assert.match(err.message, /pg_hba\.conf rejects|no pg_hba\.conf entry/);
  });

  it("cannot read B's queries from pg_stat_activity", async () => {
    const victim = await connectAs(b.connection_string);
    try {
      const running = victim.query("SELECT pg_sleep(1.5), 'b-query-secret' AS marker");
      await new Promise((resolve) => setTimeout(resolve, 300));
      const rows = await asApp(a.connection_string, async (c) => (await c.query("SELECT query FROM pg_stat_activity WHERE usename = 'app_victim_b_user'")).rows);
      assert.ok(rows.length >= 1);
      for (const row of rows) assert.equal(row.query, '<insufficient privilege>');
      await running;
    } finally {
      await victim.end();
    }
  });
});

describe('app A cannot raise its own powers', () => {
  it('cannot create databases or roles, or become or join another role', async () => {
    await asApp(a.connection_string, async (c) => {
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

  it('cannot lift its own limits or attributes', async () => {
    await asApp(a.connection_string, async (c) => {
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

  it('cannot read or write server files, or run programs', async () => {
    await asApp(a.connection_string, async (c) => {
      await c.query('CREATE TABLE loot (line text)');
      const attempts = [
        "COPY loot FROM '/etc/passwd'",
        "COPY loot TO '/tmp/pgprov-exfiltrated'",
        "COPY loot FROM PROGRAM 'id'",
        "COPY loot TO PROGRAM 'sh -c id'",
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

  it('cannot load untrusted extensions, languages or libraries; may use trusted extensions', async () => {
    await asApp(a.connection_string, async (c) => {
      for (const extension of ['file_fdw', 'dblink', 'postgres_fdw', 'adminpack']) {
        assert.equal(await sqlError(c.query(`CREATE EXTENSION ${extension}`)), '42501', extension);
      }
      assert.equal(await sqlError(c.query("CREATE FUNCTION evil() RETURNS int LANGUAGE c AS 'libc.so.6', 'getpid'")), '42501');
      assert.equal(await sqlError(c.query("LOAD '/usr/lib/x86_64-linux-gnu/libc.so.6'")), '42501');
      assert.equal(await sqlError(c.query('CREATE EVENT TRIGGER spy ON ddl_command_start EXECUTE FUNCTION pg_catalog.now()')), '42501');
      assert.equal(await sqlError(c.query("CREATE SUBSCRIPTION s CONNECTION 'dbname=app_victim_b' PUBLICATION p")), '42501');
      // The trusted extensions an app may install itself (SECURITY.md lists them).
      for (const extension of ['pgcrypto', 'citext', 'hstore', 'pg_trgm', '"uuid-ossp"']) await c.query(`CREATE EXTENSION ${extension}`);
      assert.equal((await c.query("SELECT length(gen_random_uuid()::text) AS n")).rows[0].n, 36);
    });
  });

  it('cannot open a replication connection', async () => {
    const client = new pg.Client({ connectionString: a.connection_string, replication: 'database' } as pg.ClientConfig);
    client.on('error', () => {});
    const err = await rejectionOf(client.connect());
    assert.match(err.message, /no pg_hba\.conf entry for replication connection|must be superuser or replication role/);
  });

  it('cannot end B\'s sessions or the service\'s', async () => {
    const victim = await connectAs(b.connection_string);
    try {
      const pid = (await victim.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      await asApp(a.connection_string, async (c) => {
        assert.equal(await sqlError(c.query('SELECT pg_terminate_backend($1)', [pid])), '42501');
        assert.equal(await sqlError(c.query('SELECT pg_cancel_backend($1)', [pid])), '42501');
      });
      assert.equal((await victim.query('SELECT 1 AS alive')).rows[0].alive, 1);
    } finally {
      await victim.end();
    }
  });
});

describe('one app cannot starve the others', () => {
  it(`stops A at ${CONNECTION_LIMIT} connections while B still connects`, async () => {
    const held: pg.Client[] = [];
    try {
      for (let i = 0; i < CONNECTION_LIMIT; i++) held.push(await connectAs(a.connection_string));
      const err = await rejectionOf(connectAs(a.connection_string));
      assert.equal(err.code, '53300');
      assert.match(err.message, /too many connections for role "app_hostile_a_user"/);
      await asApp(b.connection_string, async (c) => assert.equal((await c.query('SELECT v FROM secrets')).rows[0].v, 'b-private'));
      assert.equal((await t.get('/health')).status, 200, 'the service keeps its way in');
    } finally {
      await Promise.all(held.map((c) => c.end()));
    }
  });

  it("enforces the app's temp_file_limit, which it cannot raise", async () => {
    await asApp(a.connection_string, async (c) => {
      assert.equal((await c.query('SHOW temp_file_limit')).rows[0].temp_file_limit, '1MB');
      await c.query("SET work_mem = '64kB'");
      const err = await rejectionOf(c.query('SELECT count(*) FROM (SELECT g FROM generate_series(1, 500000) g ORDER BY g DESC) s'));
      assert.equal(err.code, '53400');
      assert.match(err.message, /temp_file_limit/);
    });
  });

  it('gives every app default timeouts', async () => {
    await asApp(a.connection_string, async (c) => {
      assert.equal((await c.query('SHOW idle_in_transaction_session_timeout')).rows[0].idle_in_transaction_session_timeout, '10min');
    });
  });
});

describe('names that look alike stay apart', () => {
  it('provisions a family of look-alike names, each reaching only its own database', async () => {
    const names = ['kin', 'kin_user_user', 'app_kin', 'kin_app', 'user_kin', 'kin_db', 'kin1', 'kin_1', 'k_i_n'];
    const apps = [];
    for (const name of names) apps.push(await t.provision(name));
    for (const [i, app] of apps.entries()) {
      await asApp(app.connection_string, (c) => c.query('SELECT 1'));
      for (const [j, other] of apps.entries()) {
        if (i === j) continue;
        const err = await rejectionOf(asApp(withDatabase(app.connection_string, other.database), (c) => c.query('SELECT 1')));
        assert.match(err.message, /pg_hba\.conf rejects|no pg_hba\.conf entry/, `${app.app_name} -> ${other.database}`);
      }
    }
  });

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
  it('lets no one log in to, or connect to, a prepared set before it is handed over', async () => {
    for (let i = 0; i < 100 && (await readySetIds()).length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    const [id] = await readySetIds();
    assert.ok(id, 'a prepared set exists');
    const role = await t.superuser(async (db) => (await db.query('SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = $1', [`pgprov_ready_${id}_user`])).rows[0]);
    assert.equal(role.rolcanlogin, false);
    assert.match(role.rolpassword, /^SCRAM-SHA-256\$4096:/, 'a verifier of a password only the service holds');
    const url = new URL(a.connection_string);
    for (const [user, password] of [[`pgprov_ready_${id}_user`, ''], [`pgprov_ready_${id}_user`, 'guess'], [`pgprov_ready_${id}`, 'guess']] as const) {
      const attempt = new URL(a.connection_string);
      attempt.username = user;
      attempt.password = password;
      attempt.pathname = `/pgprov_ready_${id}`;
      await rejectionOf(asApp(attempt.toString(), (c) => c.query('SELECT 1')));
    }
    const err = await rejectionOf(asApp(`postgres://${url.username}:${url.password}@${url.host}/pgprov_ready_${id}?sslmode=disable`, (c) => c.query('SELECT 1')));
    assert.match(err.message, /pg_hba\.conf rejects|no pg_hba\.conf entry/);
  });
});

describe('secrets stay out of every log', () => {
  it("keeps passwords and apps' data out of Postgres's log, even what an app sends in its own statements", async () => {
    const throwaway = await t.provision('log_probe');
    await asApp(throwaway.connection_string, async (c) => {
      await c.query("ALTER ROLE app_log_probe_user PASSWORD 'Plaintext-Secret-Change-1'");
      await rejectionOf(c.query("SELECT 'Plaintext-Secret-Failing-2'::int"));
      await c.query('CREATE TABLE users (email text UNIQUE)');
      await c.query("INSERT INTO users VALUES ('Plaintext-Secret-Email-3')");
      await rejectionOf(c.query("INSERT INTO users VALUES ('Plaintext-Secret-Email-3')"));
    });
    const wrongPassword = new URL(throwaway.connection_string);
    wrongPassword.password = 'Plaintext-Secret-Guess-4';
    await rejectionOf(connectAs(wrongPassword.toString()));
    await new Promise((resolve) => setTimeout(resolve, 200));
    const postgresLog = readFileSync(join(t.stack.paths.logs, 'postgres.log'), 'utf8');
    assert.match(postgresLog, /password authentication failed for user "app_log_probe_user"/, 'server events are logged');
    assert.doesNotMatch(postgresLog, /Plaintext-Secret/);
    const logs = t.allLogs();
    for (const app of [a, b, throwaway]) assert.ok(!logs.includes(new URL(app.connection_string).password));
    assert.ok(!logs.includes('postgres://'));
    assert.equal(logs.split(t.stack.adminKey).length - 1, 1, 'the admin key once, at boot');
  });
});

describe('the superuser and where Postgres listens', () => {
  it('accepts the superuser over the socket and from loopback where the service runs, and nowhere else', async () => {
    const password = t.stack.postgresPassword;
    await t.superuser((db) => db.query('SELECT 1'));
    const foreign = clientFrom('127.0.0.2', { port: t.stack.settings.pgPort, user: 'postgres', password, database: 'postgres' });
    const err = await rejectionOf(foreign.connect());
    assert.match(err.message, /pg_hba\.conf rejects connection for host "127\.0\.0\.2", user "postgres"/);
    // The same other "host" is an app network: an app role may connect from it.
    const url = new URL(a.connection_string);
    const app = clientFrom('127.0.0.2', { port: Number(url.port), user: url.username, password: url.password, database: url.pathname.slice(1) });
    await app.connect();
    await app.end();
  });

  it('refuses every login without scram-sha-256, and parses pg_hba.conf without errors', async () => {
    const rules = await t.superuser(async (db) => (await db.query('SELECT type, auth_method, error FROM pg_hba_file_rules')).rows);
    assert.ok(rules.length > 0);
    for (const rule of rules) {
      assert.equal(rule.error, null);
      assert.ok(['scram-sha-256', 'reject'].includes(rule.auth_method), JSON.stringify(rule));
    }
    const listen = await t.superuser(async (db) => (await db.query('SHOW listen_addresses')).rows[0].listen_addresses);
    assert.equal(listen, '127.0.0.1', 'the local stack listens on loopback only');
  });

  it('publishes no Postgres port in compose; only nginx faces the network; host psql is opt-in and loopback-only', () => {
    const compose = parseYaml(readFileSync(join(REPO_ROOT, 'docker-compose.yml'), 'utf8'));
    assert.equal(compose.services.postgres.ports, undefined);
    assert.equal(compose.services.service.ports, undefined);
    assert.deepEqual(compose.services.nginx.ports, ['${HTTP_PORT:-80}:80']);
    assert.equal(compose.networks.backend.internal, true);
    assert.equal(compose.networks.apps.internal, true);
    assert.doesNotMatch(readFileSync(join(REPO_ROOT, 'service', 'Dockerfile'), 'utf8'), /POSTGRES_PASSWORD/);
    const override = parseYaml(readFileSync(join(REPO_ROOT, 'docker-compose.host-postgres.yml'), 'utf8'));
    for (const port of override.services.postgres.ports) assert.match(port, /^127\.0\.0\.1:/);
  });
});
