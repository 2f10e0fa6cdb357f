// Owns which backups retention removes: a pure decision over backup names (app, incarnation, time), the same for
// the files in BACKUP_DIR and for their copies off the machine. Per incarnation of an app:
// - a live one (the registry names it): keep the newest BACKUP_KEEP_LAST and every dump younger than
//   BACKUP_KEEP_DAYS; the newest is never removed, and with both rules off nothing is;
// - a deleted one: every dump is kept until DELETED_APP_BACKUP_GRACE_DAYS have passed since its newest (the
//   dump its delete took), then all of them go; 0 keeps them for ever;
// - dumps named before incarnations existed (no incarnation in the name) are never removed by retention.
import type { BackupName } from './backup-files.js';

export interface RetentionPolicy {
  keepLast: number;
  keepDays: number;
  deletedAppGraceDays: number;
}

export type PruneReason = 'retention' | 'deleted_app_grace_expired';

export interface PruneDecision {
  backup: BackupName;
  reason: PruneReason;
}

const DAY_MS = 86_400_000;

/**
 * The backups retention removes now, out of `backups` (any order), given which incarnation of each app name is
 * registered (`live`) and the time.
 */
export function backupsToPrune(backups: readonly BackupName[], live: ReadonlyMap<string, string>, policy: RetentionPolicy, now: number): PruneDecision[] {
  const groups = new Map<string, BackupName[]>();
  for (const backup of backups) {
    if (backup.incarnation === null) continue;
    const key = `${backup.app_name}/${backup.incarnation}`;
    groups.set(key, [...(groups.get(key) ?? []), backup]);
  }
  const decisions: PruneDecision[] = [];
  for (const group of groups.values()) {
    group.sort((x, y) => y.created_at.localeCompare(x.created_at) || y.file.localeCompare(x.file));
    const [newest] = group;
    const age = (backup: BackupName) => now - Date.parse(backup.created_at);
    if (live.get(newest!.app_name) === newest!.incarnation) {
      if (policy.keepLast === 0 && policy.keepDays === 0) continue;
      group.forEach((backup, index) => {
        if (index === 0) return;
        const keptByCount = policy.keepLast > 0 && index < policy.keepLast;
        const keptByAge = policy.keepDays > 0 && age(backup) < policy.keepDays * DAY_MS;
        if (!keptByCount && !keptByAge) decisions.push({ backup, reason: 'retention' });
      });
    } else if (policy.deletedAppGraceDays > 0 && age(newest!) >= policy.deletedAppGraceDays * DAY_MS) {
      for (const backup of group) decisions.push({ backup, reason: 'deleted_app_grace_expired' });
    }
  }
  return decisions;
}
