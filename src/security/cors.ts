/**
 * CORS for browser clients (Fetch standard §3.2, "CORS protocol"): an allow-list of exact
 * origins, never `*`, because browser clients send credentials (`Authorization`, cookies) and
 * a wildcard would hand every site the caller's session.
 *
 * An allowed origin is echoed in `Access-Control-Allow-Origin` with credentials allowed and
 * the headers clients need to read exposed; every response carries `Vary: Origin` (Fetch §3.2.5,
 * "CORS protocol and HTTP caches") so a shared cache never serves one origin's answer to another.
 * Preflights are answered here, before authentication (a browser sends no credential on them):
 * 204 for an allowed origin, 403 `origin_not_allowed` without any CORS header otherwise.
 *
 * The headers also reach responses the proxy writes straight to Node's `ServerResponse`: they
 * are put there with `setHeader` before the route runs (see headers.ts).
 */
import type { MiddlewareHandler } from 'hono';
import { requestHeader } from '../http/client-info.js';
import type { BulwarkEnv } from '../http/context.js';
import { ApiError } from '../http/errors.js';
import { appendNodeVary, editResponseHeaders, nodeResponse, sentDirectly, withVary } from './headers.js';
import { normalizeOrigin } from './origin.js';

export interface CorsOptions {
  /** Browser origins allowed to call Bulwark, from BULWARK_CORS_ORIGINS (`https://app.example.com`). */
  origins: readonly string[];
  /** How long a browser may cache a preflight answer (`Access-Control-Max-Age`); 10 minutes. */
  maxAgeSeconds?: number;
}

const ALLOW_METHODS = 'GET, POST, PUT, PATCH, DELETE, OPTIONS';

/** Request headers Bulwark's API, MCP (Streamable HTTP) and the Anthropic-compatible proxy read. */
const ALLOW_HEADERS = [
  'Authorization',
  'X-API-Key',
  'Content-Type',
  'Mcp-Session-Id',
  'MCP-Protocol-Version',
  'Last-Event-ID',
  'X-XSRF-TOKEN',
  'X-Request-Id',
  'anthropic-version',
  'anthropic-beta',
] as const;

/**
 * Families of request headers allowed by prefix, echoed when a preflight asks for them: Anthropic's
 * own (`anthropic-dangerous-direct-browser-access`, …) and the SDK's platform headers, which
 * the Anthropic TypeScript SDK sends from a browser.
 */
const ALLOWED_HEADER_PREFIXES = ['anthropic-', 'x-stainless-'] as const;

/** Response headers a browser client may read besides the CORS-safelisted ones. */
const EXPOSE_HEADERS = [
  'Mcp-Session-Id',
  'X-Request-Id',
  'Request-Id',
  'Retry-After',
  'RateLimit-Limit',
  'RateLimit-Remaining',
  'RateLimit-Reset',
  // An MCP client discovers the authorization server from it (RFC 9728 §5.1).
  'WWW-Authenticate',
].join(', ');

/** A header name (RFC 9110 §5.1 token), lower-cased as browsers send it in the preflight. */
const HEADER_NAME = /^[a-z0-9!#$%&'*+.^_`|~-]+$/;
const MAX_MAX_AGE = 86_400; // the largest value any browser honours (Firefox); Chromium caps at 7200

export function cors(options: CorsOptions): MiddlewareHandler<BulwarkEnv> {
  const { origins, maxAgeSeconds = 600 } = options;
  if (!Array.isArray(origins)) throw new Error('cors: origins must be a list of origins');
  if (!Number.isSafeInteger(maxAgeSeconds) || maxAgeSeconds < 0 || maxAgeSeconds > MAX_MAX_AGE) {
    throw new Error(`cors: maxAgeSeconds must be an integer from 0 to ${MAX_MAX_AGE}, got ${String(maxAgeSeconds)}`);
  }
  const allowed = new Set<string>();
  for (const entry of origins) {
    const text = String(entry).trim();
    if (text === '*' || text === 'null') {
      throw new Error(`cors: origins must name each origin; "${text}" is never allowed, since credentials are allowed`);
    }
    const origin = normalizeOrigin(text);
    if (!origin) throw new Error(`cors: origins entry "${text}" is not an origin like https://app.example.com`);
    allowed.add(origin);
  }
  const baseAllowHeaders = new Set(ALLOW_HEADERS.map((name) => name.toLowerCase()));
  const maxAge = String(maxAgeSeconds);

  /** The Allow-Headers answer: the fixed list plus the prefixed headers this preflight asks for. */
  const allowHeadersFor = (requested: string | undefined): string => {
    if (!requested) return ALLOW_HEADERS.join(', ');
    const extra: string[] = [];
    for (const raw of requested.split(',')) {
      const name = raw.trim().toLowerCase();
      if (!HEADER_NAME.test(name) || baseAllowHeaders.has(name) || extra.includes(name)) continue;
      if (ALLOWED_HEADER_PREFIXES.some((prefix) => name.startsWith(prefix))) extra.push(name);
    }
    return [...ALLOW_HEADERS, ...extra].join(', ');
  };

  return async function corsMiddleware(c, next) {
    const originHeader = requestHeader(c, 'origin');
    // The Origin header is already an origin's serialisation; an exact match on its normal form.
    const origin = originHeader === undefined ? undefined : normalizeOrigin(originHeader);
    const isAllowed = origin !== undefined && allowed.has(origin);

    if (c.req.method === 'OPTIONS' && originHeader !== undefined && requestHeader(c, 'access-control-request-method') !== undefined) {
      if (!isAllowed) {
        throw new ApiError('origin_not_allowed', 'This origin may not call Bulwark from a browser; add it to BULWARK_CORS_ORIGINS if it is yours.');
      }
      return c.body(null, 204, {
        'Access-Control-Allow-Origin': origin,
        'Access-Control-Allow-Credentials': 'true',
        'Access-Control-Allow-Methods': ALLOW_METHODS,
        'Access-Control-Allow-Headers': allowHeadersFor(requestHeader(c, 'access-control-request-headers')),
        'Access-Control-Max-Age': maxAge,
        Vary: 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers',
      });
    }

    const outgoing = nodeResponse(c);
    if (outgoing && !outgoing.headersSent) {
      if (isAllowed) {
        outgoing.setHeader('Access-Control-Allow-Origin', origin);
        outgoing.setHeader('Access-Control-Allow-Credentials', 'true');
        outgoing.setHeader('Access-Control-Expose-Headers', EXPOSE_HEADERS);
      }
      appendNodeVary(outgoing, 'Origin');
    }
    await next();
    if (sentDirectly(c.res)) return;
    // Also on a Hono-built response under Node: its own `Vary` (say, Accept-Encoding) would
    // otherwise replace the one set above when Node merges the two.
    editResponseHeaders(c, (headers) => {
      if (isAllowed) {
        headers.set('Access-Control-Allow-Origin', origin);
        headers.set('Access-Control-Allow-Credentials', 'true');
        headers.set('Access-Control-Expose-Headers', EXPOSE_HEADERS);
      }
      headers.set('Vary', withVary(headers.get('vary'), 'Origin'));
    });
  };
}
