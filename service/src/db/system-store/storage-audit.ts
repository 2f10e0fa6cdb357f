// Owns reading the storage quota's own entries of the audit log back (src/domain/storage-quota.ts writes them with
// every other entry, through audit-log.ts): the last one of each app's present incarnation says which enforcement
// was carried out to its end, sessions ended included, since the audit entry is that work's last step.
import type { Queryable } from '../queryable.js';

/** The audit actions of the storage quota, one per state it brings an app to. */
export const STORAGE_AUDIT_ACTIONS = ['storage_writable', 'storage_read_only', 'storage_suspended'] as const;
export type StorageAuditAction = (typeof STORAGE_AUDIT_ACTIONS)[number];

/**
 * The last storage action audited for each registered app since its present incarnation was made, by app name;
 * apps with none are absent. Read once per start of the service, to finish what a crash cut short.
 */
export async function lastStorageActions(db: Queryable): Promise<Map<string, StorageAuditAction>> {
  const { rows } = await db.query<{ app_name: string; action: StorageAuditAction }>(
    `SELECT DISTINCT ON (l.app_name) l.app_name, l.action
       FROM audit_log l JOIN apps a ON a.app_name = l.app_name AND l.at >= a.created_at
      WHERE l.action = ANY ($1::text[]) AND l.outcome = 'ok'
      ORDER BY l.app_name, l.at DESC, l.id DESC`,
    [STORAGE_AUDIT_ACTIONS],
  );
  return new Map(rows.map((row) => [row.app_name, row.action]));
}
