// The process: load config, make (or read the pinned) admin key, build the app, listen, and close with grace on
// a signal.
import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.js';
import { ConfigError, loadConfig } from './shared/config.js';
import { AdminKeyFileError, adminKeyDigest, adminKeyMessage, loadPinnedAdminKey, newAdminKey, type PinnedAdminKey } from './shared/secrets.js';

let config;
let pinned: PinnedAdminKey | undefined;
try {
  config = loadConfig();
  // A pinned key (ADMIN_KEY_FILE) is read once, here: a file the service cannot use stops it before it listens.
  if (config.ADMIN_KEY_FILE !== undefined) pinned = loadPinnedAdminKey(config.ADMIN_KEY_FILE);
} catch (err) {
  if (!(err instanceof ConfigError || err instanceof AdminKeyFileError)) throw err;
  process.stderr.write(err instanceof AdminKeyFileError ? `Invalid configuration:\n  ${err.message}\n` : `${err.message}\n`);
  process.exit(1);
}

const adminKey = pinned ? undefined : newAdminKey();
const app = await buildApp(config, { adminKey: pinned ?? { digest: adminKeyDigest(adminKey!) } });

if (adminKey !== undefined) {
  // The only place the key is ever written: once, at boot, as the message of its own line (README: "The admin
  // key" has the recipe that reads it). At info level whatever LOG_LEVEL says: without it the service is unusable.
  app.log.child({}, { level: 'info' }).info(adminKeyMessage(adminKey));
} else {
  // Pinned: nothing about the key (neither it nor its hash), only that it is pinned and by which file.
  app.log
    .child({}, { level: 'info' })
    .info({ adminKeyFile: config.ADMIN_KEY_FILE }, `admin key pinned by ADMIN_KEY_FILE (${config.ADMIN_KEY_FILE}): no key was generated; a new file takes effect at the next start`);
}

closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'shutting down after an unexpected error');
  else app.log.info({ signal }, 'shutting down: finishing requests in flight');
  await app.close();
});

try {
  await app.listen({ host: config.HOST, port: config.PORT });
} catch (err) {
  // Listening includes the provisioner's start, which refuses a system database newer than this code: say why.
  app.log.fatal({ err }, `could not start: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}
