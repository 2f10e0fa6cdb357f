// Owns the answer for a request no route takes: 405 and Allow for a path some route has with another method (as
// nginx answers for the same paths), 404 for a path no route has.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { errorBody } from './error-handler.js';

/** One segment of a route's path as a regular expression: a parameter is one non-empty segment. */
const segmentPattern = (segment: string): string => (segment.startsWith(':') ? '[^/]+' : segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));

/** The routes' paths as patterns, with the methods each takes. */
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

/** Learns every route as it is added, and answers for the requests none of them takes. */
export function answerUnroutedRequests(app: FastifyInstance): void {
  const routeMethods = new RouteMethods();
  app.addHook('onRoute', (route) => routeMethods.add(route.url, route.method));
  app.setNotFoundHandler((request: FastifyRequest, reply: FastifyReply) => {
    const path = request.url.split('?')[0]!;
    const allow = routeMethods.allowed(path);
    if (allow !== undefined) return reply.code(405).header('allow', allow).send(errorBody(405, `method not allowed: use ${allow}`));
    return reply.code(404).send(errorBody(404, `no route for ${request.method} ${path}`));
  });
}
