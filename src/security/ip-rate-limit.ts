/**
 * `ipRateLimit` runs before authentication: a per-address request limit, and the brute-force
 * lockout kept by an `AuthFailureTracker` (./lockout.ts). A locked address is refused with
 * 429 `locked_out` even when it presents a valid key.
 */
import type { Context, MiddlewareHandler } from 'hono';
import { requestFacts } from '../http/client-info.js';
import type { BulwarkEnv } from '../http/context.js';
import { ApiError } from '../http/errors.js';
import type { AuthFailureTracker } from './lockout.js';
import { type Audit, type OnRefused, addressKey, crossedLimit, positiveInteger, refusalHeaders, retryAfterSeconds } from './rate-limit.js';
import type { RateLimitRule, RateLimiter } from './rate-limiter.js';

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
