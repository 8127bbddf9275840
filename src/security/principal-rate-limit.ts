/**
 * `principalRateLimit` runs after authentication: per key and per tenant for the request's
 * class (read, write, admin, …), and per key for configured route prefixes. The tightest
 * applicable limit is reported in `RateLimit-*` headers (draft-ietf-httpapi-ratelimit-headers).
 */
import type { Context, MiddlewareHandler } from 'hono';
import type { ServerResponse } from 'node:http';
import { requestFacts } from '../http/client-info.js';
import type { BulwarkEnv } from '../http/context.js';
import { ApiError } from '../http/errors.js';
import { type Audit, type OnRefused, crossedLimit, positiveInteger, refusalHeaders } from './rate-limit.js';
import type { RateLimitResult, RateLimitRule, RateLimiter } from './rate-limiter.js';

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
