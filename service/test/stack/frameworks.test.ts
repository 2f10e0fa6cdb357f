// Test and shadow databases for the frameworks the README names, tried for real against the stack: Django's test
// runner, Rails's tasks and test runner, and Prisma's CLI, each run as a child process on a copy of its tiny project
// (test/fixtures/frameworks/<name>/), with the strings the service handed the app and its companion database
// (POST /apps/:name/databases): Django and Rails through the pooler, as an app's own traffic goes; Prisma Migrate
// through the direct door, as it needs. What each leaves behind is read back from the catalogs as the superuser.
// README: "Test and shadow databases for your framework".
//
// Django and Rails are Debian 12's packages (python3-django 3.2 with python3-psycopg2; ruby-rails 6.1 with ruby-pg),
// which .ci/run installs. Prisma is the service's dev dependency: its usual schema engine is a native binary that
// its CLI downloads from Prisma's own servers, out of reach here, so the trials use Prisma 6's JavaScript schema
// engine (engine 'js', over @prisma/adapter-pg). That engine cannot read Postgres's catalogs (prisma/orm#27403), so
// `prisma migrate dev` itself cannot finish here, with or without a shadow database; `prisma migrate reset`, which
// runs the engine's own reset and then every migration, can, and that is what migrate dev does to the database
// given as shadowDatabaseUrl.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { asApp, withAuthority, withLogin } from '../helpers/app-sessions.js';
import type { ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

type Credentials = ProvisionedApp & { password: string; database_url: string; direct_connection_string: string };

/** A companion database as POST /apps/:name/databases answers for it: the app's own login, no password. */
interface Companion {
  app_name: string;
  name: string;
  database: string;
  connection_string: string;
  database_url: string;
  direct_connection_string: string;
  username: string;
}

/** Debian's python, which python3-django and python3-psycopg2 are installed for (not a pyenv python first on PATH). */
const PYTHON = '/usr/bin/python3';
/** Debian's ruby, which ruby-rails and ruby-pg are installed for. */
const RUBY = '/usr/bin/ruby';
const SERVICE_DIR = fileURLToPath(new URL('../../', import.meta.url));
const FIXTURES = join(SERVICE_DIR, 'test/fixtures/frameworks');
const PRISMA_CLI = join(SERVICE_DIR, 'node_modules/prisma/build/index.js');

let t: TestStack;
let scratch: string;

before(async () => {
  scratch = mkdtempSync(join(tmpdir(), 'pgprov-frameworks-test-'));
  mkdirSync(join(scratch, 'home'));
  t = await startTestStack();
});
after(async () => {
  await t?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

// --- companions -----------------------------------------------------------------------------------------------

/** POST /apps/:name/databases {"name"}: a companion database of the app, reached with the app's own login. */
async function makeCompanion(stack: TestStack, owner: Credentials, name: string): Promise<Companion> {
  const response = await stack.admin('POST', `/apps/${owner.app_name}/databases`, { name });
  assert.equal(response.status, 201, response.text);
  const companion = response.body as unknown as Companion;
  assert.equal(companion.database, `app_${owner.app_name}-${name}`);
  return companion;
}

/** The companion's direct string with the app's password in it: what the app writes into its configuration. */
const directWithPassword = (companion: Companion, owner: Credentials) => withLogin(companion.direct_connection_string, owner.username, owner.password);

/** An app of its own for each framework (no trial sees another's tables), with its companion `name`. */
async function appWithCompanion(appName: string, name: string): Promise<{ app: Credentials; companion: Companion }> {
  const app = (await t.provision(appName)) as Credentials;
  return { app, companion: await makeCompanion(t, app, name) };
}

// --- running the frameworks -----------------------------------------------------------------------------------

interface Run {
  code: number | null;
  /** stdout and stderr, one after the other. */
  output: string;
}

/**
 * Runs `program` in `cwd` with only PATH, an empty home and `env` in its environment: nothing of this process
 * (DATABASE_URL, PG*) leaks in. The time limit only ends a hung child; nothing is asserted on time.
 */
function run(program: string, args: string[], cwd: string, env: Record<string, string>): Promise<Run> {
  return new Promise((resolve, reject) => {
    const environment = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: join(scratch, 'home'), LANG: 'C.UTF-8', ...env };
    execFile(program, args, { cwd, env: environment, timeout: 120_000, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') return reject(new Error(`${program} is missing: this test needs it (see the comment at its definition)`));
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, output: `${stdout}\n${stderr}` });
    });
  });
}

/** A fresh copy of a fixture project (each run writes into its project: caches, logs, Gemfile.lock). */
function projectCopy(name: string): string {
  const dir = mkdtempSync(join(scratch, `${name}-`));
  cpSync(join(FIXTURES, name), dir, { recursive: true });
  return dir;
}

/** Fails with how to install a framework that is not on this machine (never skipped: CI installs it). */
async function requireModule(program: string, args: string[], install: string): Promise<void> {
  const probe = await run(program, args, scratch, {});
  if (probe.code !== 0) throw new Error(`${program} ${args.join(' ')} failed: install it (Debian/Ubuntu: apt-get install -y ${install})\n${probe.output}`);
}

// --- reading what they left -----------------------------------------------------------------------------------

/** The tables of `database`'s public schema, with their owners. */
function tablesIn(database: string): Promise<Array<{ table: string; owner: string }>> {
  return t.superuser(async (db) => {
    const { rows } = await db.query<{ table: string; owner: string }>(
      `SELECT tablename AS table, tableowner AS owner FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`,
    );
    return rows;
  }, database);
}

const tableNames = async (database: string) => (await tablesIn(database)).map((row) => row.table);

async function count(db: pg.Client, sql: string): Promise<number> {
  return Number((await db.query<{ n: string }>(sql)).rows[0]!.n);
}

// --- the trials -----------------------------------------------------------------------------------------------

describe('Django: manage.py test --keepdb with TEST.NAME = the companion "test"', () => {
  let app: Credentials;
  let testDb: Companion;
  before(async () => ({ app, companion: testDb } = await appWithCompanion('fw_django', 'test')));
  // Through the pooler, as the app's own traffic goes (the settings turn off what transaction pooling cannot carry).
  const env = () => ({ DATABASE_URL: app.connection_string, PYTHONDONTWRITEBYTECODE: '1' });

  it('runs its tests in the companion: finds it, migrates it, creates no database, leaves the app\'s own database alone', async () => {
    await requireModule(PYTHON, ['-c', 'import django, psycopg2'], 'python3-django python3-psycopg2');
    const project = projectCopy('django');
    const result = await run(PYTHON, ['manage.py', 'test', '--keepdb', '--verbosity', '2'], project, env());
    assert.equal(result.code, 0, result.output);
    assert.match(result.output, new RegExp(`Using existing test database for alias 'default' \\('${testDb.database}'\\)`));
    assert.match(result.output, /Applying items\.0001_initial\.\.\. OK/);
    assert.match(result.output, new RegExp(`tests ran in database: ${testDb.database}\\b`));
    assert.match(result.output, /Ran 1 test/);
    assert.doesNotMatch(result.output, /Creating test database/);
    // The app may not reach 'postgres' (pg_hba.conf): Django says so and uses the app's own database instead.
    assert.match(result.output, /Django was unable to create a connection to the 'postgres' database and will use the first PostgreSQL database instead/);

    const tables = await tablesIn(testDb.database);
    assert.deepEqual(tables.map((row) => row.table), ['django_migrations', 'items_item']);
    assert.ok(tables.every((row) => row.owner === app.username), JSON.stringify(tables));
    await t.superuser(async (db) => {
      assert.equal(await count(db, 'SELECT count(*) AS n FROM items_item'), 0, 'the test case\'s row was rolled back');
    }, testDb.database);
    assert.deepEqual(await tableNames(app.database), [], 'nothing of the tests is in the app\'s own database');
  });

  it('without --keepdb stops (exit 2) at CREATE DATABASE, which the app may not run, and touches nothing', async () => {
    await requireModule(PYTHON, ['-c', 'import django, psycopg2'], 'python3-django python3-psycopg2');
    const before = await tableNames(testDb.database);
    const result = await run(PYTHON, ['manage.py', 'test', '--noinput'], projectCopy('django'), env());
    assert.equal(result.code, 2, result.output);
    assert.match(result.output, /Got an error creating the test database: permission denied to create database/);
    assert.deepEqual(await tableNames(testDb.database), before);
  });
});

describe('Rails: database.yml\'s test database = the companion "test"', () => {
  let app: Credentials;
  let testDb: Companion;
  before(async () => ({ app, companion: testDb } = await appWithCompanion('fw_rails', 'test')));
  const env = () => ({
    // The app's own database for development, set as a deployed app has it: the test environment must not use it.
    // Through the pooler (database.yml turns off prepared statements and the migration lock).
    DATABASE_URL: app.database_url,
    TEST_DATABASE_URL: testDb.database_url, // as the service answers: no password
    DATABASE_PASSWORD: app.password,
  });
  const rails = (project: string, args: string[], extra: Record<string, string> = {}) => run(RUBY, ['bin/rails', ...args], project, { ...env(), ...extra });

  it('bin/rails db:test:prepare cannot: it drops and re-creates the database, through the \'postgres\' database', async () => {
    await requireModule(RUBY, ['-e', 'require "rails"; require "pg"'], 'ruby-rails ruby-pg');
    const before = await tableNames(testDb.database);
    // Through the pooler, which knows no database 'postgres': it refuses the login.
    const pooled = await rails(projectCopy('rails'), ['db:test:prepare']);
    assert.notEqual(pooled.code, 0, pooled.output);
    assert.match(pooled.output, /FATAL: {2}login rejected/);
    assert.match(pooled.output, /db:test:load => db:test:purge/);
    // Through the direct door, Postgres says which database it was.
    const direct = await rails(projectCopy('rails'), ['db:test:prepare'], { TEST_DATABASE_URL: testDb.direct_connection_string });
    assert.notEqual(direct.code, 0, direct.output);
    assert.match(direct.output, new RegExp(`pg_hba\\.conf rejects connection for host "127\\.0\\.0\\.1", user "${app.username}", database "postgres"`));
    assert.deepEqual(await tableNames(testDb.database), before);
  });

  it('RAILS_ENV=test bin/rails db:schema:load, then bin/rails test: the tests run in the companion, DATABASE_URL notwithstanding', async () => {
    await requireModule(RUBY, ['-e', 'require "rails"; require "pg"'], 'ruby-rails ruby-pg');
    const project = projectCopy('rails');
    const load = await rails(project, ['db:schema:load'], { RAILS_ENV: 'test' });
    assert.equal(load.code, 0, load.output);
    const tests = await rails(project, ['test']);
    assert.equal(tests.code, 0, tests.output);
    assert.match(tests.output, new RegExp(`tests ran in database: ${testDb.database}\\b`));
    assert.match(tests.output, /1 runs, 1 assertions, 0 failures, 0 errors/);

    const tables = await tablesIn(testDb.database);
    assert.deepEqual(tables.map((row) => row.table), ['ar_internal_metadata', 'items', 'schema_migrations']);
    assert.ok(tables.every((row) => row.owner === app.username), JSON.stringify(tables));
    assert.deepEqual(await tableNames(app.database), [], 'nothing of the tests is in the app\'s own database');
  });

  it('after a new migration, bin/rails test stops with "Migrations are pending" until db:schema:load runs again', async () => {
    await requireModule(RUBY, ['-e', 'require "rails"; require "pg"'], 'ruby-rails ruby-pg');
    const project = projectCopy('rails');
    assert.equal((await rails(project, ['db:schema:load'], { RAILS_ENV: 'test' })).code, 0);
    // A new migration, and the schema.rb that `bin/rails db:migrate` would have written for it.
    writeFileSync(
      join(project, 'db/migrate/20240201000000_add_size_to_items.rb'),
      'class AddSizeToItems < ActiveRecord::Migration[6.1]\n  def change\n    add_column :items, :size, :integer\n  end\nend\n',
    );
    const schemaFile = join(project, 'db/schema.rb');
    const schema = readFileSync(schemaFile, 'utf8');
    writeFileSync(schemaFile, schema.replace('2024_01_01_000000', '2024_02_01_000000').replace('t.string "name", null: false', 't.string "name", null: false\n    t.integer "size"'));
    assert.notEqual(schema, readFileSync(schemaFile, 'utf8'));

    const stale = await rails(project, ['test']);
    assert.notEqual(stale.code, 0, stale.output);
    assert.match(stale.output, /Migrations are pending/);
    // Rails first tried its own db:test:prepare, which cannot (above), and said so.
    assert.match(stale.output, /FATAL: {2}login rejected/);

    assert.equal((await rails(project, ['db:schema:load'], { RAILS_ENV: 'test' })).code, 0);
    const fresh = await rails(project, ['test']);
    assert.equal(fresh.code, 0, fresh.output);
    const columns = await t.superuser(
      async (db) => (await db.query<{ column_name: string }>(`SELECT column_name FROM information_schema.columns WHERE table_name = 'items' ORDER BY 1`)).rows.map((row) => row.column_name),
      testDb.database,
    );
    assert.deepEqual(columns, ['id', 'name', 'size']);
  });
});

describe('Prisma: the companion "shadow" as shadowDatabaseUrl', () => {
  let app: Credentials;
  let shadowDb: Companion;
  before(async () => ({ app, companion: shadowDb } = await appWithCompanion('fw_prisma', 'shadow')));
  /** The fixture, with the service's node_modules beside it (prisma.config.ts imports prisma and the adapter). */
  function prismaProject(): string {
    const project = projectCopy('prisma');
    symlinkSync(join(SERVICE_DIR, 'node_modules'), join(project, 'node_modules'));
    return project;
  }
  // The JS engine takes its database from the adapter (prisma.config.ts: DATABASE_URL) and ignores the schema's
  // shadowDatabaseUrl; SHADOW_DATABASE_URL is set all the same, since the CLI reads the schema's env() first.
  const prisma = (project: string, args: string[], databaseUrl: string) =>
    run(process.execPath, [PRISMA_CLI, ...args], project, {
      // node-postgres (the adapter) checks the certificate: the CA, as README "TLS" tells node-postgres apps.
      DATABASE_URL: withAuthority(databaseUrl),
      SHADOW_DATABASE_URL: withAuthority(directWithPassword(shadowDb, app)),
      CHECKPOINT_DISABLE: '1', // no telemetry call to Prisma's servers
      PRISMA_HIDE_UPDATE_MESSAGE: '1',
    });

  it('prisma migrate dev without a shadow database of its own is refused: it would create one, which the app may not', async () => {
    const result = await prisma(prismaProject(), ['migrate', 'dev', '--name', 'second', '--skip-generate'], app.direct_connection_string);
    assert.notEqual(result.code, 0, result.output);
    assert.match(result.output, /permission denied to create database/);
    await t.superuser(async (db) => {
      assert.equal(await count(db, `SELECT count(*) AS n FROM pg_database WHERE datname LIKE 'prisma_migrate_shadow_db_%'`), 0);
    });
  });

  it('prisma migrate reset on the companion, as the app: empties it (DROP SCHEMA public CASCADE, CREATE SCHEMA public) and applies every migration, as migrate dev does to its shadow', async () => {
    const shadow = directWithPassword(shadowDb, app);
    // What an earlier run of migrate dev (or anything else) may have left in the shadow database.
    await asApp(shadow, async (db) => {
      await db.query(`CREATE TABLE leftover (id int); CREATE TABLE "_prisma_migrations" (id varchar(36) PRIMARY KEY)`);
    });
    const result = await prisma(prismaProject(), ['migrate', 'reset', '--force', '--skip-generate', '--skip-seed'], shadow);
    assert.equal(result.code, 0, result.output);
    assert.match(result.output, /Database reset successful/);
    assert.match(result.output, /20240101000000_init/);

    const tables = await tablesIn(shadowDb.database);
    assert.deepEqual(tables.map((row) => row.table), ['Item', '_prisma_migrations']);
    assert.ok(tables.every((row) => row.owner === app.username), JSON.stringify(tables));
    await t.superuser(async (db) => {
      const schema = await db.query<{ owner: string }>(`SELECT nspowner::regrole::text AS owner FROM pg_namespace WHERE nspname = 'public'`);
      assert.equal(schema.rows[0]?.owner, app.username, 'the public schema Prisma made again is the app\'s');
      const applied = await db.query<{ migration_name: string }>(`SELECT migration_name FROM "_prisma_migrations" WHERE finished_at IS NOT NULL`);
      assert.deepEqual(applied.rows.map((row) => row.migration_name), ['20240101000000_init']);
    }, shadowDb.database);
    assert.deepEqual(await tableNames(app.database), [], 'the app\'s own database is untouched');
  });
});
