/**
 * Limits and budgets for `/v1` calls, per key and per tenant: requests and tokens per minute,
 * tokens per day and per month, US dollars per day and per month, and a model allow-list.
 *
 * The ledger reserves before a call — the request, the estimated input tokens plus
 * `max_tokens`, and what that would cost — and settles on the actual usage when the call ends,
 * so concurrent calls cannot together overspend a budget that each alone would fit. Minute
 * windows are fixed (aligned to the minute); day and month windows are UTC calendar periods.
 * Day and month totals start from what the `requests` table already holds, so a restart does
 * not reset a budget.
 */
import type { z } from 'zod';
import { type LimitSetSchema, type PriceSchema } from '../config/schema.js';

export type LimitSet = z.infer<typeof LimitSetSchema>;
export type Price = z.infer<typeof PriceSchema>;
/** Model name or pattern (`*` wildcard) → price. The most specific (longest) matching pattern wins. */
export type PriceTable = Readonly<Record<string, Price>>;

export interface TokenUsage {
  inputTokens: number;
  outputTokens: number;
  cacheCreationInputTokens: number;
  cacheReadInputTokens: number;
}

function globToRegExp(pattern: string): RegExp {
  return new RegExp(`^${pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
}

export function modelAllowed(patterns: readonly string[] | undefined, model: string | null): boolean {
  if (!patterns) return true;
  if (!model) return false;
  return patterns.some((p) => globToRegExp(p).test(model));
}

export function priceFor(table: PriceTable, model: string | null): Price | undefined {
  if (!model) return undefined;
  // Own keys only: a model named "constructor" must not find Object.prototype's.
  if (Object.hasOwn(table, model)) return table[model];
  const matches = Object.keys(table).filter((p) => p.includes('*') && globToRegExp(p).test(model));
  matches.sort((a, b) => b.length - a.length);
  return matches[0] ? table[matches[0]] : undefined;
}

/** Dollars for a usage at a price; cache writes and reads fall back to the input price. */
export function costOf(usage: TokenUsage, price: Price | undefined): number {
  if (!price) return 0;
  const perToken = (perMillion: number) => perMillion / 1_000_000;
  return (
    usage.inputTokens * perToken(price.input) +
    usage.cacheCreationInputTokens * perToken(price.cacheWrite ?? price.input) +
    usage.cacheReadInputTokens * perToken(price.cacheRead ?? price.input) +
    usage.outputTokens * perToken(price.output)
  );
}

/** Every token counts against token limits: input, cache writes, cache reads and output. */
export function totalTokens(usage: TokenUsage): number {
  return usage.inputTokens + usage.cacheCreationInputTokens + usage.cacheReadInputTokens + usage.outputTokens;
}

export type Window = 'minute' | 'day' | 'month';
type Metric = 'requests' | 'tokens' | 'usd';

interface Rule {
  metric: Metric;
  window: Window;
  limit: number;
  name: keyof LimitSet;
}

function rulesOf(limits: LimitSet): Rule[] {
  const rules: Rule[] = [];
  const add = (name: keyof LimitSet, metric: Metric, window: Window) => {
    const limit = limits[name];
    if (typeof limit === 'number') rules.push({ metric, window, limit, name });
  };
  add('requestsPerMinute', 'requests', 'minute');
  add('tokensPerMinute', 'tokens', 'minute');
  add('tokensPerDay', 'tokens', 'day');
  add('tokensPerMonth', 'tokens', 'month');
  add('usdPerDay', 'usd', 'day');
  add('usdPerMonth', 'usd', 'month');
  return rules;
}

export function windowStart(window: Window, now: number): number {
  const d = new Date(now);
  if (window === 'minute') return Math.floor(now / 60_000) * 60_000;
  if (window === 'day') return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate());
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
}

export function windowEnd(window: Window, start: number): number {
  if (window === 'minute') return start + 60_000;
  const d = new Date(start);
  if (window === 'day') return start + 86_400_000;
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
}

/** A subject of limits: a key or a tenant, with its limit set. */
export interface Subject {
  kind: 'key' | 'tenant';
  id: string;
  limits: LimitSet;
}

export interface Amount {
  requests: number;
  tokens: number;
  usd: number;
}

export interface Refusal {
  ok: false;
  subject: Subject;
  rule: keyof LimitSet;
  limit: number;
  retryAfterSeconds: number;
  /** Headers for the 429 (Anthropic's `anthropic-ratelimit-*` names plus `retry-after`). */
  headers: Record<string, string>;
}

export interface Reservation {
  ok: true;
  /** Headers describing what remains, for a successful response. */
  headers: Record<string, string>;
  settle(actual: Amount): void;
}

/** Loads what a subject already used in a window (from the requests table) when first needed. */
export type BaselineLoader = (subject: Subject, metric: 'tokens' | 'usd', since: Date) => Promise<number>;

interface Counter {
  start: number;
  used: number;
  reserved: number;
}

export class BudgetLedger {
  readonly #counters = new Map<string, Counter>();
  readonly #baseline: BaselineLoader;
  readonly #now: () => number;

  constructor(options: { baseline: BaselineLoader; now?: () => number }) {
    this.#baseline = options.baseline;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Reserves `estimate` against every rule of every subject, all or nothing: if one would be
   * exceeded, nothing is reserved and the refusal names the first rule that fails.
   */
  async reserve(subjects: readonly Subject[], estimate: Amount): Promise<Reservation | Refusal> {
    const now = this.#now();
    // Load every counter first (a new day or month window reads the stored total)...
    const checks: { subject: Subject; rule: Rule; counter: Counter; amount: number; reset: number }[] = [];
    for (const subject of subjects) {
      for (const rule of rulesOf(subject.limits)) {
        const counter = await this.#counter(subject, rule, now);
        checks.push({ subject, rule, counter, amount: estimate[rule.metric], reset: windowEnd(rule.window, counter.start) });
      }
    }
    // ...then check and reserve with no await in between, so concurrent calls cannot both pass.
    for (const check of checks) {
      const { counter, rule, amount, reset } = check;
      // A non-finite amount (a bug upstream of here) is refused, never let through as NaN.
      if (!Number.isFinite(amount) || counter.used + counter.reserved + amount > rule.limit) {
        // Only calls in flight fill it: they settle within seconds, not at the window's end.
        const inFlightOnly = Number.isFinite(amount) && counter.used + amount <= rule.limit;
        const retryAfterSeconds = inFlightOnly ? 2 : Math.max(1, Math.ceil((reset - now) / 1000));
        const remaining = checks.map((c) => ({ rule: c.rule, left: c.rule.limit - c.counter.used - c.counter.reserved, reset: c.reset }));
        return { ok: false, subject: check.subject, rule: rule.name, limit: rule.limit, retryAfterSeconds, headers: this.#headers(remaining, retryAfterSeconds) };
      }
    }
    for (const check of checks) check.counter.reserved += check.amount;
    let settled = false;
    return {
      ok: true,
      headers: this.#headers(checks.map((c) => ({ rule: c.rule, left: c.rule.limit - c.counter.used - c.counter.reserved, reset: c.reset }))),
      settle: (actual) => {
        if (settled) return;
        settled = true;
        for (const check of checks) {
          check.counter.reserved -= check.amount;
          const spent = actual[check.rule.metric];
          check.counter.used += Number.isFinite(spent) ? spent : check.amount;
        }
      },
    };
  }

  async #counter(subject: Subject, rule: Rule, now: number): Promise<Counter> {
    const start = windowStart(rule.window, now);
    const key = `${subject.kind}:${subject.id}|${rule.metric}|${rule.window}`;
    const existing = this.#counters.get(key);
    if (existing && existing.start === start) return existing;
    // A new window: minute windows start empty; day and month ones from what is stored.
    let used = 0;
    if (rule.window !== 'minute' && rule.metric !== 'requests') used = await this.#baseline(subject, rule.metric, new Date(start));
    const again = this.#counters.get(key);
    if (again && again.start === start) return again; // another request loaded it meanwhile
    const counter = { start, used, reserved: 0 };
    this.#counters.set(key, counter);
    return counter;
  }

  #headers(items: { rule: Rule; left: number; reset: number }[], retryAfterSeconds?: number): Record<string, string> {
    const headers: Record<string, string> = {};
    // The tightest rule of each kind is what a client should pace itself by.
    for (const metric of ['requests', 'tokens'] as const) {
      const tightest = items.filter((i) => i.rule.metric === metric).sort((a, b) => a.left - b.left)[0];
      if (!tightest) continue;
      headers[`anthropic-ratelimit-${metric}-limit`] = String(tightest.rule.limit);
      headers[`anthropic-ratelimit-${metric}-remaining`] = String(Math.max(0, Math.floor(tightest.left)));
      headers[`anthropic-ratelimit-${metric}-reset`] = new Date(tightest.reset).toISOString();
    }
    if (retryAfterSeconds !== undefined) headers['retry-after'] = String(retryAfterSeconds);
    return headers;
  }
}
