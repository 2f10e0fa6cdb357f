// Owns the request log: each request's id (nginx's X-Request-Id, or our own), carried by every line the request
// logs and by its answer, and the one line per request at info.
import type { FastifyBaseLogger, FastifyInstance, FastifyServerOptions, RawRequestDefaultExpression } from 'fastify';
import { nanoid } from 'nanoid';
import type { Logger } from 'pino';

/** A request id given in X-Request-Id (nginx's $request_id: 32 hex digits) is kept if it looks like one. */
const GIVEN_REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

/** Fastify's genReqId: the id nginx gave the request (X-Request-Id: $request_id), or our own. */
export function requestIdOf(req: RawRequestDefaultExpression): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && GIVEN_REQUEST_ID.test(given) ? given : nanoid(12);
}

const REQUEST_ID = Symbol('request id');
type RequestLogger = FastifyBaseLogger & { [REQUEST_ID]?: unknown };

/**
 * Fastify's childLoggerFactory: each request's logger keeps its request id on itself, and requestIdMixin
 * adds it to each line the request logs. Given as a binding instead, pino would run the id through every
 * redaction path (they start with wildcards) for each request, logged or not: the costliest step of a
 * GET /health answer (BENCHMARKS.md). Lines are redacted as before.
 */
export const requestLogger: NonNullable<FastifyServerOptions['childLoggerFactory']> = (logger, bindings, options) => {
  const child: RequestLogger = logger.child({}, options);
  child[REQUEST_ID] = bindings.reqId;
  return child;
};

/** pino's mixin: the request id of the logger a line is written by, if it is a request's. */
export function requestIdMixin(_line: object, _level: number, logger: object): object {
  const reqId = (logger as RequestLogger)[REQUEST_ID];
  return reqId === undefined ? {} : { reqId };
}

/**
 * One line per request, at info. Routes that set a higher logLevel (GET /health) skip it. Callback-style, as
 * every hook that runs on every request: no promise per request on the hottest paths.
 */
export function logEachRequest(app: FastifyInstance): void {
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
}
