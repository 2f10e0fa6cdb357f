// The schedules' written form and the moments they name (src/shared/schedule.ts), and retention's decision
// (src/domain/backups/retention.ts): pure functions, no Postgres.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseEnv } from 'node:util';
import { parse } from 'yaml';
import { REPO_ROOT } from '../../scripts/lib/local-stack.js';
import type { BackupName } from '../../src/domain/backups/backup-files.js';
import { backupsToPrune, type RetentionPolicy } from '../../src/domain/backups/retention.js';
import { loadConfig } from '../../src/shared/config.js';
import { latestSlot, latestTurn, parseSchedule, ScheduleError, spreadOffset } from '../../src/shared/schedule.js';

const at = (iso: string) => Date.parse(iso);
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

describe('schedules', () => {
  it('reads off, every N s/m/h, daily HH:MM and weekly <day> HH:MM, all in UTC', () => {
    assert.deepEqual(parseSchedule('off'), { kind: 'off' });
    assert.deepEqual(parseSchedule('every 6h'), { kind: 'periodic', periodMs: 6 * HOUR, phaseMs: 0 });
    assert.deepEqual(parseSchedule(' Every 30m '), { kind: 'periodic', periodMs: 30 * 60_000, phaseMs: 0 });
    assert.deepEqual(parseSchedule('every 5s'), { kind: 'periodic', periodMs: 5_000, phaseMs: 0 });
    assert.deepEqual(parseSchedule('daily 03:30'), { kind: 'periodic', periodMs: DAY, phaseMs: 3.5 * HOUR });
    const weekly = parseSchedule('weekly sun 01:00');
    // 2026-12-06 was a Sunday.
    assert.equal(latestSlot(weekly, at('2026-12-07T12:00:00Z')), at('2026-12-06T01:00:00Z'));
    assert.equal(latestSlot(weekly, at('2026-12-06T00:59:59Z')), at('2026-11-29T01:00:00Z'));
  });

  it('refuses anything else with a message that says what to write', () => {
    for (const text of ['', 'hourly', 'every', 'every 0h', 'every 6', 'every 6d', 'daily 24:00', 'daily 3:00', 'weekly sunday 01:00', 'weekly sun', 'daily 03:00 extra']) {
      assert.throws(() => parseSchedule(text), ScheduleError, text);
    }
    assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'x', BACKUP_SCHEDULE: 'daily 25:00' }), /BACKUP_SCHEDULE is invalid: "daily 25:00": "25:00" is not a time of day/);
    assert.throws(() => loadConfig({ POSTGRES_PASSWORD: 'x', OFFSITE_SCHEDULE: 'sometimes' }), /OFFSITE_SCHEDULE is invalid/);
  });

  it('names the latest slot at or before now', () => {
    const daily = parseSchedule('daily 03:00');
    assert.equal(latestSlot(daily, at('2026-12-07T03:00:00Z')), at('2026-12-07T03:00:00Z'));
    assert.equal(latestSlot(daily, at('2026-12-07T02:59:59Z')), at('2026-12-06T03:00:00Z'));
    assert.equal(latestSlot(parseSchedule('every 6h'), at('2026-12-07T17:59:00Z')), at('2026-12-07T12:00:00Z'));
    assert.equal(latestSlot(parseSchedule('off'), Date.now()), undefined);
  });

  it("spreads 2,000 apps' turns evenly over the window, each app at the same point of every slot", () => {
    const window = 2 * HOUR;
    const buckets = new Array<number>(10).fill(0);
    for (let i = 0; i < 2000; i++) {
      const offset = spreadOffset(`app_${i}`, window);
      assert.ok(offset >= 0 && offset < window);
      buckets[Math.floor(offset / (window / 10))]!++;
    }
    for (const count of buckets) assert.ok(count > 140 && count < 260, `bucket of ${count} out of 2,000 (200 expected)`);
    const daily = parseSchedule('daily 03:00');
    const turn = latestTurn(daily, 'shop', window, at('2026-12-07T12:00:00Z'))!;
    assert.equal(turn - at('2026-12-07T03:00:00Z'), spreadOffset('shop', window));
    assert.equal(latestTurn(daily, 'shop', window, at('2026-12-08T12:00:00Z'))! - turn, DAY);
    // Before its offset has come, the app's turn is still yesterday's.
    assert.equal(latestTurn(daily, 'shop', window, at('2026-12-07T03:00:00Z') + spreadOffset('shop', window) - 1), turn - DAY);
  });

  it('caps the spread at the period, so every slot gets its turn', () => {
    const every = parseSchedule('every 10s');
    for (let i = 0; i < 100; i++) {
      const now = at('2026-12-07T12:00:00Z') + i * 777;
      const turn = latestTurn(every, `app_${i}`, 2 * HOUR, now)!;
      assert.ok(turn <= now && now - turn < 10_000);
    }
  });
});

describe('retention', () => {
  const NOW = at('2026-12-07T12:00:00Z');
  const name = (app: string, incarnation: string | null, daysAgo: number): BackupName => {
    const created = new Date(NOW - daysAgo * DAY).toISOString();
    const stamp = created.replace(/[-:.]/g, '');
    return { app_name: app, incarnation, created_at: created, file: `app_${app}-${incarnation ? `${incarnation}-` : ''}${stamp}.dump` };
  };
  const policy = (keepLast: number, keepDays: number, deletedAppGraceDays = 30): RetentionPolicy => ({ keepLast, keepDays, deletedAppGraceDays });
  const live = new Map([['shop', 'aaaaaaaaaaaaaaaa']]);
  const shop = [0, 1, 2, 3, 4, 5, 10].map((days) => name('shop', 'aaaaaaaaaaaaaaaa', days));
  const pruned = (decisions: ReturnType<typeof backupsToPrune>) => decisions.map((d) => d.backup.file).sort();

  it('keeps the newest N of a live app', () => {
    assert.deepEqual(pruned(backupsToPrune(shop, live, policy(3, 0), NOW)), shop.slice(3).map((b) => b.file).sort());
  });

  it('keeps every dump younger than N days, or among the newest N, whichever keeps more', () => {
    assert.deepEqual(pruned(backupsToPrune(shop, live, policy(0, 4), NOW)), shop.slice(4).map((b) => b.file).sort());
    assert.deepEqual(pruned(backupsToPrune(shop, live, policy(6, 2), NOW)), [shop[6]!.file]);
  });

  it('never removes the newest dump, however old, and nothing when both rules are off', () => {
    const old = [name('shop', 'aaaaaaaaaaaaaaaa', 400), name('shop', 'aaaaaaaaaaaaaaaa', 500)];
    assert.deepEqual(pruned(backupsToPrune(old, live, policy(0, 1), NOW)), [old[1]!.file]);
    assert.deepEqual(pruned(backupsToPrune(old, live, policy(1, 0), NOW)), [old[1]!.file]);
    assert.deepEqual(backupsToPrune(shop, live, policy(0, 0), NOW), []);
  });

  it("keeps a deleted app's dumps for the grace period after its last one, then removes them all", () => {
    const earlier = [name('shop', 'bbbbbbbbbbbbbbbb', 31), name('shop', 'bbbbbbbbbbbbbbbb', 40)];
    const recent = [name('gone', 'cccccccccccccccc', 29), name('gone', 'cccccccccccccccc', 90)];
    const decisions = backupsToPrune([...shop, ...earlier, ...recent], live, policy(100, 0, 30), NOW);
    assert.deepEqual(pruned(decisions), earlier.map((b) => b.file).sort());
    assert.ok(decisions.every((d) => d.reason === 'deleted_app_grace_expired'));
    assert.deepEqual(backupsToPrune(earlier, live, policy(100, 0, 0), NOW), [], 'a grace of 0 keeps them for ever');
  });

  it('never removes dumps named before incarnations', () => {
    assert.deepEqual(backupsToPrune([name('shop', null, 900), name('shop', null, 1000)], live, policy(1, 0, 1), NOW), []);
  });
});

describe("the schedules' settings in compose and .env", () => {
  const SETTINGS = ['BACKUP_SCHEDULE', 'BACKUP_SPREAD_MINUTES', 'BACKUP_KEEP_LAST', 'BACKUP_KEEP_DAYS', 'DELETED_APP_BACKUP_GRACE_DAYS', 'CLUSTER_BACKUP_SCHEDULE', 'CLUSTER_FULL_BACKUP_EVERY_DAYS', 'OFFSITE_SCHEDULE'] as const;

  it("reach compose's service from .env, with the service's own defaults, which .env shows", () => {
    const compose = parse(readFileSync(join(REPO_ROOT, 'docker-compose.yml'), 'utf8')) as { services: { service: { environment: Record<string, string> } } };
    const environment = compose.services.service.environment;
    const dotEnv = parseEnv(readFileSync(join(REPO_ROOT, '.env'), 'utf8'));
    const defaults = loadConfig({ POSTGRES_PASSWORD: 'x' });
    for (const name of SETTINGS) {
      assert.equal(environment[name], `\${${name}:-${defaults[name]}}`, `docker-compose.yml passes ${name} with the service's default`);
      assert.equal(dotEnv[name], String(defaults[name]), `.env shows ${name}'s default`);
    }
  });
});
