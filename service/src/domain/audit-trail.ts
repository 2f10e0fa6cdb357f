// Owns writing to the audit log: every operation's outcome (src/domain/operation-envelope.ts), every repair of
// the reconciler, and every failed admin authentication (src/http/plugins/admin-auth.ts). Never the secrets:
// callers put none in an entry.
import { appendAudit, type AuditEntry } from '../db/system-store/audit-log.js';
import type { SystemStore } from '../db/system-store/system-store.js';

export class AuditTrail {
  private readonly store: SystemStore;

  constructor(store: SystemStore) {
    this.store = store;
  }

  /** Appends `entry` once the system's own tables exist; rejects if it cannot be written (Postgres away). */
  async record(entry: AuditEntry): Promise<void> {
    await this.store.ensureSchema();
    await appendAudit(this.store.pool, entry);
  }
}
