// Owns the provisioner's lifetime inside the app (src/domain/provisioner.ts): decorates `app.operations` (what
// the routes call), `app.health`, `app.audit` and `app.statistics`; starts the background work when the app is
// ready, and stops it, then closes the connections, when the app closes.
import fp from 'fastify-plugin';
import type { Logger } from 'pino';
import type { AppOperations } from '../../domain/app-operations.js';
import type { AuditTrail } from '../../domain/audit-trail.js';
import { Provisioner, type HealthCheck, type ProvisionerStatistics } from '../../domain/provisioner.js';
import type { Config } from '../../shared/config.js';

declare module 'fastify' {
  interface FastifyInstance {
    operations: AppOperations;
    health: HealthCheck;
    audit: AuditTrail;
    statistics: ProvisionerStatistics;
  }
}

export default fp<{ config: Config }>(
  async (app, { config }) => {
    // Fastify's logger is the pino logger buildApp configures; the domain takes it by pino's own type.
    const provisioner = new Provisioner(config, app.log as Logger);
    app.decorate('operations', provisioner.operations);
    app.decorate('health', provisioner.health);
    app.decorate('audit', provisioner.audit);
    app.decorate('statistics', provisioner.statistics);
    app.addHook('onReady', async () => provisioner.start());
    app.addHook('onClose', async () => provisioner.stop());
  },
  { name: 'provisioner' },
);
