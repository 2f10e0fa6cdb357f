// Owns the app lifecycle inside the app: decorates `app.lifecycle`, and runs the reconciler once at start and
// then every RECONCILE_INTERVAL_MS (refreshing the apps' database sizes after it), never two runs at once;
// closing the app waits for a run in progress.
import fp from 'fastify-plugin';
import { Backups } from '../../domain/backup-files.js';
import type { Config } from '../../shared/config.js';
import { AppLifecycle } from '../../domain/app-operations.js';

declare module 'fastify' {
  interface FastifyInstance {
    lifecycle: AppLifecycle;
  }
}

export default fp<{ config: Config }>(
  async (app, { config }) => {
    const lifecycle = new AppLifecycle(app.db, new Backups(config), config, app.log, app.observeOperation);
    app.decorate('lifecycle', lifecycle);

    let timer: NodeJS.Timeout | undefined;
    let running: Promise<void> | undefined;
    const reconcileOnce = () => {
      running ??= lifecycle
        .reconcile()
        .then((report) => app.log.info({ repaired: report.repaired.length, skipped_busy: report.skippedBusy, failed: report.failed }, 'reconcile finished'))
        .then(() => lifecycle.refreshSizes())
        .catch((err) => app.log.warn({ err }, 'reconcile failed; it will run again'))
        .finally(() => {
          running = undefined;
        });
      return running;
    };

    app.addHook('onReady', async () => {
      void reconcileOnce();
      lifecycle.start();
      timer = setInterval(() => void reconcileOnce(), config.RECONCILE_INTERVAL_MS);
      timer.unref();
    });
    app.addHook('onClose', async () => {
      clearInterval(timer);
      await lifecycle.stop();
      await running;
    });
  },
  { name: 'lifecycle', dependencies: ['database', 'metrics'] },
);
