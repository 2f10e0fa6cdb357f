// buildApp(config): the whole HTTP service as a Fastify instance: plugins, routes and the one error handler.
// It never listens; src/server.ts does, and tests use it the same way.
import { STATUS_CODES } from 'node:http';
import Fastify, { LogController, type FastifyError, type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import {
  hasZodFastifySchemaValidationErrors,
  jsonSchemaTransform,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from 'fastify-type-provider-zod';
import { nanoid } from 'nanoid';
import type { Logger } from 'pino';
import type { Config } from './config.js';
import { isDatabaseUnavailable, unavailableMessage } from './errors.js';
import { loggerOptions, requestLogger } from './logger.js';
import adminAuth from './plugins/admin-auth.js';
import database from './plugins/database.js';
import lifecycle from './plugins/lifecycle.js';
import metrics from './plugins/metrics.js';
import appsRoutes from './routes/apps.js';
import backupsRoutes from './routes/backups.js';
import healthRoutes from './routes/health.js';
import provisionRoutes from './routes/provision.js';
import { TrustedProxies } from './trusted-proxy.js';

export interface BuildOptions {
  /** The admin key made at boot (src/server.ts); every admin route checks it. */
  adminKey: string;
  /** Where logs go instead of stdout (tests). */
  logStream?: NodeJS.WritableStream;
}

const BODY_LIMIT_BYTES = 16 * 1024;

/** The codes of the service's own errors (src/errors.ts), as opposed to Postgres's SQLSTATEs and Node's. */
const OUR_CODE = /^[A-Z]+(?:_[A-Z]+)+$/;

function errorBody(statusCode: number, message: string) {
  return { statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message };
}

export async function buildApp(config: Config, { adminKey, logStream }: BuildOptions): Promise<FastifyInstance> {
  const trustedProxies = new TrustedProxies(config.TRUSTED_PROXY);
  const app = Fastify({
    logger: logStream ? { ...loggerOptions(config, false), stream: logStream } : loggerOptions(config),
    logController: new LogController({ disableRequestLogging: true }), // one line per request: onResponse below
    childLoggerFactory: requestLogger,
    bodyLimit: BODY_LIMIT_BYTES,
    requestIdHeader: 'x-request-id',
    genReqId: () => nanoid(12),
    trustProxy: trustedProxies.trusts, // X-Forwarded-For from nginx (TRUSTED_PROXY) only: request.ip is the client
    return503OnClosing: true,
  }).withTypeProvider<ZodTypeProvider>();

  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

  app.addHook('onReady', async () => trustedProxies.start(app.log));
  app.addHook('onClose', async () => trustedProxies.stop());

  // On shutdown, answers still in flight ask nginx to drop their keep-alive connection, so that closing the
  // server never waits for idle upstream connections to time out.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  // Hooks that run on every request are callback-style: no promise per request on the hottest paths.
  app.addHook('onSend', (_request, reply, payload, done) => {
    if (closing) reply.header('connection', 'close');
    done(null, payload);
  });

  // One line per request, at info. Routes that set a higher logLevel (GET /health) skip it.
  app.addHook('onResponse', (request, reply, done) => {
    if ((request.log as Logger).isLevelEnabled('info')) {
      request.log.info(
        {
          method: request.method,
          url: request.routeOptions.url ?? request.url.split('?')[0],
          statusCode: reply.statusCode,
          responseTimeMs: Math.round(reply.elapsedTime * 10) / 10,
          client: request.ip,
        },
        'request',
      );
    }
    done();
  });

  // The one error handler: 4xx say what was wrong; 5xx say nothing about the inside, which goes to the log.
  app.setErrorHandler((err: FastifyError, request, reply) => {
    if (hasZodFastifySchemaValidationErrors(err)) {
      const message = err.validation.map((issue) => issue.message).join('; ');
      return reply.code(400).send(errorBody(400, message));
    }
    const statusCode = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : undefined;
    if (statusCode) {
      request.log.info({ code: err.code }, err.message);
      const { retryAfterSeconds } = err as { retryAfterSeconds?: number };
      if (retryAfterSeconds !== undefined) reply.header('retry-after', String(retryAfterSeconds));
      if (statusCode === 401) reply.header('www-authenticate', 'Bearer');
      return reply.code(statusCode).send(errorBody(statusCode, err.message));
    }
    if (err.statusCode === 503 && typeof err.code === 'string' && OUR_CODE.test(err.code) && !isDatabaseUnavailable(err)) {
      // One of our own 503s (every slot for backups or rotations taken): its message says what to do.
      request.log.warn({ code: err.code }, err.message);
      return reply.code(503).header('retry-after', '5').send(errorBody(503, err.message));
    }
    if (isDatabaseUnavailable(err) || err.statusCode === 503) {
      const message = unavailableMessage(err);
      request.log.error({ err }, message);
      return reply.code(503).send(errorBody(503, message));
    }
    request.log.error({ err }, 'request failed');
    return reply.code(500).send(errorBody(500, 'Internal Server Error'));
  });

  app.setNotFoundHandler((request, reply) => {
    reply.code(404).send(errorBody(404, `no route for ${request.method} ${request.url.split('?')[0]}`));
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'pg-provisioner', description: 'Hands each app its own isolated Postgres database.', version: '0.1.0' },
      components: { securitySchemes: { adminKey: { type: 'http', scheme: 'bearer', description: 'the admin key (sk_…) from the service log' } } },
      security: [{ adminKey: [] }],
    },
    transform: jsonSchemaTransform,
  });

  await app.register(database, { config });
  await app.register(metrics);
  await app.register(lifecycle, { config });
  await app.register(adminAuth, {
    adminKey,
    maxFailedAttempts: config.AUTH_MAX_FAILED_ATTEMPTS,
    failedAttemptsWindowMs: config.AUTH_FAILED_ATTEMPTS_WINDOW_MS,
  });
  await app.register(healthRoutes, { config });
  await app.register(provisionRoutes, { config });
  await app.register(appsRoutes, { config });
  await app.register(backupsRoutes);

  // The OpenAPI document, generated from the routes' zod schemas. On the service's port; nginx does not route it.
  app.get('/docs/json', { schema: { hide: true } }, async () => app.swagger());

  return app;
}
