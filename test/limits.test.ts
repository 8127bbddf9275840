/**
 * The budget ledger and price arithmetic (src/proxy/limits.ts): reservations are all or
 * nothing, settle to actual usage, roll over with their windows, and start day and month
 * totals from what is stored.
 */
import { describe, expect, it } from 'vitest';
import { type BaselineLoader, BudgetLedger, type Subject, costOf, modelAllowed, priceFor, windowEnd, windowStart } from '../src/proxy/limits.js';

const key = (limits: Subject['limits']): Subject => ({ kind: 'key', id: 'k1', limits });
const tenant = (limits: Subject['limits']): Subject => ({ kind: 'tenant', id: 't1', limits });

function ledger(now: { t: number }, baseline: BaselineLoader = async () => 0) {
  return new BudgetLedger({ baseline, now: () => now.t });
}

describe('BudgetLedger', () => {
  it('refuses a reservation that would exceed a limit, with retry-after and rate-limit headers', async () => {
    const now = { t: Date.UTC(2026, 10, 25, 12, 0, 30) };
    const l = ledger(now);
    const first = await l.reserve([key({ requestsPerMinute: 1 })], { requests: 1, tokens: 0, usd: 0 });
    if (!first.ok) throw new Error('unreachable');
    first.settle({ requests: 1, tokens: 0, usd: 0 });
    const second = await l.reserve([key({ requestsPerMinute: 1 })], { requests: 1, tokens: 0, usd: 0 });
    expect(second).toMatchObject({ ok: false, rule: 'requestsPerMinute', limit: 1, retryAfterSeconds: 30 });
    if (second.ok) throw new Error('unreachable');
    expect(second.headers).toMatchObject({ 'retry-after': '30', 'anthropic-ratelimit-requests-limit': '1', 'anthropic-ratelimit-requests-remaining': '0', 'anthropic-ratelimit-requests-reset': '2026-11-25T12:01:00.000Z' });
  });

  it('counts reservations in flight, so concurrent calls cannot together overspend', async () => {
    const l = ledger({ t: Date.now() });
    const limits = { tokensPerDay: 1_000 };
    const results = await Promise.all(Array.from({ length: 10 }, () => l.reserve([key(limits)], { requests: 1, tokens: 300, usd: 0 })));
    expect(results.filter((r) => r.ok)).toHaveLength(3);
  });

  it('frees what a call did not use when it settles', async () => {
    const l = ledger({ t: Date.now() });
    const limits = { tokensPerDay: 1_000 };
    const a = await l.reserve([key(limits)], { requests: 1, tokens: 900, usd: 0 });
    expect((await l.reserve([key(limits)], { requests: 1, tokens: 200, usd: 0 })).ok).toBe(false);
    if (!a.ok) throw new Error('unreachable');
    a.settle({ requests: 1, tokens: 100, usd: 0 });
    a.settle({ requests: 1, tokens: 100, usd: 0 }); // a second settle changes nothing
    expect((await l.reserve([key(limits)], { requests: 1, tokens: 800, usd: 0 })).ok).toBe(true);
    expect((await l.reserve([key(limits)], { requests: 1, tokens: 200, usd: 0 })).ok).toBe(false);
  });

  it('reserves all subjects or none: a tenant refusal leaves the key untouched', async () => {
    const l = ledger({ t: Date.now() });
    const k = key({ requestsPerMinute: 5 });
    expect((await l.reserve([k, tenant({ requestsPerMinute: 1 })], { requests: 1, tokens: 0, usd: 0 })).ok).toBe(true);
    expect(await l.reserve([k, tenant({ requestsPerMinute: 1 })], { requests: 1, tokens: 0, usd: 0 })).toMatchObject({ ok: false, subject: { kind: 'tenant' } });
    // Only the first call counts against the key.
    for (let i = 0; i < 4; i++) expect((await l.reserve([k], { requests: 1, tokens: 0, usd: 0 })).ok).toBe(true);
    expect((await l.reserve([k], { requests: 1, tokens: 0, usd: 0 })).ok).toBe(false);
  });

  it('starts a new minute empty and a new month from the stored total', async () => {
    const now = { t: Date.UTC(2026, 10, 30, 23, 59, 59) };
    const loaded: string[] = [];
    const l = ledger(now, async (subject, metric, since) => {
      loaded.push(`${subject.id}:${metric}:${since.toISOString()}`);
      return 500;
    });
    const limits = { requestsPerMinute: 1, tokensPerMonth: 1_000 };
    expect((await l.reserve([key(limits)], { requests: 1, tokens: 400, usd: 0 })).ok).toBe(true);
    expect((await l.reserve([key(limits)], { requests: 1, tokens: 1, usd: 0 })).ok).toBe(false);
    now.t += 2_000; // 2026-12-01T00:00:01Z: a new minute and a new month
    expect((await l.reserve([key(limits)], { requests: 1, tokens: 500, usd: 0 })).ok).toBe(true);
    expect(loaded).toEqual(['k1:tokens:2026-11-01T00:00:00.000Z', 'k1:tokens:2026-12-01T00:00:00.000Z']);
  });

  it('enforces a dollar budget per day', async () => {
    const l = ledger({ t: Date.now() });
    const limits = { usdPerDay: 1 };
    expect((await l.reserve([key(limits)], { requests: 1, tokens: 0, usd: 0.6 })).ok).toBe(true);
    expect(await l.reserve([key(limits)], { requests: 1, tokens: 0, usd: 0.6 })).toMatchObject({ ok: false, rule: 'usdPerDay' });
  });
});

describe('windows', () => {
  it('align minutes, UTC days and UTC months', () => {
    const t = Date.UTC(2026, 1, 28, 13, 45, 12, 500);
    expect(new Date(windowStart('minute', t)).toISOString()).toBe('2026-02-28T13:45:00.000Z');
    expect(new Date(windowStart('day', t)).toISOString()).toBe('2026-02-28T00:00:00.000Z');
    expect(new Date(windowEnd('month', windowStart('month', t))).toISOString()).toBe('2026-03-01T00:00:00.000Z');
  });
});

describe('prices and models', () => {
  const table = { 'claude-*': { input: 1, output: 5 }, 'claude-sonnet-*': { input: 3, output: 15, cacheRead: 0.3 }, 'claude-sonnet-4-5': { input: 3, output: 15, cacheWrite: 3.75, cacheRead: 0.3 } };

  it('prefers the exact model, then the longest matching pattern', () => {
    expect(priceFor(table, 'claude-sonnet-4-5')).toBe(table['claude-sonnet-4-5']);
    expect(priceFor(table, 'claude-sonnet-4-6')).toBe(table['claude-sonnet-*']);
    expect(priceFor(table, 'claude-haiku-4-5')).toBe(table['claude-*']);
    expect(priceFor(table, 'gpt-4')).toBeUndefined();
  });

  it('costs every kind of token at its price per million', () => {
    const usage = { inputTokens: 1_000_000, outputTokens: 100_000, cacheCreationInputTokens: 200_000, cacheReadInputTokens: 1_000_000 };
    expect(costOf(usage, table['claude-sonnet-4-5'])).toBeCloseTo(3 + 1.5 + 0.75 + 0.3, 10);
    expect(costOf(usage, undefined)).toBe(0);
  });

  it('matches model allow-lists with * wildcards and refuses a missing model', () => {
    expect(modelAllowed(undefined, 'anything')).toBe(true);
    expect(modelAllowed(['claude-haiku-*'], 'claude-haiku-4-5')).toBe(true);
    expect(modelAllowed(['claude-haiku-*'], 'claude-sonnet-4-5')).toBe(false);
    expect(modelAllowed(['claude-haiku-*'], null)).toBe(false);
    expect(modelAllowed(['a.b'], 'aXb')).toBe(false);
  });
});

describe('hardening', () => {
  it('finds no price for a model named after an Object.prototype member', () => {
    expect(priceFor({ 'claude-*': { input: 1, output: 1 } }, 'constructor')).toBeUndefined();
    expect(priceFor({}, '__proto__')).toBeUndefined();
  });

  it('refuses a non-finite amount instead of letting NaN through', async () => {
    const l = ledger({ t: Date.now() });
    expect(await l.reserve([key({ usdPerDay: 0.01 })], { requests: 1, tokens: 0, usd: Number.NaN })).toMatchObject({ ok: false });
    expect((await l.reserve([key({ usdPerDay: 0.01 })], { requests: 1, tokens: 0, usd: 0.005 })).ok).toBe(true);
  });

  it('says retry in seconds, not at the end of the day, when only calls in flight fill a day budget', async () => {
    const l = ledger({ t: Date.UTC(2026, 10, 25, 1, 0, 0) });
    expect((await l.reserve([key({ tokensPerDay: 1_000 })], { requests: 1, tokens: 900, usd: 0 })).ok).toBe(true);
    expect(await l.reserve([key({ tokensPerDay: 1_000 })], { requests: 1, tokens: 900, usd: 0 })).toMatchObject({ ok: false, retryAfterSeconds: 2 });
  });
});
