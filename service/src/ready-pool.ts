// Owns the ready pool: sets of app objects (login role, access role, database) made ahead of time in the
// background, so that provisioning is one short transaction that renames a prepared set (src/db/ready-pool.ts)
// instead of a CREATE DATABASE. Prepared login roles are NOLOGIN until handed over, with a password only this
// process knows, so no one can log in to, or connect to, a prepared set. Refilling uses a connection of its own, never the request
// pool, and never blocks a request: an empty pool just means the on-demand path.
import type { FastifyBaseLogger } from 'fastify';
import type pg from 'pg';
import { customAlphabet } from 'nanoid';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from './config.js';
import { createAppRoles, createDatabase, dropAppRoles, dropDatabase, handDatabaseToApp, type AppRoleLimits } from './db/app-objects.js';
import { LOCK_KEY_SQL, readyLock, sqlState, type Database } from './db/database.js';
import { addPreparing, countEntries, entriesIn, handOver, idsWithObjects, markPrepared, readyObjectNames, readyIdsWithoutDatabase, removeEntry, setPreparedLogin, taintedIds } from './db/ready-pool.js';
import { newCredential, type AppCredential } from './credential-stock.js';
import type { AppIdentifiers } from './app-names.js';

const newReadyId = customAlphabet('0123456789abcdefghijklmnopqrstuvwxyz', 12);
const RETRY_AFTER_ERROR_MS = 5_000;
const IDLE_CHECK_MS = 1_000;
const UNDEFINED_TABLE = '42P01';

export type CrashPoint = (point: string) => Promise<void>;

export class ReadyPool {
  readonly size: number;
  private readonly db: Database;
  private readonly log: FastifyBaseLogger;
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

  constructor(db: Database, config: Config, log: FastifyBaseLogger, limits: AppRoleLimits, crashPoint: CrashPoint) {
    this.db = db;
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
   * Hands a prepared set to `app` (see handOver in src/db/ready-pool.ts) and returns its password, or
   * undefined when no set is ready.
   */
  async handOver(client: pg.ClientBase, app: AppIdentifiers): Promise<AppCredential | undefined> {
    const id = await handOver(client, app, [...this.passwords.keys()]);
    if (!id) return undefined;
    const credential = this.passwords.get(id)!;
    this.passwords.delete(id);
    this.lastHandOverAt = Date.now();
    return credential;
  }

  /**
   * Called after each handover. Refilling waits until handovers have been quiet for READY_POOL_REFILL_QUIET_MS
   * (unless the pool ran empty), so a burst of provisioning never competes with CREATE DATABASE for the CPU.
   */
  handedOver(): void {
    this.lastHandOverAt = Date.now();
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
    let client: pg.Client | undefined;
    let waitedForSchema = false;
    while (!this.stopped) {
      try {
        client ??= await this.db.connect();
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
        if (sqlState(err) === UNDEFINED_TABLE && !waitedForSchema) {
          // A fresh database, whose bookkeeping tables are still being made: wait for them, quietly. (Not waited
          // for up front, so that after a restart the pool re-keys its sets while the schema is being checked.)
          waitedForSchema = true;
          if (await this.db.ready().then(() => true, () => false)) continue;
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
  private async removeTaintedSets(client: pg.Client): Promise<void> {
    for (const id of await taintedIds(client)) {
      await this.db.tryWithLock(readyLock(id), async () => {
        await this.removeSet(client, id);
        this.log.warn({ ready_set: id }, 'ready pool: removed a prepared set another tenant had granted privileges to');
      });
    }
  }

  /** Gives a new password, and today's limits, to every ready set whose password this process does not hold (after a restart). */
  private async rekeyUnknownSets(client: pg.Client): Promise<void> {
    for (const id of await entriesIn(client, 'ready')) {
      if (this.passwords.has(id) || this.stopped) continue;
      const credential = await newCredential();
      await setPreparedLogin(client, id, credential.verifier, this.limits);
      this.passwords.set(id, credential);
    }
  }

  /** Prepares one set under its own lock, recorded as preparing first so a crash leaves nothing unknown. */
  private async prepareOne(client: pg.Client): Promise<void> {
    const id = newReadyId();
    const names = readyObjectNames(id);
    await client.query(`SELECT pg_advisory_lock(${LOCK_KEY_SQL})`, [readyLock(id)]);
    try {
      await addPreparing(client, id);
      try {
        await createAppRoles(client, names, null, this.limits);
        await this.crashPoint('ready-pool:after-create-roles');
        await createDatabase(client, names.database);
        await this.crashPoint('ready-pool:after-create-database');
        await handDatabaseToApp(client, this.db, names.database, names);
        const credential = await newCredential();
        await setPreparedLogin(client, id, credential.verifier, this.limits);
        await markPrepared(client, id);
        this.passwords.set(id, credential);
      } catch (err) {
        await this.removeSet(client, id).catch(() => {});
        throw err;
      }
    } finally {
      await client.query(`SELECT pg_advisory_unlock(${LOCK_KEY_SQL})`, [readyLock(id)]).catch(() => {});
    }
  }

  /**
   * Removes a set: its entry first (from then on it is never handed over, and whatever is left of its objects
   * is an orphan reconcile() removes), then its roles, then its database. Roles before the database: if a
   * tenant's lock makes dropping a role wait, no set is ever left with roles and no database.
   */
  private async removeSet(client: pg.ClientBase, id: string): Promise<void> {
    this.passwords.delete(id);
    const names = readyObjectNames(id);
    await removeEntry(client, id);
    await dropAppRoles(client, this.db, names);
    await dropDatabase(client, names.database);
  }

  async counts(): Promise<{ ready: number; preparing: number }> {
    return countEntries(this.db.pool);
  }

  /**
   * Removes sets left half-prepared by a crash, prepared objects with no entry, and entries whose database is
   * gone; sets being prepared right
   * now (their lock is held) are left alone. Returns the ids removed.
   */
  async reconcile(): Promise<string[]> {
    const removed: string[] = [];
    const preparing = await entriesIn(this.db.pool, 'preparing');
    const known = new Set([...preparing, ...(await entriesIn(this.db.pool, 'ready'))]);
    const orphans = (await idsWithObjects(this.db.pool)).filter((id) => !known.has(id));
    const candidates = new Set([...preparing, ...orphans, ...(await readyIdsWithoutDatabase(this.db.pool))]);
    for (const id of candidates) {
      try {
        const done = await this.db.tryWithLock(readyLock(id), async (client) => {
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
