/**
 * The HTTP edge of authentication and authorization. `extractCredential` reads the headers
 * (pure); `authenticate` turns a verification result (a Bulwark key, or a bearer JWT through
 * the configured `TokenVerifier`s) into 400/401 with the right `WWW-Authenticate` (RFC 6750 §3)
 * and audits every failure; `requireScope` answers 403 `insufficient_scope` and audits it.
 */
import type { Context, MiddlewareHandler } from 'hono';
import type { AuditEventInput } from '../audit/log.js';
import type { BulwarkEnv } from '../http/context.js';
import { clientIp, requestFacts, requestHeader } from '../http/client-info.js';
import { ApiError } from '../http/errors.js';
import { type TokenVerifier, type TokenVerifyResult, TokenVerifierUnavailableError } from './jwt.js';
import { DEFAULT_TENANT, type Principal } from './principal.js';
import { hasScope } from './scopes.js';
import { type KeyVerifier, StoreUnavailableError } from './verify.js';

export type ExtractedCredential =
  | { kind: 'none' }
  | { kind: 'malformed'; message: string }
  | { kind: 'token'; token: string; source: 'authorization' | 'x-api-key' };

/** A token is one run of visible ASCII without spaces (RFC 6750's b64token, loosened). */
const TOKEN = /^[\x21-\x7e]+$/;
const MAX_TOKEN_LENGTH = 4096;

export function extractCredential(authorization: string | undefined, apiKey: string | undefined): ExtractedCredential {
  let fromAuthorization: string | undefined;
  if (authorization !== undefined) {
    const match = /^(\S+)(?: +(.*))?$/.exec(authorization.trim());
    if (!match || match[1]?.toLowerCase() !== 'bearer') {
      return { kind: 'malformed', message: 'The Authorization header must be "Bearer <key>".' };
    }
    const token = (match[2] ?? '').trim();
    if (!token || !TOKEN.test(token) || token.length > MAX_TOKEN_LENGTH) {
      return { kind: 'malformed', message: 'The Authorization header must be "Bearer <key>".' };
    }
    fromAuthorization = token;
  }
  if (apiKey !== undefined) {
    const token = apiKey.trim();
    if (!token || !TOKEN.test(token) || token.length > MAX_TOKEN_LENGTH) {
      return { kind: 'malformed', message: 'The X-API-Key header must hold one key.' };
    }
    if (fromAuthorization !== undefined && fromAuthorization !== token) {
      return { kind: 'malformed', message: 'Authorization and X-API-Key carry different credentials; send one.' };
    }
    return { kind: 'token', token, source: fromAuthorization !== undefined ? 'authorization' : 'x-api-key' };
  }
  return fromAuthorization !== undefined ? { kind: 'token', token: fromAuthorization, source: 'authorization' } : { kind: 'none' };
}

/**
 * A compact JWS (RFC 7515 §7.1): three base64url segments, the header a JSON object (so `eyJ`).
 * The signature may be empty here so that an unsigned (`alg: none`) token reaches the token
 * verifiers and is refused there with a precise audit reason.
 */
const COMPACT_JWS = /^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

export function looksLikeJwt(token: string): boolean {
  return COMPACT_JWS.test(token);
}

export interface AuthenticateOptions {
  verifier: KeyVerifier;
  audit: (event: AuditEventInput) => void;
  /** `false` only in development with BULWARK_AUTH=off on loopback (config refuses it elsewhere). */
  required?: boolean;
  realm?: string;
  /**
   * Verifiers for bearer JWTs, asked in order (Bulwark's own first, then an OIDC provider).
   * Without any, a JWT is refused like any other unknown credential.
   */
  tokenVerifiers?: readonly TokenVerifier[];
  /**
   * Verifiers for one path instead of `tokenVerifiers`: `/mcp` accepts OIDC tokens only when
   * issued for it (RFC 8707 audience = the MCP resource URL).
   */
  tokenVerifiersFor?: (path: string) => readonly TokenVerifier[] | undefined;
  /**
   * Called on every authentication failure (the brute-force lockout tracker) and awaited before
   * the answer, so the client's next request already sees a lockout this failure caused.
   */
  onFailure?: (ip: string | undefined, c: Context) => void | Promise<void>;
  /**
   * Auth-params added to the request's challenges, e.g. `resource_metadata="…"` (RFC 9728 §5.1)
   * on `/mcp`, so an MCP client can find where to get a token.
   */
  challengeParams?: (c: Context) => string | undefined;
}

/** The principal used when authentication is off: the default tenant, every scope. */
export const ANONYMOUS_PRINCIPAL: Principal = Object.freeze({
  kind: 'anonymous',
  tenant: DEFAULT_TENANT,
  keyId: 'anonymous',
  keyName: 'anonymous (BULWARK_AUTH=off)',
  scopes: Object.freeze(['admin']) as readonly string[],
  expiresAt: null,
});

export function authenticate(options: AuthenticateOptions): MiddlewareHandler<BulwarkEnv> {
  const { verifier, audit, required = true, realm = 'bulwark', tokenVerifiers: defaultTokenVerifiers = [], tokenVerifiersFor, onFailure, challengeParams } = options;
  if (!verifier) throw new Error('authenticate: verifier is required');
  if (defaultTokenVerifiers.some((v) => typeof v?.verify !== 'function')) throw new Error('authenticate: every tokenVerifiers entry needs a verify function');

  return async function authenticateMiddleware(c, next) {
    const challenge = (error?: string) => {
      const extra = challengeParams?.(c);
      return `Bearer realm="${realm}"${error ? `, error="${error}"` : ''}${extra ? `, ${extra}` : ''}`;
    };
    // An earlier layer (the admin listener's cookie session) has already decided who this is.
    if (c.get('principal')) return next();
    const credential = extractCredential(requestHeader(c, 'authorization'), requestHeader(c, 'x-api-key'));
    c.set('credentialPresented', credential.kind !== 'none');
    if (!required && credential.kind === 'none') {
      c.set('principal', ANONYMOUS_PRINCIPAL);
      return next();
    }
    const ip = clientIp(c);
    const fail = async (reason: string, extra: Partial<AuditEventInput> = {}) => {
      audit({
        type: 'auth.failure',
        outcome: 'failure',
        ...requestFacts(c),
        ...extra,
        details: { reason, credentialPresented: credential.kind !== 'none', origin: requestHeader(c, 'origin') ?? null, ...extra.details },
      });
      // A request with no credential guesses nothing; only wrong and malformed ones count toward a lockout.
      if (reason !== 'missing') await onFailure?.(ip, c);
    };

    if (credential.kind === 'none') {
      await fail('missing');
      throw new ApiError('unauthorized', 'Authentication required: send a Bulwark key as "Authorization: Bearer <key>" or "X-API-Key: <key>".', {
        'WWW-Authenticate': challenge(),
      });
    }
    if (credential.kind === 'malformed') {
      await fail('malformed');
      throw new ApiError('malformed_credential', credential.message, { 'WWW-Authenticate': challenge('invalid_request') });
    }
    // RFC 6750 §2.1: an access token travels as a Bearer token, not as an API key header.
    const tokenVerifiers = tokenVerifiersFor?.(c.req.path) ?? defaultTokenVerifiers;
    if (tokenVerifiers.length > 0 && credential.source === 'authorization' && looksLikeJwt(credential.token)) {
      const result = await verifyToken(tokenVerifiers, credential.token);
      if (!result.ok) {
        await fail(result.reason, { keyId: result.keyId ?? null, tenantId: result.tenant ?? null, details: { source: credential.source, credential: 'jwt', verifiers: result.verifiers } });
        // One message whichever check failed (signature, algorithm, issuer, audience, lifetime, key).
        throw new ApiError('unauthorized', 'Invalid access token.', { 'WWW-Authenticate': challenge('invalid_token') });
      }
      c.set('principal', result.principal);
      c.set('authMethod', 'bearer');
      return next();
    }
    let result;
    try {
      result = await verifier.verify(credential.token);
    } catch (err) {
      throw unavailable(err);
    }
    if (!result.ok) {
      await fail(result.reason, { keyId: result.keyId ?? null, tenantId: result.tenant ?? null, details: { source: credential.source } });
      // One message for unknown, wrong, expired and revoked keys: the response must not tell which.
      throw new ApiError('unauthorized', 'Invalid API key.', { 'WWW-Authenticate': challenge('invalid_token') });
    }
    c.set('principal', result.principal);
    c.set('authMethod', 'bearer');
    return next();
  };
}

/** Store or identity provider away: not the client's fault and not a bug; say so, and when to come back. */
function unavailable(err: unknown): unknown {
  if (!(err instanceof StoreUnavailableError) && !(err instanceof TokenVerifierUnavailableError)) return err;
  return credentialCheckUnavailable();
}

/** The 503 for any credential check the store or an identity provider could not answer. */
export function credentialCheckUnavailable(): ApiError {
  return new ApiError('service_unavailable', 'Bulwark cannot check credentials right now; try again shortly.', { 'Retry-After': '1' });
}

type TokenOutcome = Extract<TokenVerifyResult, { ok: true }> | (Extract<TokenVerifyResult, { ok: false }> & { verifiers: Record<string, string> });

/**
 * Asks each verifier in turn; the first that accepts wins. When all refuse, the reason audited
 * is that of the first verifier the token was meant for (its issuer matched), so a forged
 * Bulwark token is not reported as "wrong issuer" by the OIDC verifier asked after it.
 */
async function verifyToken(verifiers: readonly TokenVerifier[], token: string): Promise<TokenOutcome> {
  const reasons: Record<string, string> = {};
  let refusal: Extract<TokenVerifyResult, { ok: false }> | undefined;
  for (const tokenVerifier of verifiers) {
    let result: TokenVerifyResult;
    try {
      result = await tokenVerifier.verify(token);
    } catch (err) {
      throw unavailable(err);
    }
    if (result.ok) return result;
    reasons[tokenVerifier.name] = result.reason;
    if (!refusal || (refusal.reason === 'wrong_issuer' && result.reason !== 'wrong_issuer')) refusal = result;
  }
  return { ...(refusal ?? { ok: false, reason: 'malformed_token' }), verifiers: reasons };
}

export interface RequireScopeOptions {
  audit: (event: AuditEventInput) => void;
}

/** Requires one scope, or any one of several (e.g. `['llm', 'write']`). */
export function requireScope(scope: string | readonly string[], options: RequireScopeOptions): MiddlewareHandler<BulwarkEnv> {
  const { audit } = options;
  const accepted = typeof scope === 'string' ? [scope] : [...scope];
  if (accepted.length === 0 || accepted.some((s) => !s)) throw new Error('requireScope: scope is required');
  const named = accepted.map((s) => `'${s}'`).join(' or ');
  // RFC 6750 §3: scope is a space-separated list.
  const challenge = `Bearer error="insufficient_scope", scope="${accepted.join(' ')}"`;
  return async function requireScopeMiddleware(c, next) {
    const principal = c.get('principal');
    if (!principal) throw new Error('requireScope used before authenticate');
    if (!accepted.some((s) => hasScope(principal.scopes, s))) {
      audit({
        type: 'authz.denied',
        outcome: 'denied',
        tenantId: principal.tenant,
        keyId: principal.keyId,
        ...requestFacts(c),
        details: { required: accepted.length === 1 ? accepted[0] : accepted, granted: [...principal.scopes] },
      });
      throw new ApiError('insufficient_scope', `This needs the ${named} scope, which the key does not have.`, {
        'WWW-Authenticate': challenge,
      });
    }
    return next();
  };
}
