// Owns the apps' door as the service sees it: PgBouncer (pgbouncer.ini at the top of the repo), in front of one
// Postgres server. Two things: the auth_file PgBouncer checks app logins against, which the service keeps (one
// line per app login role, with the SCRAM verifier Postgres holds, rewritten from Postgres's catalog on every
// change), and PgBouncer's admin console, over its socket (RELOAD after each rewrite, KILL to end an app's pooled
// connections, SHOW POOLS for metrics). SECURITY.md ("The apps' door") says why an auth_file and not auth_query.
import { createHmac, randomBytes } from 'node:crypto';
import { chmod, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import type { Logger } from 'pino';
import { appIdentifiers, parseCompanionName } from '../../shared/object-names.js';
import { scramSha256Verifier } from '../../shared/secrets.js';

/** An app login as the door holds it: the role's name, its database, and its SCRAM verifier, or null: refused. */
export interface PoolerLogin {
  name: string;
  database: string;
  verifier: string | null;
  /** Other databases the login may reach too: its app's companion databases. */
  companions?: string[];
}

/** Every database a login may reach through the door: its own, and its app's companions. */
const databasesOf = (login: PoolerLogin): string[] => [login.database, ...(login.companions ?? [])];

/** One of PgBouncer's pools (an app's database and role), from SHOW POOLS. */
export interface PoolUsage {
  database: string;
  user: string;
  clientsActive: number;
  clientsWaiting: number;
  serversActive: number;
  serversIdle: number;
  /** How long the oldest waiting client has waited, in seconds. */
  maxWaitSeconds: number;
}

export interface PoolerSettings {
  /** The auth_file pgbouncer.ini names; the service writes it (the directory must be the service's to write). */
  authFile: string;
  /** The repo's pgbouncer-hba.conf: the door's rules, with a line `# @app-logins` where each app's go. */
  hbaTemplate: string;
  /** The hba file pgbouncer.ini names (auth_hba_file), which the service renders from the template. */
  hbaFile: string;
  /** The file pgbouncer.ini's [databases] includes: one entry per app database, to Postgres at serverHost:serverPort. */
  databasesFile: string;
  serverHost: string;
  serverPort: number;
  /** PgBouncer's admin console: its socket directory (or a host) and port, the admin user and its password. */
  adminHost: string;
  adminPort: number;
  adminUser: string;
  adminPassword: string;
  /** pgbouncer.ini's pool_mode, which every connection string's answer states. */
  poolMode: string;
  /** How long an admin command may take before the console is given up as unreachable. */
  timeoutMs: number;
}

/** The door apps use, as the operations need it; NO_POOLER when there is none (Postgres is the apps' only door). */
export interface Pooler {
  readonly enabled: boolean;
  readonly poolMode: string | undefined;
  /**
   * App logins changed on the server (an app made, its password changed, its login refused or removed): the
   * door's list is brought up to date and in force before this resolves. Calls made while one is under way
   * share the next rewrite, which reads the catalog after all of them began.
   */
  loginsChanged(): Promise<void>;
  /**
   * Ends every pooled connection to `database`, clients' and the server's (KILL, then RESUME). Only once no login
   * is in progress at the door, or its login timeout has passed: PgBouncer 1.18 ties a login to its pool before
   * the password exchange, and KILL frees the pool under it; such a login, finished, lands in whichever pool
   * takes that memory next: another app's (found by test/stack/hostile-tenant.test.ts). So every login to
   * `database` (the app's own and its extra credentials') is refused at the door until the pools are ended: its
   * hba lines are withheld meanwhile. The caller has refused the login whose change asked for this first
   * (loginsChanged after NOLOGIN), so that it stays refused after. An app's database's companion databases
   * (app_<app>-…, object-names.ts) are its too: their lines are withheld and their pools ended with it.
   */
  endConnections(database: string): Promise<void>;
  /**
   * Closes the server connections to `database` as they are released, and keeps its clients (RECONNECT): their
   * next transaction opens a new server connection. Frees no pool, so it is safe while logins are in progress.
   */
  reconnect(database: string): Promise<void>;
  /** The door's pools (for /metrics). */
  pools(): Promise<PoolUsage[]>;
  /**
   * The longest a login at the door may take (its client_login_timeout, and the third of a second in which
   * PgBouncer looks): a login begun before a password change has finished or been ended once this has passed.
   * 0 without a door.
   */
  loginTimeoutMs(): Promise<number>;
  /** Whether the door answers (for /health): the last check's result, refreshed in the background. */
  isUp(): boolean;
  start(): void;
  close(): Promise<void>;
}

export const NO_POOLER: Pooler = {
  enabled: false,
  poolMode: undefined,
  loginsChanged: () => Promise.resolve(),
  endConnections: () => Promise.resolve(),
  reconnect: () => Promise.resolve(),
  pools: () => Promise.resolve([]),
  loginTimeoutMs: () => Promise.resolve(0),
  isUp: () => true,
  start: () => {},
  close: () => Promise.resolve(),
};

/**
 * The admin console's password, derived from the superuser's: nothing more for the operator to make or keep,
 * and the superuser's own password (or its SCRAM key, which a login through PgBouncer would hand it) never
 * reaches PgBouncer. The admin user exists only in PgBouncer, never in Postgres.
 */
export function poolerAdminPassword(superuserPassword: string): string {
  return createHmac('sha256', superuserPassword).update('pg-provisioner: PgBouncer admin console').digest('hex');
}

/** How often the background check asks the admin console whether it answers. */
const CHECK_INTERVAL_MS = 2_000;
/** How often endConnections looks whether logins are still in progress. */
const LOGIN_POLL_MS = 100;
/** PgBouncer ends logins older than client_login_timeout in its maintenance pass, every third of a second. */
const LOGIN_CHECK_SLACK_MS = 1_000;
/** After a failed rewrite or reload, how soon it is tried again (the file is derived state: always safe to redo). */
const RETRY_MS = 1_000;

export class PgBouncer implements Pooler {
  readonly enabled = true;
  readonly poolMode: string;
  private readonly settings: PoolerSettings;
  private readonly readLogins: () => Promise<PoolerLogin[]>;
  private readonly log: Logger;
  private console?: Promise<pg.Client>;
  private current?: Promise<void>;
  private next?: Promise<void>;
  private up = false;
  /** Whether the console has answered since this service started. */
  private answered = false;
  private timer?: NodeJS.Timeout;
  private retry?: NodeJS.Timeout;
  private closed = false;

  /** `readLogins` reads every app login role's verifier from the server's catalog (appLoginVerifiers). */
  constructor(settings: PoolerSettings, readLogins: () => Promise<PoolerLogin[]>, log: Logger) {
    this.settings = settings;
    this.poolMode = settings.poolMode;
    this.readLogins = readLogins;
    this.log = log.child({ part: 'pooler' });
  }

  /** Checks the console now and every CHECK_INTERVAL_MS (whether the door is up, for /health and /metrics). */
  start(): void {
    void this.check();
    this.timer = setInterval(() => void this.check(), CHECK_INTERVAL_MS);
    this.timer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    clearTimeout(this.retry);
    await this.current?.catch(() => {});
    await this.dropConsole();
  }

  isUp(): boolean {
    return this.up;
  }

  loginsChanged(): Promise<void> {
    this.next ??= (this.current ?? Promise.resolve())
      .catch(() => {})
      .then(() => {
        this.next = undefined;
        const run = this.rewriteAndReload();
        this.current = run;
        run.then(
          () => {
            if (this.current === run) this.current = undefined;
          },
          () => {
            if (this.current === run) this.current = undefined;
          },
        );
        return run;
      });
    return this.next;
  }

  /**
   * Databases whose hba lines are withheld while their connections are ended (a count per database: calls may
   * overlap). An app's database has several logins (its own, its extra credentials): KILL frees the pools of every
   * one of them, so none of them may have a login begin meanwhile, not only the one whose change asked for it.
   */
  private readonly withheld = new Map<string, number>();

  async endConnections(database: string): Promise<void> {
    // With the app's database, the companions the door has an entry for (entries are never removed, so every one
    // it may have a pool for).
    const names = [plainName(database), ...(await this.companionsOf(database))];
    for (const name of names) this.withheld.set(name, (this.withheld.get(name) ?? 0) + 1);
    try {
      await this.loginsChanged(); // no new login to these databases begins from now on
      await this.noLoginInProgress();
      for (const name of names.map(consoleName)) {
        await this.command(`KILL ${name}`);
        await this.command(`RESUME ${name}`);
      }
    } finally {
      for (const name of names) {
        const left = (this.withheld.get(name) ?? 1) - 1;
        if (left > 0) this.withheld.set(name, left);
        else this.withheld.delete(name);
      }
      await this.loginsChanged();
    }
  }

  /** The companion databases of the app whose database is `database`, among those the door has an entry for. */
  private async companionsOf(database: string): Promise<string[]> {
    return (await this.knownDatabases()).filter((known) => {
      const companion = parseCompanionName(known);
      return companion !== undefined && appIdentifiers(companion.appName).database === database;
    });
  }

  /** The databases the door's [databases] file has an entry for. */
  private async knownDatabases(): Promise<string[]> {
    const text = await readFile(this.settings.databasesFile, 'utf8').catch(() => '');
    return [...text.matchAll(/^([a-z0-9_-]+) = /gm)].map((match) => match[1]!);
  }

  async reconnect(database: string): Promise<void> {
    await this.command(`RECONNECT ${consoleName(database)}`);
  }

  /**
   * Resolves once PgBouncer has no login in progress (SHOW LISTS: login_clients), or once its login timeout has
   * passed, after which every login begun before has finished or been ended. Mostly at once.
   */
  private async noLoginInProgress(): Promise<void> {
    const deadline = Date.now() + (await this.loginTimeoutMs());
    for (;;) {
      const { rows } = await this.command('SHOW LISTS');
      const logins = Number(rows.find((row) => row.list === 'login_clients')?.items ?? NaN);
      if (logins === 0 || Date.now() >= deadline) return;
      await sleep(Math.min(LOGIN_POLL_MS, Math.max(0, deadline - Date.now())));
    }
  }

  async pools(): Promise<PoolUsage[]> {
    const { rows } = await this.command('SHOW POOLS');
    return rows
      .filter((row) => row.database !== 'pgbouncer')
      .map((row) => ({
        database: String(row.database),
        user: String(row.user),
        clientsActive: Number(row.cl_active),
        clientsWaiting: Number(row.cl_waiting),
        serversActive: Number(row.sv_active),
        serversIdle: Number(row.sv_idle) + Number(row.sv_used ?? 0),
        maxWaitSeconds: Number(row.maxwait) + Number(row.maxwait_us ?? 0) / 1e6,
      }));
  }

  private loginTimeout?: number;

  async loginTimeoutMs(): Promise<number> {
    try {
      const { rows } = await this.command('SHOW CONFIG');
      const seconds = Number(rows.find((row) => row.key === 'client_login_timeout')?.value);
      if (Number.isFinite(seconds) && seconds > 0) this.loginTimeout = seconds * 1000 + LOGIN_CHECK_SLACK_MS;
    } catch (err) {
      this.log.warn({ err }, "could not read the pooler's client_login_timeout; using the last one read");
    }
    // Never read (the door has not answered since the service started): PgBouncer's own default, 60 s.
    return this.loginTimeout ?? 60_000 + LOGIN_CHECK_SLACK_MS;
  }

  /**
   * Writes the auth_file from the catalog (a new file renamed over the old: PgBouncer reads the old list or the
   * new one, never half of either), then RELOAD. If either fails, it is tried again in the background until it
   * holds, and the caller is told (the operation it follows has committed; the door catches up).
   */
  private async rewriteAndReload(): Promise<void> {
    try {
      await this.writeAuthFile(await this.readLogins());
      await this.command('RELOAD');
      clearTimeout(this.retry);
      this.retry = undefined;
    } catch (err) {
      this.retryLater();
      throw err;
    }
  }

  private retryLater(): void {
    if (this.closed || this.retry) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.loginsChanged().catch((err: unknown) => {
        // Before the door has ever answered, it is still starting: it starts after the service (compose's
        // depends_on, the local stack) and reads the auth_file just written when it does. Not a warning.
        if (this.answered) this.log.warn({ err }, 'the pooler has not taken the app logins yet; trying again');
        else this.log.info({ err }, 'the pooler is not up yet: it reads the app logins when it starts; trying again');
      });
    }, RETRY_MS);
    this.retry.unref();
  }

  /**
   * Every name PgBouncer may know gets a line: a login that may not log in (NOLOGIN, mid-rotation, deleted) gets
   * a verifier no password matches, never no line. PgBouncer 1.18 keeps a user it once read after the user leaves
   * the file, with an empty password, which a client sending an empty password then passes (src/loader.c,
   * disable_users); and it never forgets a name until it restarts. So names of the file before, gone from the
   * catalog since, stay in it as refused (tombstones).
   */
  private async writeAuthFile(logins: PoolerLogin[]): Promise<void> {
    const { authFile, adminUser } = this.settings;
    const known = new Set(logins.map((login) => login.name));
    const gone = (await namesIn(authFile)).filter((name) => name !== adminUser && !known.has(name));
    const entries = [{ name: adminUser, verifier: await this.adminVerifier() }, ...logins, ...gone.map((name) => ({ name, verifier: null }))];
    const lines = entries.map((login) => `${quoted(login.name)} ${quoted(login.verifier ?? refusedVerifier())}`);
    const header = '; Written by the provisioning service from Postgres\'s catalog: every change is overwritten.\n';
    await writeAtomically(authFile, header + lines.join('\n') + '\n');
    await writeAtomically(this.settings.databasesFile, await this.renderDatabases(logins));
    await writeAtomically(this.settings.hbaFile, await this.renderHba(logins));
  }

  /**
   * [databases]: an entry for every app database and companion database, the file's earlier entries kept. Never one removed: PgBouncer
   * 1.18 drops a database gone from its configuration (and an idle one it made for a wildcard) by freeing its
   * pools, under any login in flight to it, which then lands in another app's pool (see endConnections). And no
   * wildcard: a name that is no app's is refused at once, and PgBouncer makes nothing for it.
   */
  private async renderDatabases(logins: PoolerLogin[]): Promise<string> {
    const { serverHost, serverPort } = this.settings;
    const databases = [...new Set([...(await this.knownDatabases()), ...logins.flatMap(databasesOf)])].sort();
    const target = `host=${serverHost} port=${serverPort}`;
    const header = "; Written by the provisioning service: one entry per app database, never one removed (src/db/pooler/pgbouncer.ts).\n";
    return header + databases.map((database) => `${plainName(database)} = ${target} dbname=${database}`).join('\n') + '\n';
  }

  /**
   * pgbouncer-hba.conf with each app's lines where the template says: an app login that may log in now is
   * admitted to its own database and its app's companion databases only, with SCRAM, over TLS; any other login is rejected by the template's last
   * lines before its password exchange begins. So no login ever waits at the door for a database not its own,
   * nor for an app whose logins are refused (see endConnections).
   */
  private async renderHba(logins: PoolerLogin[]): Promise<string> {
    const template = await readFile(this.settings.hbaTemplate, 'utf8');
    if (!HBA_MARKER.test(template)) throw new Error(`${this.settings.hbaTemplate} has no line "# @app-logins" where the apps' lines go`);
    const apps = logins
      .filter((login) => login.verifier !== null)
      .map((login) => ({ login, databases: databasesOf(login).filter((database) => !this.withheld.has(database)) }))
      .filter(({ databases }) => databases.length > 0)
      .flatMap(({ login, databases }) =>
        ['0.0.0.0/0', '::/0'].map((address) => `hostssl ${databases.map(plainName).join(',')} ${loginName(login.name)} ${address} scram-sha-256`),
      );
    return template.replace(HBA_MARKER, () => ['# @app-logins: written by the provisioning service', ...apps].join('\n'));
  }

  private adminVerifierMemo?: Promise<string>;

  /** One verifier per process: PgBouncer keeps whichever the file holds, and any verifier of the password works. */
  private adminVerifier(): Promise<string> {
    this.adminVerifierMemo ??= scramSha256Verifier(this.settings.adminPassword);
    return this.adminVerifierMemo;
  }

  private async check(): Promise<void> {
    await this.command('SHOW VERSION').catch(() => {});
  }

  /** Whether the console answered the last command; a change is logged once. */
  private markUp(up: boolean, err?: unknown): void {
    if (up) this.answered = true;
    if (up && !this.up) this.log.info('the pooler answers');
    if (!up && this.up) this.log.warn({ err }, 'the pooler does not answer');
    this.up = up;
  }

  /** One admin command (simple query protocol, which the console speaks), on the one console connection. */
  private async command(sql: string): Promise<pg.QueryResult<Record<string, unknown>>> {
    let client: pg.Client;
    try {
      client = await this.openConsole();
    } catch (err) {
      this.markUp(false, err);
      throw err;
    }
    try {
      const result = await client.query({ text: sql, queryMode: 'simple' } as pg.QueryConfig);
      this.markUp(true);
      return result;
    } catch (err) {
      // A timeout or a broken connection: the next command opens a new one. An error PgBouncer sent leaves it sound.
      if (!(err instanceof Error && 'severity' in err)) {
        this.markUp(false, err);
        await this.dropConsole();
      }
      throw err;
    }
  }

  private openConsole(): Promise<pg.Client> {
    this.console ??= (async () => {
      const { adminHost, adminPort, adminUser, adminPassword, timeoutMs } = this.settings;
      const client = new pg.Client({
        host: adminHost,
        port: adminPort,
        user: adminUser,
        password: adminPassword,
        database: 'pgbouncer',
        connectionTimeoutMillis: timeoutMs,
        query_timeout: timeoutMs,
      });
      client.on('error', () => void this.dropConsole());
      client.on('end', () => void this.dropConsole(client));
      try {
        await client.connect();
      } catch (err) {
        this.console = undefined;
        throw err;
      }
      return client;
    })();
    return this.console;
  }

  private async dropConsole(only?: pg.Client): Promise<void> {
    const pending = this.console;
    if (!pending) return;
    const client = await pending.catch(() => undefined);
    if (only && client !== only) return;
    if (this.console === pending) this.console = undefined;
    await client?.end().catch(() => {});
  }
}

/** Where the template wants the apps' lines: a line of its own. */
const HBA_MARKER = /^# @app-logins$/m;

/**
 * A database's name as the door's files take it, unquoted: app names are [a-z0-9_] (object-names.ts), so their
 * databases' are too, and a companion database's has one hyphen (app_<app>-<companion>), which PgBouncer's ini keys
 * and hba words take as it is; anything else is refused rather than quoted.
 */
function plainName(name: string): string {
  if (!/^[a-z0-9_]+(?:-[a-z0-9_]+)?$/.test(name)) throw new Error(`not a name the door's files or console can take: ${name}`);
  return name;
}

/** A name as the admin console's commands take it: a word of [a-z0-9_], or in double quotes (a companion's hyphen). */
function consoleName(name: string): string {
  const plain = plainName(name);
  return /^[a-z0-9_]+$/.test(plain) ? plain : `"${plain}"`;
}

/**
 * A login's name as the hba file takes it, unquoted: an app's login role ([a-z0-9_]), or an extra credential's,
 * app_<app>.<credential> (PgBouncer's hba parser reads a name up to whitespace, a comma, '#' or '"').
 */
function loginName(name: string): string {
  if (!/^[a-z0-9_]+(\.[a-z0-9_]+)?$/.test(name)) throw new Error(`not a login name the door's hba file can take: ${name}`);
  return name;
}

/**
 * Writes a file the door reads: a new file renamed over the old (PgBouncer reads the old or the new, never half),
 * 0640 (PgBouncer reads it through the directory's group: the stack and compose's setup see to that).
 */
async function writeAtomically(path: string, text: string): Promise<void> {
  const temporary = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  try {
    await writeFile(temporary, text, { mode: 0o640 });
    await chmod(temporary, 0o640);
    await rename(temporary, path);
  } catch (err) {
    await rm(temporary, { force: true });
    throw err;
  }
}

/** The names an auth_file holds (none when there is none yet). */
async function namesIn(authFile: string): Promise<string[]> {
  const text = await readFile(authFile, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return '';
    throw err;
  });
  return [...text.matchAll(/^"((?:[^"]|"")*)"/gm)].map((match) => match[1]!.replaceAll('""', '"'));
}

/** A well-formed SCRAM verifier of random keys: no password's proof matches it (it would take SHA-256 preimages). */
function refusedVerifier(): string {
  const b64 = (bytes: number) => randomBytes(bytes).toString('base64');
  return `SCRAM-SHA-256$4096:${b64(16)}$${b64(32)}:${b64(32)}`;
}

/** A value as the auth_file takes it: in double quotes, a double quote doubled. */
function quoted(value: string): string {
  return `"${value.replaceAll('"', '""')}"`;
}

