// Owns the database's lifetime inside the app: decorates `app.db` and closes the pool when the app closes.
import fp from 'fastify-plugin';
import type { Config } from '../../shared/config.js';
import { Database } from '../../db/superuser-connections.js';

declare module 'fastify' {
  interface FastifyInstance {
    db: Database;
  }
}

export default fp<{ config: Config }>(
  async (app, { config }) => {
    const db = new Database(config, app.log);
    app.decorate('db', db);
    app.addHook('onClose', async () => db.close());
  },
  { name: 'database' },
);
