/**
 * Cookie sessions on the admin listener, for browser pages: `POST /login` trades an admin key
 * for a session cookie, `POST /logout` ends the session, `GET /session` describes it, and
 * `sessionAuth` turns the cookie into a principal for the routes behind it. The sessions
 * themselves live behind `SessionStore` (src/auth/sessions.ts).
 *
 * The session cookie is `HttpOnly` (scripts never see it), `SameSite=Strict` (browsers do not
 * send it on requests another site starts) and `Path=/`. With `secureCookies` it is also
 * `Secure` and named `__Host-bulwark_session`: the `__Host-` prefix (RFC 6265bis §4.1.3.2)
 * makes browsers refuse it unless it is Secure, has Path=/ and no Domain, so a sibling
 * subdomain or a plain-HTTP response cannot plant or overwrite it. Browsers also refuse a
 * `__Host-` cookie that is not Secure, and a Secure cookie is only sent over HTTPS, so without
 * TLS (development on loopback) the cookie is plain `bulwark_session`; a server configured for
 * secure cookies reads only the `__Host-` name, never the plain one.
 */
import { type Context, Hono, type MiddlewareHandler } from 'hono';
import { getCookie, setCookie } from 'hono/cookie';
import { z } from 'zod';
import type { AuditEventInput } from '../../audit/log.js';
import { credentialCheckUnavailable } from '../../auth/middleware.js';
import { type Principal, describePrincipal } from '../../auth/principal.js';
import { hasScope } from '../../auth/scopes.js';
import type { SessionStore } from '../../auth/sessions.js';
import { type KeyVerifier, StoreUnavailableError } from '../../auth/verify.js';
import { csrfProtection } from '../../security/csrf.js';
import { addressOf, refuse as refuseAddress } from '../../security/ip-allowlist.js';
import { keyIpAllowed } from '../../security/key-ip-allowlist.js';
import { clientIp, requestFacts } from '../client-info.js';
import { ApiError } from '../errors.js';
import { readJson } from '../validate.js';

export const SESSION_COOKIE = 'bulwark_session';
/** Readable by the dashboard's scripts, which send it back in `X-XSRF-TOKEN`. */
export const XSRF_COOKIE = 'XSRF-TOKEN';

export type AuthMethod = 'session' | 'bearer' | 'ticket';

/** What `sessionAuth` leaves for later steps besides the principal. */
export interface SessionContext {
  csrfToken: string;
  expiresAt: Date;
}

/** The context variables these routes use; `BulwarkVariables` must provide the same. */
export interface SessionVariables {
  requestId: string;
  principal: Principal;
  credentialPresented: boolean;
  authMethod: AuthMethod | undefined;
  session: SessionContext | undefined;
}

export interface SessionEnv {
  Variables: SessionVariables;
}

/** What still restricts a usable key; `allowedCidrs` empty means anywhere. */
export interface KeyRestrictions {
  allowedCidrs: readonly string[];
}

/**
 * Answers whether a key (by id) may still be used — not revoked, not expired, still configured —
 * and with what restrictions, so a session is held to the key's address list like a header is.
 */
export type KeyStillValid = (keyId: string) => Promise<false | KeyRestrictions>;

export interface SessionAuthOptions {
  sessions: SessionStore;
  keyStillValid: KeyStillValid;
  audit: (event: AuditEventInput) => void;
  /** Read only the `__Host-` cookie (default). `false` only where the listener is plain HTTP. */
  secureCookies?: boolean;
}

export interface LoginRoutesOptions extends SessionAuthOptions {
  /** The admin listener's verifier (store keys, the admin token, the admin and bootstrap keys). */
  verifier: Pick<KeyVerifier, 'verify'>;
  /** Told of every wrong key, like `authenticate`'s hook: sign-in is a guessing target too. */
  onFailure?: (ip: string | undefined, c: Context) => void | Promise<void>;
}

/** The session's CSRF token, for `csrfProtection({ getExpectedToken: sessionCsrfToken })`. */
export function sessionCsrfToken(c: Context): string | undefined {
  return (c.get('session') as SessionContext | undefined)?.csrfToken;
}

const LoginBody = z.object({ key: z.string().min(1).max(4096) });
const UNAUTHORIZED_CHALLENGE = { 'WWW-Authenticate': 'Bearer realm="bulwark"' };

interface SessionCookies {
  read(c: Context): string | undefined;
  set(c: Context, id: string, csrfToken: string, maxAgeSeconds: number): void;
  clear(c: Context): void;
}

function sessionCookies(secure: boolean): SessionCookies {
  const prefix = secure ? ('host' as const) : undefined;
  const base = { path: '/', sameSite: 'Strict' as const, secure };
  return {
    read: (c) => getCookie(c, SESSION_COOKIE, prefix) || undefined,
    set(c, id, csrfToken, maxAge) {
      setCookie(c, SESSION_COOKIE, id, { ...base, prefix, httpOnly: true, maxAge });
      // Not HttpOnly: the dashboard's scripts read it. It is not a credential (the server checks
      // the token against the session, not against this cookie), so its integrity does not matter.
      setCookie(c, XSRF_COOKIE, csrfToken, { ...base, maxAge });
    },
    clear(c) {
      setCookie(c, SESSION_COOKIE, '', { ...base, prefix, httpOnly: true, maxAge: 0 });
      setCookie(c, XSRF_COOKIE, '', { ...base, maxAge: 0 });
    },
  };
}

/**
 * Authenticates a request by its session cookie. A request that carries an Authorization or
 * X-API-Key header is left to `authenticate` (the header names the credential the caller
 * chose); one with neither header nor cookie passes on unauthenticated. A cookie that no longer
 * names a live session, or whose key has since been revoked, is refused with 401 and cleared.
 */
export function sessionAuth(options: SessionAuthOptions): MiddlewareHandler<SessionEnv> {
  const { sessions, keyStillValid, audit, secureCookies = true } = options;
  if (!sessions) throw new Error('sessionAuth: sessions is required');
  if (typeof keyStillValid !== 'function') throw new Error('sessionAuth: keyStillValid is required');
  if (typeof audit !== 'function') throw new Error('sessionAuth: audit is required');
  const cookies = sessionCookies(secureCookies);

  return async function sessionAuthMiddleware(c, next) {
    if (c.req.header('authorization') !== undefined || c.req.header('x-api-key') !== undefined) return next();
    const id = cookies.read(c);
    if (id === undefined) return next();
    c.set('credentialPresented', true);

    const refuse = (reason: string, principal?: Principal): never => {
      audit({
        type: 'auth.failure',
        outcome: 'failure',
        ...requestFacts(c),
        tenantId: principal?.tenant ?? null,
        keyId: principal?.keyId ?? null,
        details: { reason, credentialPresented: true, source: 'session_cookie' },
      });
      cookies.clear(c);
      throw new ApiError('unauthorized', 'The session has ended; sign in again.', UNAUTHORIZED_CHALLENGE);
    };

    let lookup;
    try {
      lookup = await sessions.get(id);
    } catch {
      // The session store is the database: a failed lookup is an outage, not a bad cookie.
      throw credentialCheckUnavailable();
    }
    if (!lookup.ok) return refuse(`session_${lookup.reason}`);
    const { principal } = lookup.session;
    let valid: false | KeyRestrictions;
    try {
      valid = await keyStillValid(principal.keyId);
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      throw credentialCheckUnavailable();
    }
    if (!valid) {
      // Another instance may have revoked the key; this one learns it here and ends the session.
      await sessions.destroy(id);
      return refuse('session_key_invalid', principal);
    }

    c.set('principal', valid.allowedCidrs.length > 0 ? { ...principal, allowedCidrs: valid.allowedCidrs } : principal);
    // The key's address list, here as well as after authentication: GET /session and POST /logout
    // answer before that later check runs.
    if (!keyIpAllowed(valid.allowedCidrs, addressOf(c))) throw refuseAddress(c, audit, addressOf(c), { listener: 'key' }, 'for this key');
    c.set('authMethod', 'session');
    c.set('session', { csrfToken: lookup.session.csrfToken, expiresAt: lookup.session.expiresAt });
    return next();
  };
}

/** `POST /login`, `POST /logout`, `GET /session`. Mount before `authenticate` on the admin listener. */
export function loginRoutes(options: LoginRoutesOptions): Hono<SessionEnv> {
  const { sessions, verifier, audit, secureCookies = true, onFailure } = options;
  if (!verifier) throw new Error('loginRoutes: verifier is required');
  const authBySession = sessionAuth(options);
  const cookies = sessionCookies(secureCookies);
  const csrf = csrfProtection({ getExpectedToken: sessionCsrfToken, audit });
  const app = new Hono<SessionEnv>();

  const requireSession: MiddlewareHandler<SessionEnv> = async (c, next) => {
    if (c.get('authMethod') === 'session') return next();
    audit({
      type: 'auth.failure',
      outcome: 'failure',
      ...requestFacts(c),
      details: { reason: 'session_missing', credentialPresented: c.get('credentialPresented') ?? false },
    });
    throw new ApiError('unauthorized', 'No session: sign in with POST /login.', UNAUTHORIZED_CHALLENGE);
  };

  app.post('/login', async (c) => {
    const loginFailed = (outcome: 'failure' | 'denied', reason: string, principal?: { keyId?: string | undefined; tenant?: string | undefined }) =>
      audit({
        type: 'auth.login_failed',
        outcome,
        ...requestFacts(c),
        keyId: principal?.keyId ?? null,
        tenantId: principal?.tenant ?? null,
        details: { reason, origin: c.req.header('origin') ?? null },
      });

    // Login CSRF: another site must not sign the browser in to a session of its choosing.
    if (isCrossSite(c)) {
      loginFailed('denied', 'cross_site');
      throw new ApiError('csrf_failed', 'Sign in from Bulwark’s own pages.');
    }
    const form = isForm(c);
    if (!form && !/^application\/json\b/i.test(c.req.header('content-type') ?? '')) {
      throw new ApiError('bad_request', 'Send the key in the field "key" of a form (application/x-www-form-urlencoded) or of a JSON body.');
    }
    const { key } = form ? await readForm(c) : await readJson(c, LoginBody);

    let result;
    try {
      result = await verifier.verify(key);
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      throw credentialCheckUnavailable();
    }
    if (!result.ok) {
      loginFailed('failure', result.reason, { keyId: result.keyId, tenant: result.tenant });
      await onFailure?.(clientIp(c), c);
      throw new ApiError('unauthorized', 'Invalid API key.', UNAUTHORIZED_CHALLENGE);
    }
    const { principal } = result;
    if (!keyIpAllowed(principal.allowedCidrs, clientIp(c))) {
      loginFailed('denied', 'ip_not_allowed', principal);
      throw new ApiError('ip_not_allowed', `Requests from ${clientIp(c) ?? 'an unknown address'} are not allowed for this key.`);
    }
    if (!hasScope(principal.scopes, 'admin')) {
      loginFailed('denied', 'insufficient_scope', principal);
      throw new ApiError('insufficient_scope', "Signing in needs a key with the 'admin' scope.");
    }

    // Session fixation (OWASP): a sign-in always gets a new id, and a session the browser
    // already held is ended rather than carried over.
    const previous = cookies.read(c);
    if (previous !== undefined) await sessions.destroy(previous);
    const facts = requestFacts(c);
    const session = await sessions.create(principal, { ip: facts.ip, userAgent: facts.userAgent });
    cookies.set(c, session.id, session.csrfToken, session.maxAgeSeconds);
    audit({
      type: 'auth.login',
      outcome: 'success',
      ...facts,
      tenantId: principal.tenant,
      keyId: principal.keyId,
      details: { kind: principal.kind, expiresAt: session.expiresAt.toISOString() },
    });
    c.header('Cache-Control', 'no-store');
    // RFC 9110 §15.4.4: 303 turns the form post into a GET (of the session's description until
    // the admin listener serves pages).
    if (form) return c.redirect('/session', 303);
    return c.json({ csrfToken: session.csrfToken, expiresAt: session.expiresAt.toISOString() });
  });

  app.post('/logout', authBySession, requireSession, csrf, async (c) => {
    const id = cookies.read(c);
    if (id !== undefined) await sessions.destroy(id);
    cookies.clear(c);
    const principal = c.get('principal');
    audit({ type: 'auth.logout', outcome: 'success', ...requestFacts(c), tenantId: principal.tenant, keyId: principal.keyId });
    c.header('Cache-Control', 'no-store');
    return c.body(null, 204);
  });

  app.get('/session', authBySession, requireSession, (c) => {
    const session = c.get('session') as SessionContext;
    c.header('Cache-Control', 'no-store');
    return c.json({ principal: describePrincipal(c.get('principal')), csrfToken: session.csrfToken, expiresAt: session.expiresAt.toISOString() });
  });

  return app;
}

function isForm(c: Context): boolean {
  return c.req.header('content-type')?.split(';')[0]?.trim().toLowerCase() === 'application/x-www-form-urlencoded';
}

async function readForm(c: Context): Promise<z.infer<typeof LoginBody>> {
  const body = new URLSearchParams(await c.req.text());
  const parsed = LoginBody.safeParse({ key: body.getAll('key').length === 1 ? body.get('key') : undefined });
  if (!parsed.success) throw new ApiError('validation_failed', 'key: send exactly one key.');
  return parsed.data;
}

/**
 * Fetch Metadata (`Sec-Fetch-Site`, sent by every current browser) says where a request
 * started; without it, an `Origin` naming another host does. Clients that send neither (curl,
 * the CLI) are not browsers and cannot be driven by another site.
 */
function isCrossSite(c: Context): boolean {
  const site = c.req.header('sec-fetch-site');
  if (site !== undefined) return site !== 'same-origin' && site !== 'none';
  const origin = c.req.header('origin');
  if (origin === undefined) return false;
  try {
    return new URL(origin).host !== new URL(c.req.url).host;
  } catch {
    return true; // `Origin: null` (sandboxed or privacy-sensitive contexts) and junk alike.
  }
}
