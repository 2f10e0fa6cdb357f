// Owns the extension operations the routes call (src/http/routes/extensions.ts), as one object beside the app
// operations: install, list and remove, each a function of src/domain/operations/extensions.ts.
import type { RequestContext } from './operation-envelope.js';
import type { OperationDeps } from './operations/deps.js';
import { installExtension, listExtensions, removeExtension, type InstalledExtension } from './operations/extensions.js';

export type { InstalledExtension } from './operations/extensions.js';

export class AppExtensions {
  private readonly deps: OperationDeps;

  constructor(deps: OperationDeps) {
    this.deps = deps;
  }

  install(appName: string, name: string, request: RequestContext): Promise<{ extension: InstalledExtension; created: boolean }> {
    return installExtension(this.deps, appName, name, request);
  }

  list(appName: string): Promise<InstalledExtension[]> {
    return listExtensions(this.deps, appName);
  }

  remove(appName: string, name: string, request: RequestContext): Promise<InstalledExtension> {
    return removeExtension(this.deps, appName, name, request);
  }
}
