/**
 * IP allow-lists (CIDRs per RFC 4632 / RFC 4291): `ipAllowlist` refuses a request from outside
 * the listener's list with 403 `ip_not_allowed` and audits it; `keyIpAllowed` is the pure
 * check for a key's own `allowed_cidrs`, wired after authentication by the app.
 *
 * The client's address is the one `clientAddress` resolved (trusted proxies honoured); without
 * that middleware, the socket's peer. A request with no address at all is refused by a
 * non-empty list: an allow-list that cannot tell who is asking lets no one in.
 */
import type { Context, MiddlewareHandler } from 'hono';
import type { AuditEventInput } from '../audit/log.js';
import { clientIp, requestFacts } from '../http/client-info.js';
import type { Principal } from '../auth/principal.js';
import type { BulwarkEnv, BulwarkVariables } from '../http/context.js';
import { ApiError } from '../http/errors.js';
import { type CidrList, matchesAny, normalizeIp, parseCidrList, parseCidrListLenient } from './cidr.js';
import type { ClientIpVariables } from './client-ip.js';

export interface IpAllowlistEnv {
  Variables: Pick<BulwarkVariables, 'requestId'> & ClientIpVariables;
}

export interface IpAllowlistOptions {
  /** CIDRs or addresses allowed on this listener. Empty (the default): everyone. */
  allow?: readonly string[];
  audit: (event: AuditEventInput) => void;
  listener: 'public' | 'admin';
}

export function ipAllowlist(options: IpAllowlistOptions): MiddlewareHandler<IpAllowlistEnv> {
  const { allow = [], audit, listener } = options;
  const allowed = parseCidrList(allow, 'allow');
  if (typeof audit !== 'function') throw new Error('ipAllowlist: audit is required');
  if (listener !== 'public' && listener !== 'admin') throw new Error(`ipAllowlist: listener must be 'public' or 'admin', not ${JSON.stringify(listener)}`);

  if (allowed.entries.length === 0) {
    return async function ipAllowlistMiddleware(_c, next) {
      await next();
    };
  }
  return async function ipAllowlistMiddleware(c, next) {
    const ip = addressOf(c);
    if (matchesAny(allowed, ip)) return next();
    throw refuse(c, audit, ip, { listener }, 'on this listener');
  };
}

function addressOf(c: Context): string | undefined {
  const peer = clientIp(c);
  return peer === undefined ? undefined : (normalizeIp(peer) ?? peer);
}

function refuse(c: Context, audit: (event: AuditEventInput) => void, ip: string | undefined, details: Record<string, unknown>, where: string): ApiError {
  const principal = c.get('principal') as Principal | undefined;
  audit({
    type: 'http.ip_refused',
    outcome: 'denied',
    ...requestFacts(c),
    ip: ip ?? null,
    ...(principal ? { tenantId: principal.tenant, keyId: principal.keyId } : {}),
    details,
  });
  return new ApiError('ip_not_allowed', `Requests from ${ip ?? 'an unknown address'} are not allowed ${where}.`);
}

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
