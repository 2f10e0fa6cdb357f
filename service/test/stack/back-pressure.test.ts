// More requests at once than the service's connection pool holds, with Postgres healthy: the ones that wait
// too long for a connection get the service's back-pressure 503 ("too many requests …", Retry-After), never
// "the database is unavailable", which would send an operator looking for an outage that is not there.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type JsonResponse } from '../helpers/service-client.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

let t: TestStack;
before(async () => {
  // Two pooled connections, a 1 s wait for one, and provisioning on demand (each holds a connection for a
  // CREATE DATABASE, a fraction of a second): a burst of provisions queues, and connections come back while
  // the last ones wait, so Postgres is seen answering.
  t = await startTestStack({ serviceEnv: { LOG_PRETTY: 'false', DATABASE_POOL_SIZE: '2', DATABASE_CONNECT_TIMEOUT_MS: '1000', READY_POOL_SIZE: '0' } });
});
after(async () => {
  await t?.stop();
});

describe('a burst larger than the connection pool', () => {
  it('answers the requests that waited too long with a back-pressure 503 and Retry-After, and makes nothing for them', async () => {
    const answers: Array<{ name: string; response: JsonResponse }> = [];
    // Bursts until one request has waited too long (bounded: 10 bursts of 30).
    for (let burst = 0; burst < 10 && !answers.some(({ response }) => response.status === 503); burst++) {
      const names = Array.from({ length: 30 }, (_, i) => `burst_${burst}_${i}`);
      const responses = await Promise.all(names.map((name) => t.post('/provision', { app_name: name, admin_key: t.stack.adminKey })));
      names.forEach((name, i) => answers.push({ name, response: responses[i]! }));
    }
    const refused = answers.filter(({ response }) => response.status !== 201);
    assert.ok(refused.length > 0, 'some request waited longer than DATABASE_CONNECT_TIMEOUT_MS for a connection');
    for (const { name, response } of refused) {
      assert.equal(response.status, 503, `${name}: ${response.text}`);
      assert.equal(response.body.message, 'too many requests are running at once: retry in a few seconds', name);
      assert.ok(Number(response.headers.get('retry-after')) > 0, `${name}: Retry-After`);
    }
    // A refused request made nothing: its name is free, and provisioning it now works.
    const { name } = refused[0]!;
    assert.equal((await t.admin('GET', `/apps/${name}`)).status, 404);
    assert.equal((await t.post('/provision', { app_name: name, admin_key: t.stack.adminKey })).status, 201);
  });
});
