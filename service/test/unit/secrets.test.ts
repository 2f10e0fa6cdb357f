// Admin keys, app passwords, the pinned key file and the SCRAM verifier (src/shared/secrets.ts).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { AdminKeyFileError, adminKeyDigest, isAdminKey, loadPinnedAdminKey, matchesAdminKey, newAdminKey, newAppPassword, scramSha256Verifier } from '../../src/shared/secrets.js';

describe('secrets', () => {
  it('makes admin keys of sk_ and 40 alphanumerics that grep -oP "sk_\\w+" takes whole', () => {
    const key = newAdminKey();
    assert.match(key, /^sk_[A-Za-z0-9]{40}$/);
    assert.equal(/sk_\w+/.exec(`🔑 ADMIN KEY: ${key}"}`)?.[0], key);
    assert.notEqual(newAdminKey(), key);
  });

  it('makes app passwords of 32 alphanumerics', () => {
    assert.match(newAppPassword(), /^[A-Za-z0-9]{32}$/);
    assert.notEqual(newAppPassword(), newAppPassword());
  });

  it('accepts only the exact admin key', () => {
    const key = newAdminKey();
    assert.equal(isAdminKey(key, key), true);
    assert.equal(isAdminKey(key.slice(0, -1), key), false);
    assert.equal(isAdminKey(`${key}x`, key), false);
    assert.equal(isAdminKey('', key), false);
    assert.equal(isAdminKey(undefined, key), false);
  });

  it('reads a pinned admin key file: sha256:<hex> of the key, or the key itself', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgprov-unit-key-'));
    try {
      const key = newAdminKey();
      const hex = createHash('sha256').update(key).digest('hex');
      const file = (name: string, content: string) => {
        const path = join(dir, name);
        writeFileSync(path, content);
        return path;
      };
      for (const [label, path, form] of [
        ['hash', file('hash', `sha256:${hex}\n`), 'sha256'],
        ['hash in capitals, CRLF', file('upper', `SHA256:${hex.toUpperCase()}\r\n`), 'sha256'],
        ['the key', file('key', `${key}\n`), 'key'],
        ['the key, no newline', file('key-bare', key), 'key'],
      ] as const) {
        const pinned = loadPinnedAdminKey(path);
        assert.equal(pinned.form, form, label);
        assert.equal(matchesAdminKey(key, pinned), true, label);
        assert.equal(matchesAdminKey(`${key}x`, pinned), false, label);
        assert.equal(matchesAdminKey(hex, pinned), false, `${label}: the hash is not the key`);
        assert.equal(matchesAdminKey(undefined, pinned), false, label);
      }
      assert.deepEqual(adminKeyDigest(key), loadPinnedAdminKey(join(dir, 'hash')).digest);

      const refusals: Array<[string, string, RegExp]> = [
        ['missing', join(dir, 'nothing-here'), /cannot be read \(ENOENT\)/],
        ['a directory', dir, /cannot be read \(EISDIR\)/],
        ['empty', file('empty', ''), /is empty/],
        ['blank', file('blank', '  \n'), /is empty/],
        ['hash too short', file('short', `sha256:${hex.slice(2)}`), /sha256: followed by exactly 64 hexadecimal digits/],
        ['hash not hex', file('not-hex', `sha256:${'g'.repeat(64)}`), /sha256: followed by exactly 64 hexadecimal digits/],
        ['bare hash', file('bare', hex), /neither sha256:<64 hex digits> nor a key sk_/],
        ['a short key', file('short-key', 'sk_abc'), /neither/],
        ['a key with a space', file('spaced', `${key} x`), /neither/],
        ['two keys', file('two', `${key}\n${key}\n`), /neither/],
      ];
      for (const [label, path, reason] of refusals) {
        assert.throws(
          () => loadPinnedAdminKey(path),
          (err: Error) => err instanceof AdminKeyFileError && err.message.startsWith(`ADMIN_KEY_FILE=${path} `) && reason.test(err.message) && !err.message.includes(key) && !err.message.includes(hex.slice(2)),
          label,
        );
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('computes the SCRAM-SHA-256 verifier Postgres computes (RFC 7677 shape, deterministic for a salt)', async () => {
    const salt = Buffer.alloc(16, 7);
    const verifier = await scramSha256Verifier('pencil', salt);
    assert.match(verifier, /^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}$/);
    assert.equal(await scramSha256Verifier('pencil', salt), verifier);
    assert.notEqual(await scramSha256Verifier('pencil'), verifier);
    assert.ok(!verifier.includes('pencil'));
  });
});
