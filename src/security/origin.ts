/**
 * Cross-site request defence, before CORS and authentication.
 *
 * `originCheck`: a browser names the page's origin in `Origin` (RFC 6454 §7, Fetch §3.2). A
 * request from a foreign or opaque (`null`) origin is refused with 403 when it could change
 * state or carries a credential; requests without `Origin` (CLIs, SDKs) are not browsers'
 * cross-site requests and pass. Preflights (`OPTIONS`) are CORS's to answer.
 *
 * Pure parsing (`normalizeOrigin`) is kept apart from the HTTP edge.
 */
import type { MiddlewareHandler } from 'hono';
import type { AuditEventInput } from '../audit/log.js';
import { requestFacts, requestHeader } from '../http/client-info.js';
import type { BulwarkEnv } from '../http/context.js';
import { ApiError } from '../http/errors.js';
import { parseHost, printable } from './host.js';

export interface OriginCheckOptions {
  /** Browser origins allowed to call Bulwark (`https://app.example.com`), as for CORS. */
  allowedOrigins: readonly string[];
  audit: (event: AuditEventInput) => void;
}

/**
 * The ASCII serialisation of an origin (RFC 6454 §6.2): `scheme://host[:port]`, lower case,
 * default port dropped. Undefined for anything else, including `null` and a URL with a path.
 */
export function normalizeOrigin(value: string): string | undefined {
  const text = value.trim();
  if (!/^https?:\/\/[^/?#\s]+\/?$/i.test(text)) return undefined;
  try {
    const url = new URL(text);
    if (url.username || url.password) return undefined;
    return url.origin;
  } catch {
    return undefined;
  }
}

/** Methods that must not change state (RFC 9110 §9.2.1); OPTIONS is CORS's. */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

export function originCheck(options: OriginCheckOptions): MiddlewareHandler<BulwarkEnv> {
  const { allowedOrigins, audit } = options;
  if (!Array.isArray(allowedOrigins)) throw new Error('originCheck: allowedOrigins must be a list of origins');
  if (typeof audit !== 'function') throw new Error('originCheck: audit is required');
  const allowed = new Set<string>();
  for (const entry of allowedOrigins) {
    const origin = normalizeOrigin(String(entry));
    if (!origin) throw new Error(`originCheck: allowedOrigins entry "${String(entry)}" is not an origin like https://app.example.com`);
    allowed.add(origin);
  }

  return async function originCheckMiddleware(c, next) {
    const origin = requestHeader(c, 'origin');
    if (origin === undefined || c.req.method === 'OPTIONS') return next();
    const credentialed = requestHeader(c, 'authorization') !== undefined || requestHeader(c, 'x-api-key') !== undefined || requestHeader(c, 'cookie') !== undefined;
    if (SAFE_METHODS.has(c.req.method) && !credentialed) return next();

    const normalized = normalizeOrigin(origin);
    if (normalized && (allowed.has(normalized) || sameOrigin(normalized, requestHeader(c, 'host')))) return next();

    const shown = printable(origin);
    audit({
      type: 'http.origin_refused',
      outcome: 'denied',
      ...requestFacts(c),
      details: { origin: shown, reason: credentialed ? 'credentialed' : 'state_changing' },
    });
    throw new ApiError('origin_not_allowed', `Requests from origin "${shown}" are not allowed; add it to BULWARK_CORS_ORIGINS if it is yours.`);
  };
}

/** Whether the origin names the host the request was sent to (its scheme is not compared). */
function sameOrigin(origin: string, hostHeader: string | undefined): boolean {
  if (hostHeader === undefined) return false;
  const host = parseHost(hostHeader);
  if (!host) return false;
  const url = new URL(origin);
  const defaultPort = url.protocol === 'https:' ? 443 : 80;
  const originPort = url.port === '' ? defaultPort : Number(url.port);
  const hostPort = host.port ?? defaultPort;
  return url.hostname === host.hostname && originPort === hostPort;
}
