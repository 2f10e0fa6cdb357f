// Owns the backups that run by themselves, on the schedules the settings give (src/shared/schedule.ts):
// - each app's dump (BACKUP_SCHEDULE), its turn spread over BACKUP_SPREAD_MINUTES by a hash of its name, at most
//   BACKUP_SCHEDULED_CONCURRENCY at once, each on connections of its own (never the pool provisioning uses) and
//   under the app's lock, like a dump asked for through the API; verified and checksummed (backup-files.ts);
// - retention (retention.ts) after each dump and at every tick, under each app's lock, audited and
//   logged, mirrored on the off-site copy;
// - the whole cluster's backup with pgBackRest (CLUSTER_BACKUP_SCHEDULE; full every CLUSTER_FULL_BACKUP_EVERY_DAYS,
//   incremental otherwise), one at a time;
// - the copy off the machine (OFFSITE_SCHEDULE, and after every cluster backup).
// A failure is logged (error), counted (/metrics), audited for dumps, and tried again after BACKUP_RETRY_DELAY_MS,
// doubling up to an hour: never silent, never a storm. What is due is derived from the backup files and
// pgBackRest's own records at every tick, so a restart of the service forgets nothing that matters.
import type { Logger } from 'pino';
import { readyApps, registeredIncarnations } from '../../db/system-store/registry.js';
import type { SystemStore } from '../../db/system-store/system-store.js';
import type { Config } from '../../shared/config.js';
import { AppNotFoundError } from '../../shared/errors.js';
import { latestSlot, latestTurn, parseSchedule, type Schedule } from '../../shared/schedule.js';
import type { AuditTrail } from '../audit-trail.js';
import { incarnationKey, newestOfEach, type BackupFile, type BackupFiles, type BackupName } from './backup-files.js';
import { backupsToPrune, type PruneDecision, type RetentionPolicy } from './retention.js';
import { outcomeOf, type OperationEnvelope } from '../operation-envelope.js';
import { dumpApp } from '../operations/backup.js';
import type { OperationDeps } from '../operations/deps.js';
import { Slots } from '../slots.js';

/** The whole cluster's backups (pgBackRest: src/db/postgres-server/cluster-backup.ts), as the schedules use them. */
export interface ClusterBackups {
  ensureStanza(): Promise<void>;
  backup(type: 'full' | 'incr'): Promise<unknown>;
  info(): Promise<{ backups: ReadonlyArray<{ type: string; startedAt: Date }> }>;
}

/** When the newest backup of any type (and which type), and the newest full one, started (pgBackRest's own records). */
async function newestClusterBackups(cluster: ClusterBackups): Promise<{ any?: Date; anyType?: string; full?: Date }> {
  const { backups } = await cluster.info();
  const newest = <B extends { startedAt: Date }>(of: readonly B[]) => of.reduce<B | undefined>((latest, b) => (!latest || b.startedAt > latest.startedAt ? b : latest), undefined);
  const any = newest(backups);
  return { any: any?.startedAt, anyType: any?.type, full: newest(backups.filter((b) => b.type === 'full'))?.startedAt };
}

/** The copy off the machine, as the schedules use it. */
export interface OffsiteCopies {
  readonly enabled: boolean;
  copyDumps(localDir: string): Promise<unknown>;
  removeDumps(files: string[]): Promise<void>;
  copyClusterRepo(repoDir: string): Promise<void>;
}

export type ScheduledWork = 'app_dump' | 'retention' | 'cluster_backup' | 'offsite_copy';

/** What the schedules have done and where they fail, for /metrics, /health and GET /apps/:name. */
export interface BackupScheduleStatus {
  /** Failures so far, by kind of work (a counter). */
  failures: Record<ScheduledWork, number>;
  /** Apps whose last scheduled dump failed: how many times in a row, and when it is tried again. */
  failingApps: ReadonlyMap<string, { failures: number; retryAt: number; code: string }>;
  lastClusterBackup?: { at: Date; type: 'full' | 'diff' | 'incr' };
  lastOffsiteCopy?: Date;
  offsiteCopyFailing: boolean;
  offsiteConfigured: boolean;
}

const MAX_RETRY_DELAY_MS = 3_600_000;
const DAY_MS = 86_400_000;

/** A lane of work that fails now and then: when it may run again. */
class Backoff {
  failures = 0;
  retryAt = 0;

  private readonly baseMs: number;

  constructor(baseMs: number) {
    this.baseMs = baseMs;
  }

  /** The last failure's code, as the audit log records it (outcomeOf): ours, never the error's words. */
  error = '';

  failed(now: number, error = ''): void {
    this.failures++;
    this.error = error;
    this.retryAt = now + Math.min(this.baseMs * 2 ** (this.failures - 1), MAX_RETRY_DELAY_MS);
  }

  succeeded(): void {
    this.failures = 0;
    this.retryAt = 0;
    this.error = '';
  }

  waiting(now: number): boolean {
    return now < this.retryAt;
  }
}

export interface BackupSchedulesDeps {
  store: SystemStore;
  envelope: OperationEnvelope;
  audit: AuditTrail;
  operations: OperationDeps;
  backupFiles: BackupFiles;
  cluster?: ClusterBackups;
  offsite?: OffsiteCopies;
  config: Config;
  log: Logger;
}

export class BackupSchedules {
  private readonly deps: BackupSchedulesDeps;
  private readonly log: Logger;
  private readonly dumps: Schedule;
  private readonly clusterSchedule: Schedule;
  private readonly offsiteSchedule: Schedule;
  private readonly policy: RetentionPolicy;
  private readonly dumpSlots: Slots;
  private timer?: NodeJS.Timeout;
  private ticking?: Promise<void>;
  private stopped = false;
  /** Apps queued or being dumped. */
  private readonly busy = new Set<string>();
  /** Dumps due and waiting for one of the BACKUP_SCHEDULED_CONCURRENCY lanes, oldest turn first. */
  private readonly queue: Array<{ app: string; incarnation: string }> = [];
  private activeDumps = 0;
  private readonly appBackoff = new Map<string, Backoff>();
  private readonly clusterBackoff: Backoff;
  private readonly offsiteBackoff: Backoff;
  private clusterLane?: Promise<void>;
  private clusterKnown?: { any?: Date; anyType?: string; full?: Date };
  private offsiteWanted = true; // a copy at start: whatever was made while the service was down
  /** Files retention removed here whose off-site copies could not be removed yet. */
  private readonly remoteRemovals = new Set<string>();
  readonly status: BackupScheduleStatus;

  constructor(deps: BackupSchedulesDeps) {
    this.deps = deps;
    const { config } = deps;
    this.log = deps.log.child({ component: 'backup-schedules' });
    this.dumps = parseSchedule(config.BACKUP_SCHEDULE);
    this.clusterSchedule = deps.cluster ? parseSchedule(config.CLUSTER_BACKUP_SCHEDULE) : { kind: 'off' };
    this.offsiteSchedule = deps.offsite?.enabled ? parseSchedule(config.OFFSITE_SCHEDULE) : { kind: 'off' };
    this.policy = { keepLast: config.BACKUP_KEEP_LAST, keepDays: config.BACKUP_KEEP_DAYS, deletedAppGraceDays: config.DELETED_APP_BACKUP_GRACE_DAYS };
    this.dumpSlots = new Slots(config.BACKUP_SCHEDULED_CONCURRENCY, 'scheduled backups');
    this.clusterBackoff = new Backoff(config.BACKUP_RETRY_DELAY_MS);
    this.offsiteBackoff = new Backoff(config.BACKUP_RETRY_DELAY_MS);
    const appBackoff = this.appBackoff;
    const offsiteBackoff = this.offsiteBackoff;
    this.status = {
      failures: { app_dump: 0, retention: 0, cluster_backup: 0, offsite_copy: 0 },
      get failingApps() {
        return new Map([...appBackoff].map(([app, b]) => [app, { failures: b.failures, retryAt: b.retryAt, code: b.error }]));
      },
      get offsiteCopyFailing() {
        return offsiteBackoff.failures > 0;
      },
      offsiteConfigured: deps.offsite?.enabled ?? false,
    };
  }

  /** Ticks every BACKUP_SCHEDULER_TICK_MS from now (the first at once). */
  start(): void {
    this.stopped = false;
    void this.tick();
    this.timer = setInterval(() => void this.tick(), this.deps.config.BACKUP_SCHEDULER_TICK_MS);
    this.timer.unref();
  }

  /** Stops ticking and waits for the tick under way; dumps and copies already running finish by themselves. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.ticking;
  }

  /** One look at what is due; never two at once. Each lane reports its own failures. */
  tick(): Promise<void> {
    this.ticking ??= (async () => {
      const now = Date.now();
      // The backup directory, read once for both looks (each app's retention reads its own files again under its lock).
      const names = await this.deps.backupFiles.names().catch((err: unknown) => this.failed('retention', err, 'could not read the backup directory; trying again at the next tick'));
      if (names) {
        await this.queueDueDumps(now, names).catch((err) => this.log.warn({ err }, 'could not look for scheduled dumps that are due; trying again at the next tick'));
        await this.applyRetention(now, names).catch((err) => this.failed('retention', err, 'retention could not run; it runs again at the next tick'));
      }
      this.runClusterLane(now);
    })().finally(() => {
      this.ticking = undefined;
    });
    return this.ticking;
  }

  private failed(work: ScheduledWork, err: unknown, message: string, extra: Record<string, unknown> = {}): void {
    this.status.failures[work]++;
    this.log.error({ err, work, ...extra }, message);
  }

  // --- each app's dump ----------------------------------------------------------------------------------------

  private async queueDueDumps(now: number, names: readonly BackupName[]): Promise<void> {
    if (this.dumps.kind === 'off' || this.stopped) return;
    const spreadMs = this.deps.config.BACKUP_SPREAD_MINUTES * 60_000;
    const apps = await readyApps(this.deps.store.pool);
    // An app deleted while its dumps failed is no longer failing: it is gone.
    const ready = new Set(apps.map((app) => app.app_name));
    for (const appName of this.appBackoff.keys()) if (!ready.has(appName)) this.appBackoff.delete(appName);
    const newest = newestOfEach(names);
    const due: Array<{ app: string; incarnation: string; turn: number }> = [];
    for (const app of apps) {
      if (this.busy.has(app.app_name) || this.appBackoff.get(app.app_name)?.waiting(now)) continue;
      const turn = latestTurn(this.dumps, app.app_name, spreadMs, now)!;
      // An app made after its turn waits for the next one; one dumped since (scheduled or not) is not due.
      const newestAt = newest.get(incarnationKey(app.app_name, app.incarnation))?.created_at;
      if (app.created_at.getTime() > turn || (newestAt ? Date.parse(newestAt) : -Infinity) >= turn) continue;
      due.push({ app: app.app_name, incarnation: app.incarnation, turn });
    }
    due.sort((x, y) => x.turn - y.turn);
    for (const { app, incarnation } of due) {
      this.busy.add(app);
      this.queue.push({ app, incarnation });
    }
    this.pump();
  }

  /** Starts queued dumps while a lane is free. */
  private pump(): void {
    while (this.activeDumps < this.deps.config.BACKUP_SCHEDULED_CONCURRENCY && this.queue.length > 0 && !this.stopped) {
      const { app, incarnation } = this.queue.shift()!;
      this.activeDumps++;
      void this.dumpOne(app, incarnation).finally(() => {
        this.activeDumps--;
        this.busy.delete(app);
        this.pump();
      });
    }
    if (this.stopped) for (const { app } of this.queue.splice(0)) this.busy.delete(app);
  }

  /** One scheduled dump, audited like any backup, then this app's retention under the same lock. */
  private async dumpOne(appName: string, incarnation: string): Promise<void> {
    if (this.stopped) return;
    const { envelope, operations } = this.deps;
    const removed: PruneDecision[] = [];
    try {
      const file = await envelope.onApp<BackupFile | undefined>(
        'backup',
        appName,
        { client: 'scheduler' },
        // The scheduler's own slots (BACKUP_SCHEDULED_CONCURRENCY, never those of the API's backups; pump() keeps
        // one free for each dump it starts): connections of their own, never the pool provisioning uses.
        { slot: { slots: this.dumpSlots, waitMs: 0 }, detail: (backup) => ({ file: backup?.file, sha256: backup?.sha256, scheduled: true }) },
        async (session, app) => {
          if (app.incarnation !== incarnation) return undefined; // deleted and made again meanwhile: its own turn comes
          const backup = await dumpApp(operations, session.server, app, app.incarnation);
          removed.push(...(await this.pruneApp(appName)));
          return backup;
        },
      );
      this.appBackoff.delete(appName);
      if (file) this.log.info({ app: appName, file: file.file, size_bytes: file.size_bytes }, 'scheduled backup written and verified');
    } catch (err) {
      if (err instanceof AppNotFoundError) return; // deleted since its turn came: nothing to back up, nothing failed
      const backoff = this.appBackoff.get(appName) ?? new Backoff(this.deps.config.BACKUP_RETRY_DELAY_MS);
      backoff.failed(Date.now(), outcomeOf(err));
      this.appBackoff.set(appName, backoff);
      this.failed('app_dump', err, 'scheduled backup failed; it will be tried again', { app: appName, failures: backoff.failures, retry_at: new Date(backoff.retryAt).toISOString() });
    }
    await this.audited(removed);
    if (removed.length > 0) await this.removeRemotely(removed.map((d) => d.backup.file));
  }

  // --- retention ------------------------------------------------------------------------------------------------

  /** The files retention removes for one app name now; the caller holds the app's lock. */
  private async pruneApp(appName: string): Promise<PruneDecision[]> {
    const [names, live] = await Promise.all([this.deps.backupFiles.names((b) => b.app_name === appName), registeredIncarnations(this.deps.store.pool)]);
    const decisions = backupsToPrune(names, live, this.policy, Date.now());
    await this.deps.backupFiles.remove(decisions.map((d) => d.backup.file));
    return decisions;
  }

  /** Every app name with something to remove, each under its lock (an app busy now is done at a later tick). */
  private async applyRetention(now: number, names: readonly BackupName[]): Promise<void> {
    if (this.stopped) return;
    const leftovers = await this.deps.backupFiles.removeLeftovers(this.deps.config.BACKUP_TIMEOUT_MS + 60_000);
    if (leftovers.length > 0) this.log.info({ files: leftovers }, 'removed what dumps cut short left behind');
    const live = await registeredIncarnations(this.deps.store.pool);
    const byApp = new Set(backupsToPrune(names, live, this.policy, now).map((d) => d.backup.app_name));
    for (const appName of byApp) {
      if (this.busy.has(appName) || this.stopped) continue;
      let removed: PruneDecision[] = [];
      try {
        removed = await this.deps.envelope.locked(appName, undefined, () => this.pruneApp(appName));
      } catch (err) {
        this.log.debug({ err, app: appName }, 'retention skipped an app that is busy; it is tried again at the next tick');
        continue;
      }
      await this.audited(removed);
      if (removed.length > 0) await this.removeRemotely(removed.map((d) => d.backup.file));
    }
  }

  /** Logs and audits what retention removed: one entry per app. */
  private async audited(removed: PruneDecision[]): Promise<void> {
    const byApp = new Map<string, PruneDecision[]>();
    for (const decision of removed) byApp.set(decision.backup.app_name, [...(byApp.get(decision.backup.app_name) ?? []), decision]);
    for (const [appName, decisions] of byApp) {
      const detail = { files: decisions.map((d) => d.backup.file), reasons: [...new Set(decisions.map((d) => d.reason))], policy: this.policy };
      this.log.info({ app: appName, ...detail }, 'retention removed backups');
      await this.deps.audit.record({ action: 'prune_backups', appName, outcome: 'ok', client: 'scheduler', detail }).catch((err) => this.log.warn({ err, app: appName }, 'could not write the audit log'));
    }
  }

  /** Mirrors retention off the machine: exactly the files removed here; those it cannot remove now wait for the next copy. */
  private async removeRemotely(files: string[]): Promise<void> {
    const offsite = this.deps.offsite;
    if (!offsite?.enabled) return;
    for (const file of files) this.remoteRemovals.add(file);
    const pending = [...this.remoteRemovals];
    try {
      await offsite.removeDumps(pending); // each with its checksum file
      for (const file of pending) this.remoteRemovals.delete(file);
    } catch (err) {
      this.log.warn({ err, files: pending.length }, 'could not remove pruned backups off the machine yet; tried again with the next copy');
    }
  }

  // --- the cluster's backup and the copy off the machine: one lane, one thing at a time ------------------------

  private runClusterLane(now: number): void {
    if (this.clusterLane || this.stopped) return;
    this.clusterLane = (async () => {
      await this.clusterBackupIfDue(now);
      await this.offsiteCopyIfDue(now);
    })().finally(() => {
      this.clusterLane = undefined;
    });
  }

  private async clusterBackupIfDue(now: number): Promise<void> {
    const cluster = this.deps.cluster;
    if (!cluster || this.clusterSchedule.kind === 'off' || this.clusterBackoff.waiting(now)) return;
    try {
      await cluster.ensureStanza(); // made at start in the background: at a first start, the first backup waits for it
      this.clusterKnown ??= await this.readClusterRecords(cluster);
      const slot = latestSlot(this.clusterSchedule, now)!;
      if ((this.clusterKnown.any?.getTime() ?? -Infinity) >= slot) return;
      const fullAge = now - (this.clusterKnown.full?.getTime() ?? -Infinity);
      const type = fullAge >= this.deps.config.CLUSTER_FULL_BACKUP_EVERY_DAYS * DAY_MS ? 'full' : 'incr';
      const started = new Date();
      this.log.info({ type }, 'cluster backup (pgBackRest) starting');
      await cluster.backup(type);
      this.clusterKnown = { any: started, anyType: type, full: type === 'full' ? started : this.clusterKnown.full };
      this.status.lastClusterBackup = { at: started, type };
      this.clusterBackoff.succeeded();
      this.offsiteWanted = true;
      this.log.info({ type, seconds: Math.round((Date.now() - started.getTime()) / 1000) }, 'cluster backup (pgBackRest) finished');
    } catch (err) {
      this.clusterKnown = undefined; // read pgBackRest's own records again next time
      this.clusterBackoff.failed(Date.now());
      this.failed('cluster_backup', err, 'cluster backup (pgBackRest) failed; it will be tried again', { retry_at: new Date(this.clusterBackoff.retryAt).toISOString() });
    }
  }

  /** pgBackRest's records of the cluster's backups; the newest becomes the status /metrics shows (also after a restart). */
  private async readClusterRecords(cluster: ClusterBackups): Promise<{ any?: Date; anyType?: string; full?: Date }> {
    const known = await newestClusterBackups(cluster);
    if (known.any && (known.anyType === 'full' || known.anyType === 'diff' || known.anyType === 'incr')) this.status.lastClusterBackup ??= { at: known.any, type: known.anyType };
    return known;
  }

  private async offsiteCopyIfDue(now: number): Promise<void> {
    const offsite = this.deps.offsite;
    if (!offsite?.enabled || this.offsiteSchedule.kind === 'off' || this.offsiteBackoff.waiting(now)) return;
    const slot = latestSlot(this.offsiteSchedule, now)!;
    if (!this.offsiteWanted && (this.status.lastOffsiteCopy?.getTime() ?? -Infinity) >= slot) return;
    const started = new Date();
    try {
      await offsite.copyDumps(this.deps.backupFiles.directoryPath);
      const repo = this.deps.config.PGBACKREST_REPO_PATH;
      const cluster = this.deps.cluster;
      // The repository goes once it holds a backup: WAL alone restores nothing (and the copy refuses a repository
      // with no backup, as it refuses one that looks lost).
      if (repo && cluster) {
        if (!this.clusterKnown?.any) this.clusterKnown = await this.readClusterRecords(cluster); // one may have been made by hand
        if (this.clusterKnown.any) await offsite.copyClusterRepo(repo);
        else this.log.info('off-site copy: no cluster backup yet, so pgBackRest\'s repository is not copied this time');
      }
      if (this.remoteRemovals.size > 0) await this.removeRemotely([]);
      this.status.lastOffsiteCopy = started;
      this.offsiteWanted = false;
      this.offsiteBackoff.succeeded();
      this.log.info({ seconds: Math.round((Date.now() - started.getTime()) / 1000) }, 'off-site copy finished');
    } catch (err) {
      this.offsiteBackoff.failed(Date.now());
      this.failed('offsite_copy', err, 'off-site copy failed; it will be tried again', { retry_at: new Date(this.offsiteBackoff.retryAt).toISOString() });
    }
  }

  /** The newest backup of each incarnation of each app, keyed by incarnationKey, from the directory (for /metrics). */
  async newestBackups(): Promise<Map<string, BackupName>> {
    return newestOfEach(await this.deps.backupFiles.names());
  }
}
