// The process: load config, make the admin key, build the app, listen, and close with grace on a signal.
import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { adminKeyMessage, newAdminKey } from './secrets.js';

let config;
try {
  config = loadConfig();
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  process.stderr.write(`${err.message}\n`);
  process.exit(1);
}

const adminKey = newAdminKey();
const app = await buildApp(config, { adminKey });

// The only place the key is ever written: once, at boot, as the message of its own line (README: "The admin
// key" has the recipe that reads it). At info level whatever LOG_LEVEL says: without it the service is unusable.
app.log.child({}, { level: 'info' }).info(adminKeyMessage(adminKey));

closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'shutting down after an unexpected error');
  else app.log.info({ signal }, 'shutting down: finishing requests in flight');
  await app.close();
});

try {
  await app.listen({ host: config.HOST, port: config.PORT });
} catch (err) {
  app.log.fatal({ err }, 'could not listen');
  process.exit(1);
}
