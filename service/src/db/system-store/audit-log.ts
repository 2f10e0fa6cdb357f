// Owns the append-only audit log in the system's own database: who did what to which app, and how it ended.
// The table refuses updates and deletes (src/db/system-store/migrations/001-initial.ts).
import type { Queryable } from '../queryable.js';

export interface AuditEntry {
  action: string;
  appName?: string;
  outcome: string;
  requestId?: string;
  client?: string;
  detail?: Record<string, unknown>;
}

export async function appendAudit(db: Queryable, entry: AuditEntry): Promise<void> {
  await db.query(
    `INSERT INTO audit_log (action, app_name, outcome, request_id, client, detail) VALUES ($1, $2, $3, $4, $5, $6)`,
    [entry.action, entry.appName ?? null, entry.outcome, entry.requestId ?? null, entry.client ?? null, entry.detail ? JSON.stringify(entry.detail) : null],
  );
}
