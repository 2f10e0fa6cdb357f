// Owns the ready pool: sets of app objects (login role, access role, database) made ahead of time in the
// background, so that provisioning is one short transaction that renames a prepared set
// (src/db/ready-set-hand-over.ts) instead of a CREATE DATABASE. Prepared login roles are NOLOGIN until handed
// over, with a password only this process knows, so no one can log in to, or connect to, a prepared set.
// Refilling uses a connection of its own, never the connection pool, and never blocks a request: an empty ready
// pool just means the on-demand path.
import { customAlphabet } from 'nanoid';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { createAppRoles, createDatabase, dropAppRoles, dropDatabase, handDatabaseToApp, type AppRoleLimits } from '../db/postgres-server/app-objects.js';
import { idsWithObjects, setPreparedLogin, taintedIds } from '../db/postgres-server/ready-set-objects.js';
import type { OwnConnection, Queryable } from '../db/queryable.js';
import { handOverReadySet } from '../db/ready-set-hand-over.js';
import type { SuperuserConnections } from '../db/superuser-connections.js';
import { addPreparing, countEntries, entriesIn, markPrepared, readyIdsWithoutDatabase, removeEntry } from '../db/system-store/ready-set-rows.js';
import type { Config } from '../shared/config.js';
import { READY_SET_ID_ALPHABET, READY_SET_ID_LENGTH, readySetNames, type AppIdentifiers } from '../shared/object-names.js';
import { newAppCredential, type AppCredential } from '../shared/secrets.js';
import { SQLSTATE, sqlState } from '../shared/sqlstate.js';
import type { CrashPoint } from './crash-points.js';

const newReadySetId = customAlphabet(READY_SET_ID_ALPHABET, READY_SET_ID_LENGTH);
const RETRY_AFTER_ERROR_MS = 5_000;
const IDLE_CHECK_MS = 1_000;

export class ReadyPool {
  readonly size: number;
  private readonly connections: SuperuserConnections;
  private readonly log: Logger;
  private readonly limits: AppRoleLimits;
  private readonly pauseMs: number;
  private readonly crashPoint: CrashPoint;
  private readonly quietMs: number;
  private lastHandOverAt = 0;
  private running?: Promise<void>;
  /**
   * The passwords of the prepared sets, by id, held only in this process's memory. A set whose password is
   * not here (the service restarted) gets a new one before it is handed over.
   */
  private readonly passwords = new Map<string, AppCredential>();
  private stopped = false;
  private wakeUp = new AbortController();

  constructor(connections: SuperuserConnections, config: Config, log: Logger, limits: AppRoleLimits, crashPoint: CrashPoint) {
    this.connections = connections;
    this.log = log;
    this.limits = limits;
    this.size = config.READY_POOL_SIZE;
    this.pauseMs = Math.ceil(1000 / config.READY_POOL_REFILL_PER_SECOND);
    this.quietMs = config.READY_POOL_REFILL_QUIET_MS;
    this.crashPoint = crashPoint;
  }

  get enabled(): boolean {
    return this.size > 0;
  }

  start(): void {
    if (!this.enabled || this.running) return;
    this.stopped = false;
    this.running = this.refillLoop();
  }

  /** Stops refilling; a set being prepared is finished first (or, if interrupted, reconciled later). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    await this.running;
    this.running = undefined;
  }

  /**
   * Hands a prepared set to `app` (handOverReadySet) and returns its password, or undefined when no set is
   * ready. Refilling then waits until hand-overs have been quiet for READY_POOL_REFILL_QUIET_MS (unless the pool
   * ran empty), so a burst of provisioning never competes with CREATE DATABASE for the CPU.
   */
  async handOverTo(client: Queryable, app: AppIdentifiers): Promise<AppCredential | undefined> {
    const id = await handOverReadySet(client, app, [...this.passwords.keys()]);
    if (!id) return undefined;
    const credential = this.passwords.get(id)!;
    this.passwords.delete(id);
    this.lastHandOverAt = Date.now();
    return credential;
  }

  private wake(): void {
    this.wakeUp.abort();
  }

  private async pause(ms: number): Promise<void> {
    if (this.stopped) return;
    await sleep(ms, undefined, { signal: this.wakeUp.signal }).catch(() => {});
    if (this.wakeUp.signal.aborted) this.wakeUp = new AbortController();
  }

  private async refillLoop(): Promise<void> {
    let client: OwnConnection | undefined;
    let waitedForSchema = false;
    while (!this.stopped) {
      try {
        client ??= await this.connections.connect();
        await this.removeTaintedSets(client);
        await this.rekeyUnknownSets(client);
        const { ready, preparing } = await countEntries(client);
        const sinceHandOver = Date.now() - this.lastHandOverAt;
        if (ready > 0 && sinceHandOver < this.quietMs) {
          await this.pause(this.quietMs - sinceHandOver);
        } else if (ready + preparing < this.size) {
          await this.prepareOne(client);
          await this.pause(this.pauseMs);
        } else {
          await this.pause(IDLE_CHECK_MS);
        }
      } catch (err) {
        if (sqlState(err) === SQLSTATE.undefinedTable && !waitedForSchema) {
          // The bookkeeping tables are not there yet: the provisioner starts the pool once they are, but if
          // Postgres was away then, they may still be being made. Wait for them, quietly.
          waitedForSchema = true;
          if (await this.connections.ensureSchema().then(() => true, () => false)) continue;
        }
        this.log.warn({ err }, 'ready pool: could not prepare a set; retrying later');
        await client?.end().catch(() => {});
        client = undefined;
        await this.pause(RETRY_AFTER_ERROR_MS);
      }
    }
    await client?.end().catch(() => {});
  }

  /** Removes the sets a tenant has granted something to (they are never handed over), whatever was granted. */
  private async removeTaintedSets(client: Queryable): Promise<void> {
    for (const id of await taintedIds(client)) {
      await this.connections.tryWithReadySetLock(id, async () => {
        await this.removeSet(client, id);
        this.log.warn({ ready_set: id }, 'ready pool: removed a prepared set another tenant had granted privileges to');
      });
    }
  }

  /** Gives a new password, and today's limits, to every ready set whose password this process does not hold (after a restart). */
  private async rekeyUnknownSets(client: Queryable): Promise<void> {
    for (const id of await entriesIn(client, 'ready')) {
      if (this.passwords.has(id) || this.stopped) continue;
      const credential = await newAppCredential();
      await setPreparedLogin(client, id, credential.verifier, this.limits);
      this.passwords.set(id, credential);
    }
  }

  /** Prepares one set under its own lock, recorded as preparing first so a crash leaves nothing unknown. */
  private async prepareOne(client: Queryable): Promise<void> {
    const id = newReadySetId();
    const names = readySetNames(id);
    await this.connections.withReadySetLockOn(client, id, async () => {
      await addPreparing(client, id);
      try {
        await createAppRoles(client, names, null, this.limits);
        await this.crashPoint('ready-pool:after-create-roles');
        await createDatabase(client, names.database);
        await this.crashPoint('ready-pool:after-create-database');
        await handDatabaseToApp(client, this.connections, names.database, names);
        const credential = await newAppCredential();
        await setPreparedLogin(client, id, credential.verifier, this.limits);
        await markPrepared(client, id);
        this.passwords.set(id, credential);
      } catch (err) {
        await this.removeSet(client, id).catch(() => {});
        throw err;
      }
    });
  }

  /**
   * Removes a set: its entry first (from then on it is never handed over, and whatever is left of its objects
   * is an orphan the reconciler removes), then its roles, then its database. Roles before the database: if a
   * tenant's lock makes dropping a role wait, no set is ever left with roles and no database.
   */
  private async removeSet(client: Queryable, id: string): Promise<void> {
    this.passwords.delete(id);
    const names = readySetNames(id);
    await removeEntry(client, id);
    await dropAppRoles(client, this.connections, names);
    await dropDatabase(client, names.database);
  }

  async counts(): Promise<{ ready: number; preparing: number }> {
    return countEntries(this.connections.pool);
  }

  /**
   * Removes sets left half-prepared by a crash, prepared objects with no entry, and entries whose database is
   * gone; sets being prepared right now (their lock is held) are left alone. Returns the ids removed. (A repair of
   * the reconciler's, src/domain/reconciler.ts.)
   */
  async removeLeftoverSets(): Promise<string[]> {
    const removed: string[] = [];
    const pool = this.connections.pool;
    const preparing = await entriesIn(pool, 'preparing');
    const known = new Set([...preparing, ...(await entriesIn(pool, 'ready'))]);
    const orphans = (await idsWithObjects(pool)).filter((id) => !known.has(id));
    const candidates = new Set([...preparing, ...orphans, ...(await readyIdsWithoutDatabase(pool))]);
    for (const id of candidates) {
      try {
        const done = await this.connections.tryWithReadySetLock(id, async (client) => {
          await this.removeSet(client, id);
          return true;
        });
        if (done) removed.push(id);
      } catch (err) {
        this.log.warn({ err, ready_set: id }, 'ready pool: could not remove a set now; the next reconcile will');
      }
    }
    return removed;
  }
}
