// Owns the OpenAPI document, generated from the zod schemas of the routes registered after it, and served at
// GET /docs/json on the service's port (nginx does not route it).
import swagger from '@fastify/swagger';
import fp from 'fastify-plugin';
import { jsonSchemaTransform } from 'fastify-type-provider-zod';

export default fp(
  async (app) => {
    await app.register(swagger, {
      openapi: {
        openapi: '3.0.3',
        info: { title: 'pg-provisioner', description: 'Hands each app its own isolated Postgres database.', version: '0.1.0' },
        components: { securitySchemes: { adminKey: { type: 'http', scheme: 'bearer', description: 'the admin key (sk_…) from the service log' } } },
        security: [{ adminKey: [] }],
      },
      transform: jsonSchemaTransform,
    });
    app.get('/docs/json', { schema: { hide: true } }, async () => app.swagger());
  },
  { name: 'openapi' },
);
