// Owns the one error handler, and the shape of every error's body: 4xx say what was wrong; 5xx say nothing about
// the inside, which goes to the log, and carry the request id that finds that line. The status each error gets is
// src/http/error-statuses.ts's.
import { STATUS_CODES } from 'node:http';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { isDatabaseUnavailable, unavailableMessage } from '../shared/errors.js';
import { statusOf, UnsupportedMediaTypeError } from './error-statuses.js';

/** The codes of the service's own errors and the HTTP layer's, as opposed to Postgres's SQLSTATEs and Node's. */
const OUR_CODE = /^[A-Z]+(?:_[A-Z]+)+$/;

/** An error's body; a 5xx also carries the request id, which finds the log line with the detail. */
export function errorBody(statusCode: number, message: string, requestId?: string) {
  const body = { statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message };
  return statusCode >= 500 && requestId !== undefined ? { ...body, request_id: requestId } : body;
}

export function handleError(err: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  if (hasZodFastifySchemaValidationErrors(err)) {
    const message = err.validation.map((issue) => issue.message).join('; ');
    return reply.code(400).send(errorBody(400, message));
  }
  const status = statusOf(err);
  const statusCode = status && status >= 400 && status < 500 ? status : undefined;
  if (statusCode) {
    request.log.info({ code: err.code }, err.message);
    const { retryAfterSeconds } = err as { retryAfterSeconds?: number };
    if (retryAfterSeconds !== undefined) reply.header('retry-after', String(retryAfterSeconds));
    if (statusCode === 401) reply.header('www-authenticate', 'Bearer');
    // Fastify's own 415 names the type it got; ours says what to send instead.
    const message = err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' ? new UnsupportedMediaTypeError().message : err.message;
    return reply.code(statusCode).send(errorBody(statusCode, message));
  }
  if (status === 503 && typeof err.code === 'string' && OUR_CODE.test(err.code) && !isDatabaseUnavailable(err)) {
    // One of our own 503s (every slot for backups or rotations taken): its message says what to do.
    request.log.warn({ code: err.code }, err.message);
    return reply.code(503).header('retry-after', '5').send(errorBody(503, err.message, request.id));
  }
  if (isDatabaseUnavailable(err) || status === 503) {
    const message = unavailableMessage(err);
    request.log.error({ err }, message);
    return reply.code(503).send(errorBody(503, message, request.id));
  }
  request.log.error({ err }, 'request failed');
  return reply.code(500).send(errorBody(500, 'Internal Server Error', request.id));
}
