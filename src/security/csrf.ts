/**
 * CSRF protection for requests authenticated by an ambient credential (the admin listener's
 * session cookie): the synchronizer token pattern (OWASP CSRF Prevention Cheat Sheet). A
 * state-changing request must carry the session's token in a header, or for an HTML form
 * post in a form field; a page on another site can send the cookie but cannot read the token.
 *
 * SameSite=Strict on the cookie already stops most cross-site requests; the token is the
 * defence that does not depend on the browser (older browsers, sibling subdomains, which
 * count as "same site").
 *
 * Requests authenticated by a bearer header carry no ambient credential (a browser never adds
 * one on its own), so they pass untouched, as do safe methods (RFC 9110 §9.2.1), which must
 * not change state.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Context, MiddlewareHandler } from 'hono';
import type { AuditEventInput } from '../audit/log.js';
import type { Principal } from '../auth/principal.js';
import { requestFacts } from '../http/client-info.js';
import { ApiError } from '../http/errors.js';

const SAFE_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);
const FORM_TYPES: ReadonlySet<string> = new Set(['application/x-www-form-urlencoded', 'multipart/form-data']);
/** RFC 9110 §5.6.2 token: what a header name may be. */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Far longer than any token we issue; a longer value is wrong without hashing it. */
const MAX_TOKEN_LENGTH = 512;

/** What this middleware reads from the context; `BulwarkVariables` provides it. */
export interface CsrfVariables {
  authMethod: 'session' | 'bearer' | undefined;
  principal: Principal;
  requestId: string;
}

export interface CsrfProtectionOptions {
  /** The header a script sends the token in (default `X-XSRF-TOKEN`, the name Angular and axios use). */
  headerName?: string;
  /** The field an HTML form sends the token in (default `_csrf`). */
  formField?: string;
  /** The token the request must carry: the session's, as the session middleware found it. */
  getExpectedToken: (c: Context) => string | undefined | Promise<string | undefined>;
  audit: (event: AuditEventInput) => void;
}

export function csrfProtection(options: CsrfProtectionOptions): MiddlewareHandler<{ Variables: CsrfVariables }> {
  const { headerName = 'X-XSRF-TOKEN', formField = '_csrf', getExpectedToken, audit } = options;
  if (!HEADER_NAME.test(headerName)) throw new Error('csrfProtection: headerName must be a valid header name');
  if (!formField) throw new Error('csrfProtection: formField must be a non-empty field name');
  if (typeof getExpectedToken !== 'function') throw new Error('csrfProtection: getExpectedToken is required');
  if (typeof audit !== 'function') throw new Error('csrfProtection: audit is required');

  return async function csrfProtectionMiddleware(c, next) {
    if (c.get('authMethod') !== 'session' || SAFE_METHODS.has(c.req.method)) return next();

    const presented = c.req.header(headerName) ?? (await formToken(c, formField));
    const expected = await getExpectedToken(c);
    const reason = presented === undefined || presented === '' ? 'missing' : !expected || !tokensEqual(presented, expected) ? 'mismatch' : undefined;
    if (!reason) return next();

    const principal = c.get('principal');
    audit({
      type: 'http.csrf_failed',
      outcome: 'denied',
      tenantId: principal?.tenant ?? null,
      keyId: principal?.keyId ?? null,
      ...requestFacts(c),
      details: { reason, origin: c.req.header('origin') ?? null },
    });
    throw new ApiError(
      'csrf_failed',
      reason === 'missing'
        ? `This request needs the session's CSRF token in the ${headerName} header (or the ${formField} form field).`
        : 'The CSRF token does not match this session.',
    );
  };
}

/** The token from an HTML form post's body; the body stays readable for the route. */
async function formToken(c: Context, field: string): Promise<string | undefined> {
  const type = c.req.header('content-type')?.split(';')[0]?.trim().toLowerCase();
  if (!type || !FORM_TYPES.has(type)) return undefined;
  let body: Record<string, unknown>;
  try {
    body = await c.req.parseBody();
  } catch (err) {
    if (err instanceof ApiError) throw err; // over the body limit: a 413, not a CSRF failure
    return undefined; // A body that is not a form has no token in it.
  }
  const value = body[field];
  return typeof value === 'string' ? value : undefined;
}

/** Constant-time: both sides are hashed to equal length first, so neither length nor content leaks. */
function tokensEqual(presented: string, expected: string): boolean {
  if (presented.length > MAX_TOKEN_LENGTH) return false;
  return timingSafeEqual(sha256(presented), sha256(expected));
}

function sha256(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}
