// What the unit tests of the local stack's rendered configuration files (pgbouncer.ini, pgbackrest.conf) hold
// them to: the repo's file, which compose mounts as is, line for line, with only some settings' values changed.
import assert from 'node:assert/strict';

/** A configuration line's setting, or undefined for comments, blank lines and section headers. */
export type SettingOf = (line: string) => { key: string; value: string } | undefined;

/** The local file is the repo's line for line: comments, sections, every setting and its order; a changed line is still the same setting. */
export function assertSameLines(repo: string[], local: string[], setting: SettingOf): void {
  assert.equal(local.length, repo.length);
  for (const [i, line] of repo.entries()) {
    const ours = local[i]!;
    if (ours === line) continue;
    assert.equal(setting(ours)?.key, setting(line)?.key, `line ${i + 1}: ${line} became ${ours}`);
  }
}

/** Each setting whose line the local file changed, with its local value. */
export function changedSettings(repo: string[], local: string[], setting: SettingOf): Map<string, string> {
  const changed = new Map<string, string>();
  for (const [i, line] of repo.entries()) if (local[i] !== line) changed.set(setting(line)!.key, setting(local[i]!)!.value);
  return changed;
}

/** Each of `keys` is set in the local file and left as the repo's. */
export function assertKeptAsIs(local: string[], changed: Map<string, string>, keys: string[], setting: SettingOf): void {
  for (const key of keys) {
    assert.ok(!changed.has(key), `${key} is not changed`);
    assert.ok(local.some((line) => setting(line)?.key === key), `${key} is set`);
  }
}
