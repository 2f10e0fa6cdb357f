// Owns what every app operation runs inside, so that no operation writes it again: the system's own tables exist;
// the operation is timed, told to whoever observes operations (metrics), and written to the audit log whatever
// its outcome; and, for an operation on an app that exists, the app's lock is held in the system store, the
// operation is given a connection to the store (the one holding the lock) and one to the app's Postgres server,
// pooled or, for a long operation, of their own in a bounded slot, and the app is registered (and ready, unless
// the operation says otherwise).
import type { Logger } from 'pino';
import type { PostgresServer } from '../db/postgres-server/postgres-server.js';
import type { Queryable } from '../db/queryable.js';
import { findApp, type AppState } from '../db/system-store/registry.js';
import type { SystemStore } from '../db/system-store/system-store.js';
import { AppNotFoundError } from '../shared/errors.js';
import { appIdentifiers, type AppIdentifiers } from '../shared/object-names.js';
import type { AuditTrail } from './audit-trail.js';
import type { Slots } from './slots.js';

/** Who asked: written to the audit log with every operation. */
export interface RequestContext {
  requestId?: string;
  client?: string;
}

/**
 * Where an operation on an app does its work: `store`, the system store's connection that holds the app's lock
 * (registry rows), and `server`, a superuser connection to the Postgres server the app lives on (its roles and
 * database).
 */
export interface AppSession {
  store: Queryable;
  server: Queryable;
}

/** Told of every operation's end: name, outcome, seconds. */
export type OperationObserver = (operation: string, outcome: string, seconds: number) => void;

/** An app found registered (within onApp, under its lock): its names, state and incarnation. */
export interface FoundApp extends AppIdentifiers {
  state: AppState;
  incarnation: string;
}

/**
 * Where a long operation (it holds the lock while pg_dump runs, or while logins are waited out) runs: on a
 * connection of its own, in one of `slots`, waiting for one at most `waitMs` (0: not at all; then
 * OperationsBusyError).
 */
export interface Slot {
  slots: Slots;
  waitMs: number;
}

export interface OnAppOptions<T> {
  /** A long operation's slot; without one, the lock is held on a pooled connection. */
  slot?: Slot;
  /** 'ready' (the default): the app must be registered and ready. 'registered': in any state (delete finishes a half-done one). */
  appMustBe?: 'ready' | 'registered';
  /** What the audit entry records of a success. */
  detail?: (result: T) => Record<string, unknown>;
}

/** An audit outcome for an error: its code when it is one of ours, else "failed" (never a word of the error's text). */
export function outcomeOf(err: unknown): string {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && /^[A-Z_]+$/.test(code) ? code.toLowerCase() : 'failed';
}

export class OperationEnvelope {
  private readonly store: SystemStore;
  private readonly server: PostgresServer;
  private readonly audit: AuditTrail;
  private readonly log: Logger;
  private readonly observers: OperationObserver[] = [];

  constructor(store: SystemStore, server: PostgresServer, audit: AuditTrail, log: Logger) {
    this.store = store;
    this.server = server;
    this.audit = audit;
    this.log = log;
  }

  /** Tells `observer` of every operation's end from now on. */
  observe(observer: OperationObserver): void {
    this.observers.push(observer);
  }

  /**
   * Runs an operation audited: once the system's own tables exist, runs `work`, then records it in the audit log
   * and tells the observers, whatever its outcome. Every operation runs in this; those on an existing app through
   * onApp.
   */
  async audited<T>(action: string, appName: string, request: RequestContext, work: () => Promise<T>, detail?: (result: T) => Record<string, unknown>): Promise<T> {
    await Promise.all([this.store.ensureSchema(), this.server.ensureSetUp()]);
    const started = process.hrtime.bigint();
    let outcome = 'ok';
    let extra: Record<string, unknown> | undefined;
    try {
      const result = await work();
      extra = detail?.(result);
      return result;
    } catch (err) {
      outcome = outcomeOf(err);
      throw err;
    } finally {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      for (const observer of this.observers) observer(action, outcome, seconds);
      const written = this.audit.record({ action, appName, outcome, ...request, detail: extra }).catch((err) =>
        this.log.warn({ err, action, app: appName }, 'could not write the audit log'),
      );
      // A success is answered once its audit entry is written; a failure (Postgres may be away) is answered at
      // once, its entry written when it can be.
      if (outcome === 'ok') await written;
    }
  }

  /** The whole envelope: audited, under the app's lock, the app found as `appMustBe` says (AppNotFoundError otherwise). */
  onApp<T>(action: string, appName: string, request: RequestContext, options: OnAppOptions<T>, work: (session: AppSession, app: FoundApp) => Promise<T>): Promise<T> {
    return this.audited(
      action,
      appName,
      request,
      () => this.locked(appName, options.slot, async (session) => work(session, await this.requireApp(session.store, appName, options.appMustBe ?? 'ready'))),
      options.detail,
    );
  }

  /**
   * Runs `work` under the app's lock, with a connection to the store and one to the server: pooled ones, or in a
   * slot, connections of their own.
   */
  locked<T>(appName: string, slot: Slot | undefined, work: (session: AppSession) => Promise<T>): Promise<T> {
    if (!slot) return this.store.withAppLock(appName, (store) => this.server.withClientBeside(this.store, store, (server) => work({ store, server })));
    return slot.slots.run(
      () => this.store.withAppLock(appName, (store) => this.server.withOwnConnectionBeside(this.store, store, (server) => work({ store, server })), { ownConnection: true }),
      slot.waitMs,
    );
  }

  /** The app's names, state and incarnation if it is registered (and ready, for 'ready'); AppNotFoundError otherwise. */
  async requireApp(client: Queryable, appName: string, appMustBe: 'ready' | 'registered'): Promise<FoundApp> {
    const registered = await findApp(client, appName);
    if (!registered || (appMustBe === 'ready' && registered.state !== 'ready')) throw new AppNotFoundError(appName);
    return { ...appIdentifiers(appName), state: registered.state, incarnation: registered.incarnation };
  }
}
