/**
 * Per-key IP allow-list (CIDRs per RFC 4632 / RFC 4291): `keyIpAllowlist`, wired after
 * authentication by the app, refuses a key used from outside its own `allowed_cidrs` with 403
 * `ip_not_allowed` and audits it; `keyIpAllowed` is the pure check, also used at login.
 */
import type { MiddlewareHandler } from 'hono';
import type { AuditEventInput } from '../audit/log.js';
import type { BulwarkEnv } from '../http/context.js';
import { type CidrList, matchesAny, parseCidrListLenient } from './cidr.js';
import { addressOf, refuse } from './ip-allowlist.js';

/**
 * After authentication: a key with its own allowed CIDRs (`keys create --allow-ip`) works only
 * from those addresses, on every listener.
 */
export function keyIpAllowlist(options: { audit: (event: AuditEventInput) => void }): MiddlewareHandler<BulwarkEnv> {
  const { audit } = options;
  if (typeof audit !== 'function') throw new Error('keyIpAllowlist: audit is required');
  return async function keyIpAllowlistMiddleware(c, next) {
    const cidrs = c.get('principal')?.allowedCidrs;
    if (!cidrs || cidrs.length === 0) return next();
    const ip = addressOf(c);
    if (keyIpAllowed(cidrs, ip)) return next();
    throw refuse(c, audit, ip, { listener: 'key' }, 'for this key');
  };
}

/** Parsed per-key lists, keyed by their text: keys are few, their lists rarely change. */
const keyListCache = new Map<string, CidrList>();
const KEY_LIST_CACHE_SIZE = 1000;

/**
 * Whether a key with `allowedCidrs` (the `api_keys.allowed_cidrs` column) may be used from
 * `ip`. An empty list allows every address. An entry that does not parse matches nothing, so
 * a corrupt list fails closed instead of throwing on the request path.
 */
export function keyIpAllowed(allowedCidrs: readonly string[] | null | undefined, ip: string | undefined): boolean {
  if (!allowedCidrs || allowedCidrs.length === 0) return true;
  const cacheKey = JSON.stringify(allowedCidrs);
  let list = keyListCache.get(cacheKey);
  if (!list) {
    list = parseCidrListLenient(allowedCidrs).list;
    if (keyListCache.size >= KEY_LIST_CACHE_SIZE) keyListCache.delete(keyListCache.keys().next().value as string);
    keyListCache.set(cacheKey, list);
  }
  return matchesAny(list, ip);
}
