/**
 * The HTTP edge of authentication and authorization. `extractCredential` reads the headers
 * (pure); `authenticate` turns a verification result into 400/401 with the right
 * `WWW-Authenticate` (RFC 6750 §3) and audits every failure; `requireScope` answers 403
 * `insufficient_scope` and audits it.
 */
import type { MiddlewareHandler } from 'hono';
import type { AuditEventInput } from '../audit/log.js';
import type { BulwarkEnv } from '../http/context.js';
import { clientIp, requestPath } from '../http/client-info.js';
import { ApiError } from '../http/errors.js';
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

export interface AuthenticateOptions {
  verifier: KeyVerifier;
  audit: (event: AuditEventInput) => void;
  /** `false` only in development with BULWARK_AUTH=off on loopback (config refuses it elsewhere). */
  required?: boolean;
  realm?: string;
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
  const { verifier, audit, required = true, realm = 'bulwark' } = options;
  if (!verifier) throw new Error('authenticate: verifier is required');
  const challenge = (error?: string) => `Bearer realm="${realm}"${error ? `, error="${error}"` : ''}`;

  return async function authenticateMiddleware(c, next) {
    const credential = extractCredential(c.req.header('authorization'), c.req.header('x-api-key'));
    c.set('credentialPresented', credential.kind !== 'none');
    if (!required && credential.kind === 'none') {
      c.set('principal', ANONYMOUS_PRINCIPAL);
      return next();
    }
    const auditFailure = (reason: string, extra: Partial<AuditEventInput> = {}) =>
      audit({
        type: 'auth.failure',
        outcome: 'failure',
        ip: clientIp(c),
        userAgent: c.req.header('user-agent'),
        method: c.req.method,
        path: requestPath(c),
        requestId: c.get('requestId'),
        ...extra,
        details: { reason, credentialPresented: credential.kind !== 'none', origin: c.req.header('origin') ?? null, ...extra.details },
      });

    if (credential.kind === 'none') {
      auditFailure('missing');
      throw new ApiError('unauthorized', 'Authentication required: send a Bulwark key as "Authorization: Bearer <key>" or "X-API-Key: <key>".', {
        'WWW-Authenticate': challenge(),
      });
    }
    if (credential.kind === 'malformed') {
      auditFailure('malformed');
      throw new ApiError('malformed_credential', credential.message, { 'WWW-Authenticate': challenge('invalid_request') });
    }
    let result;
    try {
      result = await verifier.verify(credential.token);
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      // Not the client's fault and not a bug: say so, and when to come back.
      throw new ApiError('service_unavailable', 'Bulwark cannot check credentials right now; try again shortly.', { 'Retry-After': '1' });
    }
    if (!result.ok) {
      auditFailure(result.reason, { keyId: result.keyId ?? null, tenantId: result.tenant ?? null, details: { source: credential.source } });
      // One message for unknown, wrong, expired and revoked keys: the response must not tell which.
      throw new ApiError('unauthorized', 'Invalid API key.', { 'WWW-Authenticate': challenge('invalid_token') });
    }
    c.set('principal', result.principal);
    return next();
  };
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
        ip: clientIp(c),
        userAgent: c.req.header('user-agent'),
        method: c.req.method,
        path: requestPath(c),
        requestId: c.get('requestId'),
        details: { required: accepted.length === 1 ? accepted[0] : accepted, granted: [...principal.scopes] },
      });
      throw new ApiError('insufficient_scope', `This needs the ${named} scope, which the key does not have.`, {
        'WWW-Authenticate': challenge,
      });
    }
    return next();
  };
}
