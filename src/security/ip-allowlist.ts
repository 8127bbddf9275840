/**
 * Per-listener IP allow-list (CIDRs per RFC 4632 / RFC 4291): `ipAllowlist` refuses a request
 * from outside the listener's list with 403 `ip_not_allowed` and audits it.
 *
 * The client's address is the one `clientAddress` resolved (trusted proxies honoured); without
 * that middleware, the socket's peer. A request with no address at all is refused by a
 * non-empty list: an allow-list that cannot tell who is asking lets no one in.
 * `addressOf` and `refuse` are shared with the per-key list (./key-ip-allowlist.ts).
 */
import type { Context, MiddlewareHandler } from 'hono';
import type { AuditEventInput } from '../audit/log.js';
import { clientIp, requestFacts } from '../http/client-info.js';
import type { Principal } from '../auth/principal.js';
import type { BulwarkVariables } from '../http/context.js';
import { ApiError } from '../http/errors.js';
import { matchesAny, normalizeIp, parseCidrList } from './cidr.js';
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

export function addressOf(c: Context): string | undefined {
  const peer = clientIp(c);
  return peer === undefined ? undefined : (normalizeIp(peer) ?? peer);
}

export function refuse(c: Context, audit: (event: AuditEventInput) => void, ip: string | undefined, details: Record<string, unknown>, where: string): ApiError {
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
