// Owns taking a backup: the app's database dumped by pg_dump, logged in as the app's dump agent (with the app's
// rights, never the superuser's), into a new file of BACKUP_DIR. Holds the app's lock for as long as pg_dump
// runs: on a connection of its own, in one of the backup slots (a 503 at once when all are taken).
import { withAgent } from '../../db/postgres-server/agent-roles.js';
import type { Queryable } from '../../db/queryable.js';
import type { AppIdentifiers } from '../../shared/object-names.js';
import type { BackupFile } from '../backups/backup-files.js';
import type { RequestContext, Slot } from '../operation-envelope.js';
import type { OperationDeps } from './deps.js';

/** Where a backup, a restore, or a delete that backs up first, holds the app's lock: a 503 at once when every slot is taken. */
export const backupSlot = (deps: OperationDeps): Slot => ({ slots: deps.backupSlots, waitMs: 0 });

export function backup(deps: OperationDeps, appName: string, request: RequestContext): Promise<BackupFile> {
  return deps.envelope.onApp('backup', appName, request, { slot: backupSlot(deps), detail: (file) => ({ file: file.file, sha256: file.sha256 }) }, (session, app) =>
    dumpApp(deps, session.server, app, app.incarnation),
  );
}

/** Dumps this incarnation of the app as its dump agent; `server` is a connection to the app's server (the caller holds the app's lock). */
export function dumpApp(deps: OperationDeps, server: Queryable, app: AppIdentifiers, incarnation: string): Promise<BackupFile> {
  return withAgent(deps.server, server, app, 'dump', deps.config.BACKUP_TIMEOUT_MS, deps.log, (agent) =>
    deps.backupFiles.create(
      app,
      incarnation,
      (path) => deps.server.dumpAndRestore.dump(app, agent, path),
      (path) => deps.server.dumpAndRestore.verify(path, app),
    ),
  );
}
