// Owns the ready pool: sets of app objects (login role, access role, database) made ahead of time in the
// background on the Postgres server, each with an entry in the system store, so that provisioning is a hand-over
// (one short transaction on the server that renames a prepared set, between a claim and a confirmation in the
// store) instead of a CREATE DATABASE. Prepared login roles are NOLOGIN until handed
// over, with a password only this process knows, so no one can log in to, or connect to, a prepared set.
// Refilling uses connections of its own (one to the store, one to the server), never the connection pools, and
// never blocks a request: an empty ready pool just means the on-demand path.
import { customAlphabet } from 'nanoid';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { createAppRoles, createDatabase, dropAppRoles, dropDatabase, handDatabaseToApp, type AppRoleLimits } from '../db/postgres-server/app-objects.js';
import type { PostgresServer } from '../db/postgres-server/postgres-server.js';
import { idsWithDatabase, idsWithObjects, renameReadySetToApp, setPreparedLogin, taintedIds } from '../db/postgres-server/ready-set-objects.js';
import type { OwnConnection, Queryable } from '../db/queryable.js';
import { addPreparing, claimReadySet, countEntries, endClaim, entriesIn, entryState, markPrepared, removeEntry } from '../db/system-store/ready-set-rows.js';
import type { SystemStore } from '../db/system-store/system-store.js';
import { AppBusyError } from '../shared/errors.js';
import type { Config } from '../shared/config.js';
import { READY_SET_ID_ALPHABET, READY_SET_ID_LENGTH, readySetNames, type AppIdentifiers } from '../shared/object-names.js';
import { newAppCredential, type AppCredential } from '../shared/secrets.js';
import { SQLSTATE, sqlState } from '../shared/sqlstate.js';
import type { CrashPoint } from './crash-points.js';

const newReadySetId = customAlphabet(READY_SET_ID_ALPHABET, READY_SET_ID_LENGTH);
const RETRY_AFTER_ERROR_MS = 5_000;
const IDLE_CHECK_MS = 1_000;

/** The refilling's connections of its own: one to the system store, one to the server (the same one when they share). */
interface RefillConnections {
  store: OwnConnection;
  server: OwnConnection;
}

async function endRefillConnections(own: RefillConnections | undefined): Promise<void> {
  await own?.store.end().catch(() => {});
  if (own?.server !== own?.store) await own?.server.end().catch(() => {});
}

export class ReadyPool {
  readonly size: number;
  private readonly store: SystemStore;
  private readonly server: PostgresServer;
  private readonly log: Logger;
  private readonly pauseMs: number;
  private readonly crashPoint: CrashPoint;
  private readonly quietMs: number;
  private lastHandOverAt = 0;
  private running?: Promise<void>;
  /**
   * The limits every set is prepared with: the defaults (defaultRoleLimits), which are an app's effective limits
   * (effectiveAppLimits) when it is made, since a new app has no overrides yet. A set prepared under other
   * defaults (before a restart) is given these when it is re-keyed, before it can be handed over.
   */
  private readonly limits: AppRoleLimits;
  /**
   * The passwords of the prepared sets, by id, held only in this process's memory. A set whose password is
   * not here (the service restarted) gets a new one before it is handed over.
   */
  private readonly passwords = new Map<string, AppCredential>();
  private stopped = false;
  private wakeUp = new AbortController();

  constructor(store: SystemStore, server: PostgresServer, config: Config, log: Logger, limits: AppRoleLimits, crashPoint: CrashPoint) {
    this.store = store;
    this.server = server;
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
   * Hands a prepared set to `app` and returns its password, or undefined, changing nothing, when no set is ready.
   * Three steps, so that the server's part is one short transaction and a crash anywhere leaves nothing half-made:
   * the store claims the oldest ready set among those whose password this process holds (its entry goes, the app
   * is registered as creating, the app's and the set's locks are taken); the server renames the set's roles and
   * database to the app's and allows its login, in one transaction (or refuses a set whose database is gone or
   * that a tenant has tainted: the next one is tried, and the reconciler removes that one); the store marks the
   * app ready. A crash before the last step leaves a creating app, which the reconciler removes. Refilling then
   * waits until hand-overs have been quiet for READY_POOL_REFILL_QUIET_MS (unless the pool ran empty), so a burst
   * of provisioning never competes with CREATE DATABASE for the CPU.
   */
  async handOverTo(app: AppIdentifiers): Promise<AppCredential | undefined> {
    const candidates = [...this.passwords.keys()];
    if (candidates.length === 0) return undefined;
    return this.store.withClient(async (storeClient) => {
      for (;;) {
        const claim = await claimReadySet(storeClient, app.appName, candidates);
        if (!claim) return undefined;
        candidates.splice(candidates.indexOf(claim.id), 1);
        if (!claim.appLocked || !claim.setLocked) {
          // The set is being removed (its lock is held): try the next. Another operation on this name holds the
          // app's lock: the set goes back, and the caller hears that the app is busy.
          await endClaim(storeClient, app.appName, claim, claim.setLocked ? 'return' : 'abandon');
          if (!claim.appLocked) throw new AppBusyError(app.appName);
          continue;
        }
        let renamed: boolean;
        try {
          renamed = await this.server.withClientBeside(this.store, storeClient, (serverClient) => renameReadySetToApp(serverClient, claim.id, app));
        } catch (err) {
          // An SQL error (a name taken: 42710, 42P04) rolled the rename back: the set is whole and goes back to the
          // pool. Anything else (the connection lost) leaves it unknown: the reconciler removes it.
          const intact = sqlState(err) !== undefined;
          await endClaim(storeClient, app.appName, claim, intact ? 'return' : 'abandon').catch(() => {});
          if (!intact) this.passwords.delete(claim.id);
          throw err;
        }
        if (!renamed) {
          await endClaim(storeClient, app.appName, claim, 'abandon');
          this.passwords.delete(claim.id);
          continue;
        }
        await this.crashPoint('provision:after-handover-rename');
        await endClaim(storeClient, app.appName, claim, 'ready');
        const credential = this.passwords.get(claim.id)!;
        this.passwords.delete(claim.id);
        this.lastHandOverAt = Date.now();
        return credential;
      }
    });
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
    let own: RefillConnections | undefined;
    let waitedForSchema = false;
    while (!this.stopped) {
      try {
        own ??= await this.connectForRefill();
        await this.removeTaintedSets(own);
        await this.rekeyUnknownSets(own);
        const { ready, preparing } = await countEntries(own.store);
        const sinceHandOver = Date.now() - this.lastHandOverAt;
        if (ready > 0 && sinceHandOver < this.quietMs) {
          await this.pause(this.quietMs - sinceHandOver);
        } else if (ready + preparing < this.size) {
          await this.prepareOne(own);
          await this.pause(this.pauseMs);
        } else {
          await this.pause(IDLE_CHECK_MS);
        }
      } catch (err) {
        if (sqlState(err) === SQLSTATE.undefinedTable && !waitedForSchema) {
          // The bookkeeping tables are not there yet: the provisioner starts the pool once they are, but if
          // Postgres was away then, they may still be being made. Wait for them, quietly.
          waitedForSchema = true;
          if (await this.store.ensureSchema().then(() => true, () => false)) continue;
        }
        this.log.warn({ err }, 'ready pool: could not prepare a set; retrying later');
        await endRefillConnections(own);
        own = undefined;
        await this.pause(RETRY_AFTER_ERROR_MS);
      }
    }
    await endRefillConnections(own);
  }

  private async connectForRefill(): Promise<RefillConnections> {
    const store = await this.store.connect();
    if (this.server.sharesConnectionsWith(this.store)) return { store, server: store };
    try {
      return { store, server: await this.server.connect() };
    } catch (err) {
      await store.end().catch(() => {});
      throw err;
    }
  }

  /** Removes the sets a tenant has granted something to (they are never handed over), whatever was granted. */
  private async removeTaintedSets(own: RefillConnections): Promise<void> {
    for (const id of await taintedIds(own.server)) {
      await this.store.tryWithReadySetLock(id, async (storeClient) => {
        await this.removeSet({ store: storeClient, server: own.server }, id);
        this.log.warn({ ready_set: id }, 'ready pool: removed a prepared set another tenant had granted privileges to');
      });
    }
  }

  /** Gives a new password, and today's limits, to every ready set whose password this process does not hold (after a restart). */
  private async rekeyUnknownSets(own: RefillConnections): Promise<void> {
    for (const id of await entriesIn(own.store, 'ready')) {
      if (this.passwords.has(id) || this.stopped) continue;
      const credential = await newAppCredential();
      await setPreparedLogin(own.server, id, credential.verifier, this.limits);
      this.passwords.set(id, credential);
    }
  }

  /** Prepares one set under its own lock, recorded as preparing first so a crash leaves nothing unknown. */
  private async prepareOne(own: RefillConnections): Promise<void> {
    const id = newReadySetId();
    const names = readySetNames(id);
    await this.store.withReadySetLockOn(own.store, id, async () => {
      await addPreparing(own.store, id);
      try {
        await createAppRoles(own.server, names, null, this.limits);
        await this.crashPoint('ready-pool:after-create-roles');
        await createDatabase(own.server, names.database);
        await this.crashPoint('ready-pool:after-create-database');
        await handDatabaseToApp(own.server, this.server, names.database, names);
        const credential = await newAppCredential();
        await setPreparedLogin(own.server, id, credential.verifier, this.limits);
        await markPrepared(own.store, id);
        this.passwords.set(id, credential);
      } catch (err) {
        await this.removeSet(own, id).catch(() => {});
        throw err;
      }
    });
  }

  /**
   * Removes a set: its entry first (from then on it is never handed over, and whatever is left of its objects
   * is an orphan the reconciler removes), then its roles, then its database. Roles before the database: if a
   * tenant's lock makes dropping a role wait, no set is ever left with roles and no database.
   */
  private async removeSet(on: { store: Queryable; server: Queryable }, id: string): Promise<void> {
    this.passwords.delete(id);
    const names = readySetNames(id);
    await removeEntry(on.store, id);
    await dropAppRoles(on.server, this.server, names);
    await dropDatabase(on.server, names.database);
  }

  async counts(): Promise<{ ready: number; preparing: number }> {
    return countEntries(this.store.pool);
  }

  /**
   * Removes sets left half-prepared by a crash, prepared objects with no entry, and entries whose database is
   * gone; sets being prepared right now (their lock is held) are left alone. Returns the ids removed. (A repair of
   * the reconciler's, src/domain/reconciler.ts.)
   */
  async removeLeftoverSets(): Promise<string[]> {
    const removed: string[] = [];
    const preparing = await entriesIn(this.store.pool, 'preparing');
    const ready = await entriesIn(this.store.pool, 'ready');
    const known = new Set([...preparing, ...ready]);
    const orphans = (await idsWithObjects(this.server.pool)).filter((id) => !known.has(id));
    const withDatabase = new Set(await idsWithDatabase(this.server.pool));
    const candidates = new Set([...preparing, ...orphans, ...ready.filter((id) => !withDatabase.has(id))]);
    for (const id of candidates) {
      try {
        const done = await this.store.tryWithReadySetLock(id, (storeClient) =>
          this.server.withClientBeside(this.store, storeClient, async (serverClient) => {
            // Looked at again under the set's lock: a hand-over that held it may have given the set back since.
            const state = await entryState(storeClient, id);
            const leftover =
              state === 'preparing' ||
              (state === 'ready' && (await idsWithDatabase(serverClient, [id])).length === 0) ||
              (state === undefined && (await idsWithObjects(serverClient)).includes(id));
            if (leftover) await this.removeSet({ store: storeClient, server: serverClient }, id);
            return leftover;
          }),
        );
        if (done) removed.push(id);
      } catch (err) {
        this.log.warn({ err, ready_set: id }, 'ready pool: could not remove a set now; the next reconcile will');
      }
    }
    return removed;
  }
}
