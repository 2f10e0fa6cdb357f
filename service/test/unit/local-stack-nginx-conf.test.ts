// The local stack's nginx.conf (scripts/lib/local-stack.ts): the repo's, with only what must differ changed.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LocalStack } from '../../scripts/lib/local-stack.js';

describe('local stack', () => {
  it("uses the repo's nginx.conf with only the upstream, the listen address and the file paths changed", () => {
    const stack = new LocalStack({
      stackDir: '/tmp/pgprov-unit',
      httpPort: 18088,
      pgPort: 15432,
      servicePort: 18080,
      poolerPort: 16432,
      postgresPassword: 'x',
      pgBinDir: '/nonexistent',
      pgOsUser: process.env.STACK_PG_OS_USER || 'postgres',
      serviceEnv: {},
      onServiceLine: () => {},
    });
    const config = stack.nginxConfig();
    assert.match(config, /server 127\.0\.0\.1:18080;/);
    assert.match(config, /listen 127\.0\.0\.1:18088;/);
    assert.doesNotMatch(config, /\/var\/(log|cache|run)\//);
    assert.doesNotMatch(config, /service:8080/);
    assert.match(config, /limit_req_zone/);
    assert.match(config, /server_tokens off/);
  });
});
