/**
 * Request rate limiting, before and after authentication (DESIGN.md, request pipeline):
 *
 * - `ipRateLimit` runs before authentication: a per-address request limit, and the brute-force
 *   lockout kept by an `AuthFailureTracker` that authentication reports its failures to. A
 *   locked address is refused with 429 `locked_out` even when it presents a valid key.
 * - `principalRateLimit` runs after authentication: per key and per tenant for the request's
 *   class (read, write, admin, …), and per key for configured route prefixes.
 *
 * Limited responses carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` for the
 * tightest applicable limit (draft-ietf-httpapi-ratelimit-headers); refusals add `Retry-After`
 * (RFC 9110 §10.2.3). Refusals are audited once per subject and window — the request that
 * crossed the limit — so a flood of refused requests cannot become a flood of audit writes.
 */
import type { Context, MiddlewareHandler } from 'hono';
import type { ServerResponse } from 'node:http';
import { isIPv6 } from 'node:net';
import type { AuditEventInput } from '../audit/log.js';
import { requestFacts } from '../http/client-info.js';
import type { BulwarkEnv } from '../http/context.js';
import { ApiError } from '../http/errors.js';
import type { RateLimitResult, RateLimitRule, RateLimiter } from './rate-limiter.js';

type Audit = (event: AuditEventInput) => void;

function positiveInteger(owner: string, name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new Error(`${owner}: ${name} must be an integer >= 1 (got ${String(value)})`);
  }
  return value;
}

/** Whole seconds, at least 1: a client told "retry after 0" would retry at once. */
function retryAfterSeconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000));
}

/** This call is the one that crossed the limit (counts are atomic, so exactly one call per window is). */
function crossedLimit(result: RateLimitResult, cost: number): boolean {
  return !result.allowed && result.consumed - cost <= result.limit;
}

function refusalHeaders(result: RateLimitResult): Record<string, string> {
  const reset = String(retryAfterSeconds(result.resetMs));
  return { 'Retry-After': reset, 'RateLimit-Limit': String(result.limit), 'RateLimit-Remaining': '0', 'RateLimit-Reset': reset };
}

/**
 * The subject of a per-address limit: an IPv4 address itself; for IPv6, its /64 — one
 * subscriber's network (RFC 6177 assigns at least that), whose 2^64 addresses would otherwise
 * each get their own allowance and their own ten guesses.
 */
export function addressKey(ip: string): string {
  if (!ip.includes(':') || !isIPv6(ip)) return ip;
  const address = ip.replace(/%.*$/, '').toLowerCase();
  const [head = '', tail] = address.split('::');
  const groups = head ? head.split(':') : [];
  if (tail !== undefined && groups.length < 4) {
    const tailGroups = tail ? tail.split(':') : [];
    // A trailing dotted IPv4 part holds two groups.
    const tailCount = tailGroups.length + (tailGroups.at(-1)?.includes('.') ? 1 : 0);
    for (let missing = 8 - groups.length - tailCount; missing > 0; missing--) groups.push('0');
    groups.push(...tailGroups);
  }
  return `${groups
    .slice(0, 4)
    .map((g) => parseInt(g, 16).toString(16))
    .join(':')}::/64`;
}

// --- brute-force lockout --------------------------------------------------------------------

export interface LockoutOptions {
  /** Failed authentications from one address… (default 10) */
  failures?: number;
  /** …within this many seconds lock it out (default 300). */
  windowSeconds?: number;
  /** The first lockout's length (default 300 s); each repeat doubles it… */
  lockSeconds?: number;
  /** …up to this (default 86 400 s). */
  maxLockSeconds?: number;
  /** How long lockouts are remembered for the doubling, from the last one (default 86 400 s). */
  repeatWindowSeconds?: number;
}

export interface AuthFailureTrackerOptions extends LockoutOptions {
  limiter: RateLimiter;
  audit: Audit;
}

export interface AuthFailureTracker {
  /** Milliseconds `ip` (its /64 for IPv6) stays locked out; 0 when it is not. */
  lockedForMs(ip: string): Promise<number>;
  /**
   * Counts one failed authentication from `ip` and locks the address out at the threshold.
   * Pass it to `authenticate` as its failure hook and await it before answering, so the next
   * request already sees the lockout. Successes do not reset the count: an attacker holding
   * one valid key could otherwise interleave it to guess without limit.
   */
  readonly recordFailure: (ip: string | undefined, c?: Context) => Promise<void>;
}

/** The n-th lockout (from 1) within the repeat window lasts `lockSeconds · 2^(n-1)`, capped. */
export function lockSecondsFor(repeat: number, lockSeconds: number, maxLockSeconds: number): number {
  return Math.min(lockSeconds * 2 ** Math.min(Math.max(repeat, 1) - 1, 40), maxLockSeconds);
}

/** Addresses whose lock a process remembers on its own; beyond this, expired ones go first, then the oldest. */
const MAX_KNOWN_LOCKS = 10_000;

export function authFailureTracker(options: AuthFailureTrackerOptions): AuthFailureTracker {
  const { limiter, audit, failures = 10, windowSeconds = 300, lockSeconds = 300, maxLockSeconds = 86_400, repeatWindowSeconds = 86_400 } = options;
  const owner = 'authFailureTracker';
  if (!limiter) throw new Error(`${owner}: limiter is required`);
  if (typeof audit !== 'function') throw new Error(`${owner}: audit is required`);
  positiveInteger(owner, 'failures', failures);
  positiveInteger(owner, 'windowSeconds', windowSeconds);
  positiveInteger(owner, 'lockSeconds', lockSeconds);
  positiveInteger(owner, 'maxLockSeconds', maxLockSeconds);
  positiveInteger(owner, 'repeatWindowSeconds', repeatWindowSeconds);
  if (maxLockSeconds < lockSeconds) throw new Error(`${owner}: maxLockSeconds must be >= lockSeconds`);

  const failureRule: RateLimitRule = { name: 'auth-failures', points: failures, durationSeconds: windowSeconds };
  // A lock is a count set with the lock's own expiry; any count means locked.
  const lockRule: RateLimitRule = { name: 'auth-lock', points: 0, durationSeconds: maxLockSeconds };
  const repeatRule: RateLimitRule = { name: 'auth-lock-repeat', points: 0, durationSeconds: repeatWindowSeconds };

  // Locks this process set or saw, kept beside the shared store: when Redis is away the
  // in-memory fallback cannot see the locks held there, and these still hold.
  const knownLocks = new Map<string, number>();
  const remember = (subject: string, untilMs: number) => {
    if (knownLocks.size >= MAX_KNOWN_LOCKS) {
      const now = Date.now();
      for (const [key, until] of knownLocks) if (until <= now) knownLocks.delete(key);
      if (knownLocks.size >= MAX_KNOWN_LOCKS) knownLocks.delete(knownLocks.keys().next().value as string);
    }
    knownLocks.set(subject, untilMs);
  };

  async function lockedForMs(ip: string): Promise<number> {
    const subject = addressKey(ip);
    const lock = await limiter.get(subject, lockRule);
    const shared = lock && lock.consumed > 0 ? lock.resetMs : 0;
    if (shared > 0) remember(subject, Date.now() + shared);
    const local = (knownLocks.get(subject) ?? 0) - Date.now();
    return Math.max(shared, local, 0);
  }

  async function recordFailure(ip: string | undefined, c?: Context): Promise<void> {
    if (ip === undefined) return;
    const subject = addressKey(ip);
    const counted = await limiter.consume(subject, failureRule);
    // Exactly one failure reaches the threshold (atomic count), so one lockout per crossing.
    if (counted.consumed !== failures) return;
    const repeat = ((await limiter.get(subject, repeatRule))?.consumed ?? 0) + 1;
    const seconds = lockSecondsFor(repeat, lockSeconds, maxLockSeconds);
    remember(subject, Date.now() + seconds * 1000);
    await Promise.all([
      limiter.set(subject, lockRule, repeat, seconds),
      limiter.set(subject, repeatRule, repeat, repeatWindowSeconds),
      // The next lockout needs `failures` new failures after this one ends.
      limiter.delete(subject, failureRule),
    ]);
    audit({
      type: 'auth.lockout',
      outcome: 'denied',
      ...(c ? requestFacts(c) : {}),
      ip,
      details: { failures: counted.consumed, windowSeconds, lockSeconds: seconds, repeat, ...(subject !== ip ? { network: subject } : {}) },
    });
  }

  return { lockedForMs, recordFailure };
}

// --- before authentication: per address ------------------------------------------------------

/**
 * Told of every refusal, by limit (`ip`, `lockout`, `key`, `tenant`, `route`). Audit events record
 * only the first refusal of each window, so a flood of refused requests cannot flood the
 * hash-chained audit log; this hook (a metric) counts all of them.
 */
export type OnRefused = (limit: string) => void;

export interface IpRateLimitOptions {
  onRefused?: OnRefused;
  limiter: RateLimiter;
  /** Requests per minute from one address, authenticated or not (default 1200). */
  perMinute?: number;
  /** The lockout that authentication reports failures to. */
  lockout: AuthFailureTracker;
  audit: Audit;
  /** The caller's address, as the rest of the pipeline sees it; `undefined` is not limited here. */
  clientIp: (c: Context) => string | undefined;
}

export function ipRateLimit(options: IpRateLimitOptions): MiddlewareHandler<BulwarkEnv> {
  const { limiter, perMinute = 1200, lockout, audit, clientIp, onRefused = () => {} } = options;
  if (!limiter) throw new Error('ipRateLimit: limiter is required');
  if (!lockout) throw new Error('ipRateLimit: lockout is required (an AuthFailureTracker)');
  if (typeof audit !== 'function') throw new Error('ipRateLimit: audit is required');
  if (typeof clientIp !== 'function') throw new Error('ipRateLimit: clientIp is required');
  const rule: RateLimitRule = { name: 'ip', points: positiveInteger('ipRateLimit', 'perMinute', perMinute), durationSeconds: 60 };

  return async function ipRateLimitMiddleware(c, next) {
    const ip = clientIp(c);
    // Only a non-TCP transport has no address; nothing to key a limit on.
    if (ip === undefined) return next();
    // Both lookups at once: one round trip to Redis.
    const [lockedMs, counted] = await Promise.all([lockout.lockedForMs(ip), limiter.consume(addressKey(ip), rule)]);
    if (lockedMs > 0) {
      // The lockout itself was audited when it began; each refused attempt is not.
      onRefused('lockout');
      throw new ApiError('locked_out', 'Too many failed authentication attempts from this address; try again later.', {
        'Retry-After': String(retryAfterSeconds(lockedMs)),
      });
    }
    if (!counted.allowed) {
      if (crossedLimit(counted, 1)) {
        audit({ type: 'rate_limit.exceeded', outcome: 'denied', ...requestFacts(c), ip, details: { limit: 'ip', rule: rule.name, perMinute: counted.limit } });
      }
      onRefused('ip');
      throw new ApiError('rate_limited', 'Too many requests from this address; slow down.', refusalHeaders(counted));
    }
    return next();
  };
}

// --- after authentication: per key, per tenant, per route ------------------------------------

/** A request's class; unknown classes are not limited here. */
export type RequestClass = 'read' | 'write' | 'admin' | 'llm' | (string & {});

export interface PrincipalRateLimitRules {
  /** Requests per minute per key, by class; merged over `DEFAULT_KEY_LIMITS`. `undefined` leaves the default. */
  key?: Readonly<Record<string, number | undefined>>;
  /** Requests per minute per tenant (all its keys together), by class; none by default. */
  tenant?: Readonly<Record<string, number | undefined>>;
  /** Requests per minute per key under a path prefix (whole segments); the longest match applies. */
  routes?: readonly { prefix: string; perMinute: number }[];
}

export interface PrincipalRateLimitOptions {
  onRefused?: OnRefused;
  limiter: RateLimiter;
  rules?: PrincipalRateLimitRules;
  /** Decides the request's class (default: GET, HEAD, OPTIONS → read; anything else → write). */
  classify?: (c: Context<BulwarkEnv>) => RequestClass;
  audit: Audit;
  /** The caller's address, for audit events only. */
  clientIp?: (c: Context) => string | undefined;
}

/**
 * Per key per minute. `llm` has none: the /v1 routes enforce their own request, token and
 * budget limits. Unknown classes are unlimited.
 */
export const DEFAULT_KEY_LIMITS: Readonly<Record<string, number>> = Object.freeze({ read: 100, write: 50, admin: 200 });

export function classifyByMethod(c: Context<BulwarkEnv>): RequestClass {
  const method = c.req.method;
  return method === 'GET' || method === 'HEAD' || method === 'OPTIONS' ? 'read' : 'write';
}

type LimitScope = 'key' | 'tenant' | 'route';

interface RouteRule {
  prefix: string;
  /** `prefix` + '/': a prefix matches whole segments only (`/api/message` not `/api/messages`). */
  under: string;
  rule: RateLimitRule;
}

interface NodeBindings {
  outgoing?: ServerResponse;
}

function classRules(owner: string, scope: 'key' | 'tenant', limits: Readonly<Record<string, number | undefined>>): Map<string, RateLimitRule> {
  const rules = new Map<string, RateLimitRule>();
  for (const [cls, perMinute] of Object.entries(limits)) {
    if (perMinute === undefined) continue;
    if (!/^[a-z0-9_-]+$/i.test(cls)) throw new Error(`${owner}: rules.${scope} class names are letters, digits, - and _ (got ${JSON.stringify(cls)})`);
    rules.set(cls, { name: `${scope}:${cls}`, points: positiveInteger(owner, `rules.${scope}.${cls}`, perMinute), durationSeconds: 60 });
  }
  return rules;
}

function withoutUndefined(limits: Readonly<Record<string, number | undefined>> = {}): Record<string, number> {
  const defined: Record<string, number> = {};
  for (const [cls, perMinute] of Object.entries(limits)) if (perMinute !== undefined) defined[cls] = perMinute;
  return defined;
}

/** The tighter of two results: a refusal over an allowance; the longest wait; the fewest left. */
function tighter(a: RateLimitResult, b: RateLimitResult): boolean {
  if (a.allowed !== b.allowed) return !a.allowed;
  if (!a.allowed) return a.resetMs > b.resetMs;
  return a.remaining < b.remaining || (a.remaining === b.remaining && a.resetMs > b.resetMs);
}

function setHeadersOnResponse(c: Context, limit: string, remaining: string, reset: string): void {
  let headers = c.res.headers;
  try {
    headers.set('RateLimit-Limit', limit);
  } catch {
    // A response passed through from fetch has immutable headers: copy it once.
    c.res = new Response(c.res.body, c.res);
    headers = c.res.headers;
    headers.set('RateLimit-Limit', limit);
  }
  headers.set('RateLimit-Remaining', remaining);
  headers.set('RateLimit-Reset', reset);
}

export function principalRateLimit(options: PrincipalRateLimitOptions): MiddlewareHandler<BulwarkEnv> {
  const owner = 'principalRateLimit';
  const { limiter, rules = {}, classify = classifyByMethod, audit, clientIp, onRefused = () => {} } = options;
  if (!limiter) throw new Error(`${owner}: limiter is required`);
  if (typeof audit !== 'function') throw new Error(`${owner}: audit is required`);
  if (typeof classify !== 'function') throw new Error(`${owner}: classify must be a function`);
  const keyRules = classRules(owner, 'key', { ...DEFAULT_KEY_LIMITS, ...withoutUndefined(rules.key) });
  const tenantRules = classRules(owner, 'tenant', rules.tenant ?? {});
  const routeRules: RouteRule[] = (rules.routes ?? []).map(({ prefix, perMinute }, i) => {
    if (typeof prefix !== 'string' || !prefix.startsWith('/') || /\s/.test(prefix)) {
      throw new Error(`${owner}: rules.routes[${i}].prefix must be a path starting with "/"`);
    }
    const trimmed = prefix.length > 1 ? prefix.replace(/\/+$/, '') : prefix;
    return {
      prefix: trimmed,
      under: trimmed === '/' ? '/' : `${trimmed}/`,
      rule: { name: `route:${trimmed}`, points: positiveInteger(owner, `rules.routes[${i}].perMinute`, perMinute), durationSeconds: 60 },
    };
  });
  // Longest first, so the first match is the most specific.
  routeRules.sort((a, b) => b.prefix.length - a.prefix.length);

  function routeRuleFor(path: string): RateLimitRule | undefined {
    for (const route of routeRules) if (path === route.prefix || path.startsWith(route.under)) return route.rule;
    return undefined;
  }

  return async function principalRateLimitMiddleware(c, next) {
    const principal = c.get('principal');
    if (!principal) throw new Error('principalRateLimit used before authenticate');
    const cls = classify(c);
    const keyRule = keyRules.get(cls);
    const tenantRule = tenantRules.get(cls);
    const routeRule = routeRules.length > 0 ? routeRuleFor(c.req.path) : undefined;
    if (!keyRule && !tenantRule && !routeRule) return next();

    // Started together (one round trip to Redis), awaited in turn.
    const byKey = keyRule && limiter.consume(principal.keyId, keyRule);
    const byTenant = tenantRule && limiter.consume(principal.tenant, tenantRule);
    const byRoute = routeRule && limiter.consume(principal.keyId, routeRule);
    let tightest: RateLimitResult | undefined;
    let scope: LimitScope = 'key';
    let rule: RateLimitRule | undefined;
    if (byKey) {
      tightest = await byKey;
      rule = keyRule;
    }
    if (byTenant) {
      const counted = await byTenant;
      if (!tightest || tighter(counted, tightest)) {
        tightest = counted;
        scope = 'tenant';
        rule = tenantRule;
      }
    }
    if (byRoute) {
      const counted = await byRoute;
      if (!tightest || tighter(counted, tightest)) {
        tightest = counted;
        scope = 'route';
        rule = routeRule;
      }
    }
    if (!tightest || !rule) return next();

    if (!tightest.allowed) {
      if (crossedLimit(tightest, 1)) {
        audit({
          type: 'rate_limit.exceeded',
          outcome: 'denied',
          tenantId: principal.tenant,
          keyId: principal.keyId,
          ...requestFacts(c),
          ...(clientIp ? { ip: clientIp(c) } : {}),
          details: { limit: scope, rule: rule.name, class: cls, perMinute: tightest.limit },
        });
      }
      onRefused(scope);
      const subject = scope === 'tenant' ? "This key's tenant" : 'This key';
      throw new ApiError('rate_limited', `${subject} has made too many requests; slow down.`, refusalHeaders(tightest));
    }

    const limit = String(tightest.limit);
    const remaining = String(tightest.remaining);
    const reset = String(Math.ceil(tightest.resetMs / 1000));
    // The LLM proxy writes straight to the Node socket; headers set here are merged into its writeHead.
    const outgoing = (c.env as NodeBindings | undefined)?.outgoing;
    if (outgoing && !outgoing.headersSent) {
      outgoing.setHeader('RateLimit-Limit', limit);
      outgoing.setHeader('RateLimit-Remaining', remaining);
      outgoing.setHeader('RateLimit-Reset', reset);
      return next();
    }
    await next();
    setHeadersOnResponse(c, limit, remaining, reset);
  };
}
