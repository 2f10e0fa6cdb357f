// buildApp(config): the whole HTTP service as a Fastify instance: the http layer's plugins and routes (src/http/),
// which reach the service's operations through the plugin that holds them. It never listens; src/server.ts
// does, and tests use it the same way.
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import { serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import { handleError } from './http/error-handler.js';
import { UnsupportedMediaTypeError } from './http/error-statuses.js';
import { answerUnroutedRequests } from './http/not-found.js';
import openApi from './http/openapi.js';
import adminAuth from './http/plugins/admin-auth.js';
import metrics from './http/plugins/metrics.js';
import provisioner from './http/plugins/provisioner.js';
import { logEachRequest, requestIdMixin, requestIdOf, requestLogger } from './http/request-log.js';
import appsRoutes from './http/routes/apps.js';
import backupsRoutes from './http/routes/backups.js';
import extensionsRoutes from './http/routes/extensions.js';
import credentialsRoutes from './http/routes/credentials.js';
import databasesRoutes from './http/routes/databases.js';
import healthRoutes from './http/routes/health.js';
import provisionRoutes from './http/routes/provision.js';
import settingsRoutes from './http/routes/settings.js';
import tlsRoutes from './http/routes/tls.js';
import { TrustedProxies } from './http/trusted-proxy.js';
import type { Config } from './shared/config.js';
import { loggerOptions } from './shared/logger.js';
import { adminKeyDigest, type AdminKeyDigest } from './shared/secrets.js';

export interface BuildOptions {
  /**
   * The admin key every admin route checks: made at boot, or pinned by ADMIN_KEY_FILE (src/server.ts); by its
   * digest, or as the key itself (tests).
   */
  adminKey: string | AdminKeyDigest;
  /** Where logs go instead of stdout (tests). */
  logStream?: NodeJS.WritableStream;
}

const BODY_LIMIT_BYTES = 16 * 1024;

export async function buildApp(config: Config, { adminKey, logStream }: BuildOptions): Promise<FastifyInstance> {
  const trustedProxies = new TrustedProxies(config.TRUSTED_PROXY);
  const logging = { mixin: requestIdMixin };
  const app = Fastify({
    logger: logStream ? { ...loggerOptions(config, false, logging), stream: logStream } : loggerOptions(config, undefined, logging),
    logController: new LogController({ disableRequestLogging: true }), // one line per request: logEachRequest
    childLoggerFactory: requestLogger,
    bodyLimit: BODY_LIMIT_BYTES,
    // The id nginx gives each request (X-Request-Id: $request_id), in every log line and answer, or our own.
    requestIdHeader: false,
    genReqId: requestIdOf,
    trustProxy: trustedProxies.trusts, // X-Forwarded-For from nginx (TRUSTED_PROXY) only: request.ip is the client
    return503OnClosing: true,
  }).withTypeProvider<ZodTypeProvider>();

  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  // Bodies are JSON only: a body of any other type (text/plain, a form, none stated) is a 415 that says what to
  // send. An empty body is no body, whatever its Content-Type (fetch's POST with body '' says text/plain).
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => {
    if (body.length === 0) done(null, undefined);
    else done(new UnsupportedMediaTypeError());
  });
  answerUnroutedRequests(app);

  app.addHook('onReady', async () => trustedProxies.start(app.log));
  app.addHook('onClose', async () => trustedProxies.stop());

  // On shutdown, answers still in flight ask nginx to drop their keep-alive connection, so that closing the
  // server never waits for idle upstream connections to time out.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  // Hooks that run on every request are callback-style: no promise per request on the hottest paths.
  // Every answer carries its request id (nginx's, when it came through nginx): the way to its log lines.
  app.addHook('onSend', (request, reply, payload, done) => {
    reply.header('x-request-id', request.id);
    if (closing) reply.header('connection', 'close');
    done(null, payload);
  });
  logEachRequest(app);
  app.setErrorHandler(handleError);

  await app.register(openApi);
  await app.register(provisioner, { config });
  await app.register(metrics);
  await app.register(adminAuth, {
    adminKey: typeof adminKey === 'string' ? { digest: adminKeyDigest(adminKey) } : adminKey,
    maxFailedAttempts: config.AUTH_MAX_FAILED_ATTEMPTS,
    failedAttemptsWindowMs: config.AUTH_FAILED_ATTEMPTS_WINDOW_MS,
  });
  await app.register(healthRoutes);
  await app.register(provisionRoutes, { config });
  await app.register(appsRoutes, { config });
  await app.register(backupsRoutes);
  await app.register(settingsRoutes);
  await app.register(extensionsRoutes);
  await app.register(credentialsRoutes, { config });
  await app.register(databasesRoutes, { config });
  await app.register(tlsRoutes, { config });

  return app;
}
