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
import type { Config } from './shared/config.js';
import { isDatabaseUnavailable, unavailableMessage, UnsupportedMediaTypeError } from './shared/errors.js';
import { loggerOptions, requestLogger } from './shared/logger.js';
import adminAuth from './http/plugins/admin-auth.js';
import database from './http/plugins/database.js';
import lifecycle from './http/plugins/service.js';
import metrics from './http/plugins/metrics.js';
import appsRoutes from './http/routes/apps.js';
import backupsRoutes from './http/routes/backups.js';
import healthRoutes from './http/routes/health.js';
import provisionRoutes from './http/routes/provision.js';
import { adminKeyDigest, type AdminKeyDigest } from './shared/secrets.js';
import { TrustedProxies } from './http/trusted-proxy.js';

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

/** The codes of the service's own errors (src/errors.ts), as opposed to Postgres's SQLSTATEs and Node's. */
const OUR_CODE = /^[A-Z]+(?:_[A-Z]+)+$/;

/** A request id given in X-Request-Id (nginx's $request_id: 32 hex digits) is kept if it looks like one. */
const GIVEN_REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

/** An error's body; a 5xx also carries the request id, which finds the log line with the detail. */
function errorBody(statusCode: number, message: string, requestId?: string) {
  const body = { statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message };
  return statusCode >= 500 && requestId !== undefined ? { ...body, request_id: requestId } : body;
}

/** One segment of a route's path as a regular expression: a parameter is one non-empty segment. */
const segmentPattern = (segment: string): string => (segment.startsWith(':') ? '[^/]+' : segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));

/**
 * The routes' paths as patterns, with the methods each takes: for answering a method a route does not take
 * with 405 and Allow (as nginx does for the same paths), and a path no route has with 404.
 */
class RouteMethods {
  private readonly byPath = new Map<string, Set<string>>();
  private patterns?: Array<{ pattern: RegExp; allow: string }>;

  add(path: string, methods: string | string[]): void {
    const set = this.byPath.get(path) ?? new Set<string>();
    for (const method of Array.isArray(methods) ? methods : [methods]) set.add(method);
    if (set.has('GET')) set.add('HEAD'); // Fastify answers HEAD for every GET route
    this.byPath.set(path, set);
    this.patterns = undefined;
  }

  /** The Allow header for `path` ("DELETE, GET, HEAD"), or undefined when no route has this path. */
  allowed(path: string): string | undefined {
    this.patterns ??= [...this.byPath].map(([route, methods]) => ({
      // /apps/ and /apps//rotate name no app: no route has them.
      pattern: new RegExp(`^${route.split('/').map(segmentPattern).join('/')}$`),
      allow: [...methods].sort().join(', '),
    }));
    return this.patterns.find(({ pattern }) => pattern.test(path))?.allow;
  }
}

export async function buildApp(config: Config, { adminKey, logStream }: BuildOptions): Promise<FastifyInstance> {
  const trustedProxies = new TrustedProxies(config.TRUSTED_PROXY);
  const routeMethods = new RouteMethods();
  const app = Fastify({
    logger: logStream ? { ...loggerOptions(config, false), stream: logStream } : loggerOptions(config),
    logController: new LogController({ disableRequestLogging: true }), // one line per request: onResponse below
    childLoggerFactory: requestLogger,
    bodyLimit: BODY_LIMIT_BYTES,
    // The id nginx gives each request (X-Request-Id: $request_id), in every log line and answer, or our own.
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && GIVEN_REQUEST_ID.test(given) ? given : nanoid(12);
    },
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
  app.addHook('onRoute', (route) => routeMethods.add(route.url, route.method));

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
      // Fastify's own 415 names the type it got; ours says what to send instead.
      const message = err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' ? new UnsupportedMediaTypeError().message : err.message;
      return reply.code(statusCode).send(errorBody(statusCode, message));
    }
    if (err.statusCode === 503 && typeof err.code === 'string' && OUR_CODE.test(err.code) && !isDatabaseUnavailable(err)) {
      // One of our own 503s (every slot for backups or rotations taken): its message says what to do.
      request.log.warn({ code: err.code }, err.message);
      return reply.code(503).header('retry-after', '5').send(errorBody(503, err.message, request.id));
    }
    if (isDatabaseUnavailable(err) || err.statusCode === 503) {
      const message = unavailableMessage(err);
      request.log.error({ err }, message);
      return reply.code(503).send(errorBody(503, message, request.id));
    }
    request.log.error({ err }, 'request failed');
    return reply.code(500).send(errorBody(500, 'Internal Server Error', request.id));
  });

  // A path some route has, with a method it does not take: 405 and the methods it takes, as nginx answers.
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0]!;
    const allow = routeMethods.allowed(path);
    if (allow !== undefined) return reply.code(405).header('allow', allow).send(errorBody(405, `method not allowed: use ${allow}`));
    return reply.code(404).send(errorBody(404, `no route for ${request.method} ${path}`));
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
    adminKey: typeof adminKey === 'string' ? { digest: adminKeyDigest(adminKey) } : adminKey,
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
