import js from '@eslint/js';
import tseslint from 'typescript-eslint';

// The layers of src/ (README: "Architecture"), enforced on every import, type-only imports included:
//   http/   → domain/, shared/          the HTTP face: routes, plugins, error handler, request log, OpenAPI
//   domain/ → db/, shared/              what the service does: operations, reconciler, ready pool
//   db/     → shared/                   everything that talks to Postgres
//   shared/ → nothing of the above      leaves: config, errors, logs, secrets, names, SQLSTATEs
//   app.ts, server.ts → http/, shared/  the app is built from the http layer, which holds the domain
const layer = (name) => ({ regex: `(^|/)${name}/`, message: `${name}/ is out of bounds here: see the layers in eslint.config.js and README "Architecture".` });
const fastify = {
  group: ['fastify', 'fastify-*', '@fastify/*'],
  message: 'Fastify belongs to src/http/, @fastify/error included (errors outside it are plain classes, src/shared/errors.ts; their HTTP statuses are src/http/errors.ts\'s): take pino\'s Logger type, not Fastify\'s.',
};
const pgDriver = { name: 'pg', message: 'the driver belongs to src/db/: take the Queryable type of src/db/queryable.ts.' };
const restrict = (files, { patterns = [], paths = [] }) => ({ files, rules: { 'no-restricted-imports': ['error', { patterns, paths }] } });

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-console': 'error',
    },
  },
  restrict(['src/http/**'], { patterns: [layer('db')], paths: [pgDriver] }),
  restrict(['src/domain/**'], { patterns: [layer('http'), fastify], paths: [pgDriver] }),
  restrict(['src/db/**'], { patterns: [layer('domain'), layer('http'), fastify] }),
  restrict(['src/shared/**'], { patterns: [layer('http'), layer('domain'), layer('db'), fastify], paths: [pgDriver] }),
  restrict(['src/app.ts', 'src/server.ts'], { patterns: [layer('domain'), layer('db')] }),
);
