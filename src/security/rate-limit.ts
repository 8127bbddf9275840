/**
 * What the three rate-limiting layers share (DESIGN.md, request pipeline): the brute-force
 * lockout (./lockout.ts), `ipRateLimit` before authentication (./ip-rate-limit.ts) and
 * `principalRateLimit` after it (./principal-rate-limit.ts).
 *
 * Limited responses carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` for the
 * tightest applicable limit (draft-ietf-httpapi-ratelimit-headers); refusals add `Retry-After`
 * (RFC 9110 §10.2.3). Refusals are audited once per subject and window — the request that
 * crossed the limit — so a flood of refused requests cannot become a flood of audit writes.
 */
import { isIPv6 } from 'node:net';
import type { AuditEventInput } from '../audit/log.js';
import type { RateLimitResult } from './rate-limiter.js';

export type Audit = (event: AuditEventInput) => void;

export function positiveInteger(owner: string, name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new Error(`${owner}: ${name} must be an integer >= 1 (got ${String(value)})`);
  }
  return value;
}

/** Whole seconds, at least 1: a client told "retry after 0" would retry at once. */
export function retryAfterSeconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000));
}

/** This call is the one that crossed the limit (counts are atomic, so exactly one call per window is). */
export function crossedLimit(result: RateLimitResult, cost: number): boolean {
  return !result.allowed && result.consumed - cost <= result.limit;
}

export function refusalHeaders(result: RateLimitResult): Record<string, string> {
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

/**
 * Told of every refusal, by limit (`ip`, `lockout`, `key`, `tenant`, `route`). Audit events record
 * only the first refusal of each window, so a flood of refused requests cannot flood the
 * hash-chained audit log; this hook (a metric) counts all of them.
 */
export type OnRefused = (limit: string) => void;
