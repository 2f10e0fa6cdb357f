// TLS at both doors (PgBouncer, the apps' door, and Postgres's own, the direct door), as the clients apps use
// see it: psql (libpq), node-postgres, and psycopg 3 (libpq, from Python). The certificate is the one
// init/setup/make-tls.sh makes; GET /tls/ca.crt hands out its authority, and with it each client checks the
// server (sslmode=verify-full). The strings the service returns carry sslmode=require: encrypted as they are.
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TLSSocket } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { rejectionOf } from '../helpers/conditions.js';
import type { ProvisionedApp } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

type Credentials = ProvisionedApp & { password: string; database_url: string; direct_connection_string: string; sslmode: string };

/** Debian's PostgreSQL 15 client, as the stack's server. */
const PSQL = '/usr/lib/postgresql/15/bin/psql';
/** Debian's python, which python3-psycopg is installed for (not a pyenv python that may come first on PATH). */
const PYTHON = '/usr/bin/python3';

let t: TestStack;
let app: Credentials;
/** The stack's CA certificate (which GET /tls/ca.crt serves): what verify-full checks the doors with. */
let trustedCa: string;
/** An authority of our own, which signed nothing the stack serves. */
let untrustedCa: string;
/** An empty home for libpq's clients: no ~/.postgresql/root.crt, no ~/.pgpass, nothing but what a test gives. */
let home: string;
let scratch: string;

before(async () => {
  scratch = mkdtempSync(join(tmpdir(), 'pgprov-tls-test-'));
  home = join(scratch, 'home');
  untrustedCa = join(scratch, 'untrusted-ca.crt');
  const made = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=an authority the stack never used', '-keyout', join(scratch, 'untrusted-ca.key'), '-out', untrustedCa], { encoding: 'utf8' });
  assert.equal(made.status, 0, `openssl could not make the untrusted CA: ${made.stderr}`);
  mkdirSync(home);
  t = await startTestStack();
  trustedCa = t.stack.postgres.tlsFiles().caCertificate;
  app = (await t.provision('tls_app')) as Credentials;
});
after(async () => {
  await t?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

// --- the clients ----------------------------------------------------------------------------------------------

type Door = 'pooler' | 'direct';
const doors: Door[] = ['pooler', 'direct'];

/** The app's string for `door` with some of its parameters changed (sslmode, sslrootcert). */
function stringFor(door: Door, parameters: Record<string, string> = {}): string {
  const url = new URL(door === 'pooler' ? app.connection_string : app.direct_connection_string);
  for (const [name, value] of Object.entries(parameters)) url.searchParams.set(name, value);
  return url.toString();
}
const verifyFull = (door: Door, ca: string) => stringFor(door, { sslmode: 'verify-full', sslrootcert: ca });

interface Outcome {
  ok: boolean;
  stdout: string;
  stderr: string;
}

/** Runs `program` with only PATH and the empty home in its environment (plus `env`): no PG* setting of this process leaks in. */
function runProgram(program: string, args: string[], env: Record<string, string> = {}): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    execFile(program, args, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, PGCONNECT_TIMEOUT: '20', ...env }, timeout: 60_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') return reject(new Error(`${program} is missing: this test needs it (see the comment at its definition)`));
      resolve({ ok: !err, stdout, stderr });
    });
  });
}

/** psql, never prompting for a password, each command with -c, unaligned and tuples only. */
const psql = (connectionString: string, ...commands: string[]) => runProgram(PSQL, ['-X', '-w', '-A', '-t', '-d', connectionString, ...commands.flatMap((command) => ['-c', command])]);

/**
 * psycopg 3 connects with `connectionString` (given in the environment, not the command line) and says whether
 * the connection is TLS (ssl_in_use), who it is, and what Postgres says of the session's TLS (pg_stat_ssl: the
 * server side of whatever hop reaches Postgres); or the error it got.
 */
async function psycopg(connectionString: string): Promise<{ ssl_in_use?: boolean; user?: string; server_ssl?: boolean | null; error?: string }> {
  const script = `
import json, os, sys
try:
    import psycopg
except ImportError as err:
    print(json.dumps({"missing": str(err)}))
    sys.exit(0)
try:
    with psycopg.connect(os.environ["PGPROV_DSN"]) as conn:
        user = conn.execute("SELECT current_user").fetchone()[0]
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        print(json.dumps({"ssl_in_use": conn.pgconn.ssl_in_use, "user": user, "server_ssl": row[0] if row else None}))
except psycopg.OperationalError as err:
    print(json.dumps({"error": str(err)}))
`;
  const outcome = await runProgram(PYTHON, ['-c', script], { PGPROV_DSN: connectionString });
  assert.ok(outcome.ok, `${PYTHON} failed: ${outcome.stderr}`);
  const result = JSON.parse(outcome.stdout) as { missing?: string; ssl_in_use?: boolean; user?: string; server_ssl?: boolean | null; error?: string };
  // Never skipped: a machine without psycopg cannot vouch for Python apps (CI installs it).
  if (result.missing) throw new Error(`psycopg 3 is not installed for ${PYTHON} (${result.missing}): install it (Debian/Ubuntu: apt-get install -y python3-psycopg)`);
  return result;
}

/** node-postgres connects with `config`: whether its socket is TLS and the server's certificate was verified, who it is, and pg_stat_ssl's word. */
async function nodePg(config: pg.ClientConfig): Promise<{ encrypted: boolean; verified: boolean; user: string; serverSsl: boolean | null }> {
  const client = new pg.Client({ connectionTimeoutMillis: 20_000, ...config });
  client.on('error', () => {});
  await client.connect();
  try {
    // node-postgres keeps its socket here (not a public API): the only way to see the client's side of the TLS.
    const stream = (client as unknown as { connection: { stream: unknown } }).connection.stream;
    const user = (await client.query('SELECT current_user AS u')).rows[0].u as string;
    const serverSsl = ((await client.query('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).rows[0]?.ssl ?? null) as boolean | null;
    return { encrypted: stream instanceof TLSSocket, verified: stream instanceof TLSSocket && stream.authorized, user, serverSsl };
  } finally {
    await client.end().catch(() => {});
  }
}

/** The login of `door` as separate fields, with node-postgres's own TLS options (no sslmode in a string). */
function fieldsFor(door: Door, ssl: pg.ClientConfig['ssl']): pg.ClientConfig {
  const url = new URL(stringFor(door));
  return { host: url.hostname, port: Number(url.port), user: app.username, password: app.password, database: app.database, ssl };
}

const SSL_LINE = /^SSL connection \(protocol: TLSv1\.[23],/m;

// --- the tests ------------------------------------------------------------------------------------------------

describe('TLS at both doors', () => {
  it('serves the CA certificate at GET /tls/ca.crt, through nginx, to anyone: the one that signed the doors\' certificate', async () => {
    const response = await fetch(`${t.stack.httpUrl}/tls/ca.crt`); // no admin key
    assert.equal(response.status, 200);
    assert.match(String(response.headers.get('content-type')), /^application\/x-pem-file/);
    const served = Buffer.from(await response.arrayBuffer());
    assert.ok(served.equals(readFileSync(trustedCa)), 'byte for byte the stack\'s ca.crt');
    assert.match(served.toString('utf8'), /^-----BEGIN CERTIFICATE-----\n[\s\S]+\n-----END CERTIFICATE-----\n$/);
    const ca = new X509Certificate(served);
    assert.equal(ca.ca, true, 'a CA certificate');
    const server = new X509Certificate(readFileSync(t.stack.postgres.tlsFiles().serverCertificate));
    assert.ok(server.checkIssued(ca) && server.verify(ca.publicKey), 'the doors\' certificate is signed by it');
  });

  for (const door of doors) {
    it(`verify-full works at the ${door} door with psql, node-postgres and psycopg`, async () => {
      const psqlOutcome = await psql(verifyFull(door, trustedCa), '\\conninfo', 'SELECT current_user', 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
      assert.ok(psqlOutcome.ok, psqlOutcome.stderr);
      assert.match(psqlOutcome.stdout, SSL_LINE, 'psql: the connection is TLS');
      const [, user, serverSsl] = psqlOutcome.stdout.trim().split('\n').slice(-3);
      assert.equal(user, app.username);

      const fromString = await nodePg({ connectionString: verifyFull(door, trustedCa) });
      const fromOptions = await nodePg(fieldsFor(door, { ca: readFileSync(trustedCa, 'utf8') }));
      for (const outcome of [fromString, fromOptions]) assert.deepEqual({ encrypted: outcome.encrypted, verified: outcome.verified, user: outcome.user }, { encrypted: true, verified: true, user: app.username });

      const python = await psycopg(verifyFull(door, trustedCa));
      assert.equal(python.error, undefined);
      assert.deepEqual({ ssl_in_use: python.ssl_in_use, user: python.user }, { ssl_in_use: true, user: app.username });

      // Postgres's own view of the session: TLS at the direct door. Through the pooler, the hop from PgBouncer
      // to Postgres is not TLS (pgbouncer.ini, server_tls_sslmode): only the client's side is checked above.
      if (door === 'direct') {
        assert.equal(serverSsl, 't', 'psql');
        assert.equal(fromString.serverSsl, true, 'node-postgres');
        assert.equal(fromOptions.serverSsl, true, 'node-postgres');
        assert.equal(python.server_ssl, true, 'psycopg');
      }
    });
  }

  for (const door of doors) {
    it(`refuses verify-full with an authority that did not sign the ${door} door's certificate, in every client`, async () => {
      const psqlOutcome = await psql(verifyFull(door, untrustedCa), 'SELECT 1');
      assert.equal(psqlOutcome.ok, false, 'psql connected');
      assert.match(psqlOutcome.stderr, /certificate verify failed/);

      for (const config of [{ connectionString: verifyFull(door, untrustedCa) }, fieldsFor(door, { ca: readFileSync(untrustedCa, 'utf8') })]) {
        const err = await rejectionOf(nodePg(config));
        assert.match(err.message, /certificate/, `node-postgres: ${err.message}`);
      }

      const python = await psycopg(verifyFull(door, untrustedCa));
      assert.match(String(python.error), /certificate verify failed/, `psycopg: ${JSON.stringify(python)}`);
    });
  }

  it('refuses a login without TLS at the pooler (pgbouncer-hba.conf: hostssl only), in every client', async () => {
    const clear = stringFor('pooler', { sslmode: 'disable' });
    const psqlOutcome = await psql(clear, 'SELECT 1');
    assert.equal(psqlOutcome.ok, false, 'psql connected');
    assert.match(psqlOutcome.stderr, /login rejected/);
    const err = await rejectionOf(nodePg({ connectionString: clear }));
    assert.match(err.message, /login rejected/);
    assert.match(String((await psycopg(clear)).error), /login rejected/);
    // The same login with TLS gets in: what is refused is the clear text, not the password.
    assert.ok((await psql(stringFor('pooler'), 'SELECT 1')).ok);
  });

  it('hands out strings with sslmode=require that psql and psycopg use as they are: encrypted, not verified', async () => {
    assert.equal(app.sslmode, 'require');
    // No CA anywhere libpq would look (~/.postgresql/root.crt): with sslmode=require it encrypts without verifying.
    assert.equal(existsSync(join(home, '.postgresql', 'root.crt')), false);
    for (const connectionString of [app.connection_string, app.database_url, app.direct_connection_string]) {
      assert.equal(new URL(connectionString).searchParams.get('sslmode'), 'require', connectionString.replace(app.password, '…'));
      const psqlOutcome = await psql(connectionString, '\\conninfo', 'SELECT current_user');
      assert.ok(psqlOutcome.ok, psqlOutcome.stderr);
      assert.match(psqlOutcome.stdout, SSL_LINE);
      assert.equal(psqlOutcome.stdout.trim().split('\n').at(-1), app.username);
      const python = await psycopg(connectionString);
      assert.deepEqual({ ssl_in_use: python.ssl_in_use, user: python.user, error: python.error }, { ssl_in_use: true, user: app.username, error: undefined });
    }
  });
});
