// TrustedProxies (src/http/trusted-proxy.ts): whose X-Forwarded-For the service believes, with a stand-in for DNS
// lookups (names resolving, changing, failing on demand). End to end through nginx: test/stack/admin-auth.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TrustedProxies } from '../../src/http/trusted-proxy.js';
import { eventually } from '../helpers/conditions.js';

describe('TrustedProxies: whose X-Forwarded-For is believed (unit)', () => {
  const quiet = { info: () => {}, warn: () => {} };
  /** Lets every answer already given by a stand-in lookup be applied (one turn of the event loop, not a duration). */
  const settled = () => new Promise((resolve) => setImmediate(resolve));

  it('trusts only the immediate peer, and only a listed address, in IPv4 or IPv4-mapped IPv6 form', () => {
    const proxies = new TrustedProxies(['127.0.0.1', '::1', '10.1.2.3']);
    for (const address of ['127.0.0.1', '::ffff:127.0.0.1', '::FFFF:127.0.0.1', '::1', '10.1.2.3', '::ffff:10.1.2.3']) {
      assert.equal(proxies.trusts(address, 0), true, address);
    }
    assert.equal(proxies.trusts('127.0.0.1', 1), false, 'never an address beyond the peer');
    for (const address of ['127.0.0.2', '::ffff:127.0.0.2', '10.1.2.4', '192.168.1.1', 'fe80::1', 'nginx', '', undefined]) {
      assert.equal(proxies.trusts(address, 0), false, String(address));
    }
    assert.equal(new TrustedProxies([]).trusts('127.0.0.1', 0), false, 'an empty list trusts nobody');
  });

  it('resolves host names at start, and again (at most once a second) when an unknown peer sends X-Forwarded-For', async () => {
    let addresses = ['172.18.0.5'];
    let lookups = 0;
    let clock = 0;
    const lookup = async () => {
      lookups++;
      return addresses.map((address) => ({ address }));
    };
    const proxies = new TrustedProxies(['nginx'], { lookup, now: () => clock });
    assert.equal(proxies.trusts('172.18.0.5', 0), false, 'nothing before start');
    assert.equal(lookups, 0, 'and no lookup before start');
    proxies.start(quiet);
    try {
      assert.equal(await eventually(async () => proxies.trusts('172.18.0.5', 0), Boolean), true, 'resolved at start');

      clock += 60_000;
      addresses = ['172.18.0.9']; // nginx recreated with a new address
      const before = lookups;
      for (let i = 0; i < 50; i++) assert.equal(proxies.trusts('172.18.0.9', 0), false);
      await settled();
      assert.equal(lookups, before + 1, 'one lookup for a burst of requests');
      assert.equal(proxies.trusts('172.18.0.9', 0), true, 'the new address, once resolved');
      assert.equal(proxies.trusts('172.18.0.5', 0), false, 'and no longer the old one');

      clock += 1_000;
      proxies.trusts('10.9.9.9', 0);
      await settled();
      assert.equal(lookups, before + 2, 'a second later, another');
    } finally {
      proxies.stop();
    }
    const stopped = lookups;
    clock += 60_000;
    proxies.trusts('10.9.9.9', 0);
    await settled();
    assert.equal(lookups, stopped, 'no lookup once stopped');
  });

  it('trusts nothing for a name until it resolves, lets the newest answer win, and forgets a name that is gone', async () => {
    const calls: Array<{ resolve: (found: Array<{ address: string }>) => void; reject: (err: Error) => void }> = [];
    const lookup = () => new Promise<Array<{ address: string }>>((resolve, reject) => calls.push({ resolve, reject }));
    const warnings: string[] = [];
    let clock = 0;
    const proxies = new TrustedProxies(['127.0.0.1', 'nginx'], { lookup, now: () => clock });
    proxies.start({ info: () => {}, warn: (_fields: unknown, message?: string) => void warnings.push(String(message)) });
    try {
      assert.equal(calls.length, 1, 'looked up at start; this lookup never answers');
      assert.equal(proxies.trusts('127.0.0.1', 0), true, 'listed addresses are trusted meanwhile');
      assert.equal(proxies.trusts('172.18.0.5', 0), false);

      clock += 1_000;
      proxies.trusts('172.18.0.6', 0);
      assert.equal(calls.length, 3, 'an unknown peer asks again, although the first lookup hangs');
      calls[2]!.resolve([{ address: '172.18.0.6' }]);
      await settled();
      assert.equal(proxies.trusts('172.18.0.6', 0), true);
      calls[1]!.resolve([{ address: '172.18.0.5' }]); // an older lookup answering late
      await settled();
      assert.equal(proxies.trusts('172.18.0.5', 0), false, 'an older answer does not replace a newer one');
      assert.equal(proxies.trusts('172.18.0.6', 0), true);

      clock += 1_000;
      proxies.trusts('10.9.9.9', 0);
      calls.at(-1)!.reject(Object.assign(new Error('temporary failure'), { code: 'EAI_AGAIN' }));
      await settled();
      assert.equal(proxies.trusts('172.18.0.6', 0), true, 'a temporary failure keeps the last answer');
      assert.deepEqual(warnings, ['could not resolve a TRUSTED_PROXY host name']);

      clock += 1_000;
      proxies.trusts('10.9.9.9', 0);
      calls.at(-1)!.reject(Object.assign(new Error('no such name'), { code: 'ENOTFOUND' }));
      await settled();
      assert.equal(proxies.trusts('172.18.0.6', 0), false, 'a name that no longer exists is trusted with no address');
    } finally {
      proxies.stop();
    }
  });
});
