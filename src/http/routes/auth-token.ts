/**
 * `POST /auth/token`: trades the Bulwark key in the request's headers for a short-lived JWT
 * (mounted after `authenticate`, so the key is never read from a body or a URL), and
 * `GET /.well-known/jwks.json`: the public keys that verify those tokens (mounted before it).
 *
 * A token is always a narrowing of its key: fewer or equal scopes, a life no longer than the
 * configured one nor than the key's. Only a key can mint a token — a token cannot mint another,
 * or one leaked token could be renewed forever.
 */
import { Hono } from 'hono';
import { z } from 'zod';
import type { AuditEventInput } from '../../audit/log.js';
import type { JwtIssuer } from '../../auth/jwt.js';
import { hasScope } from '../../auth/scopes.js';
import { SCOPE_PATTERN } from '../../config/schema.js';
import { requestFacts } from '../client-info.js';
import type { BulwarkEnv } from '../context.js';
import { ApiError } from '../errors.js';
import { readJson } from '../validate.js';

export interface AuthTokenRoutesOptions {
  issuer: JwtIssuer;
  audit: (event: AuditEventInput) => void;
}

export const TokenRequestSchema = z.strictObject({
  scopes: z.array(z.string().regex(SCOPE_PATTERN, 'is not a valid scope')).min(1).max(64).optional(),
  ttlSeconds: z.number().int().positive().optional(),
});

export function authTokenRoutes(options: AuthTokenRoutesOptions): Hono<BulwarkEnv> {
  const { issuer, audit } = options;
  if (!issuer) throw new Error('authTokenRoutes: issuer is required');
  if (!audit) throw new Error('authTokenRoutes: audit is required');

  return new Hono<BulwarkEnv>().post('/auth/token', async function issueToken(c) {
    const principal = c.get('principal');
    if (!principal) throw new Error('authTokenRoutes used before authenticate');
    const event = (type: string, outcome: 'success' | 'denied', details: Record<string, unknown>): AuditEventInput => ({
      type,
      outcome,
      tenantId: principal.tenant,
      keyId: principal.keyId,
      ...requestFacts(c),
      details,
    });

    // Only a store key's life and scopes bound a token: not a JWT, an OIDC token, the bootstrap
    // or admin key, or a session.
    if (principal.kind !== 'key' || c.get('authMethod') === 'session') {
      audit(event('authz.denied', 'denied', { action: 'auth.token', reason: 'not_a_key', kind: principal.kind }));
      throw new ApiError('forbidden', 'Only a Bulwark key can be exchanged for an access token.');
    }

    const hasBody = c.req.header('content-type') !== undefined || (c.req.raw.body !== null && (await c.req.text()) !== '');
    const body = hasBody ? await readJson(c, TokenRequestSchema) : {};
    const requested = body.scopes ? [...new Set(body.scopes)] : [...principal.scopes];
    // A token narrows its key, never widens it (RFC 6749 §3.3: a subset of what was granted).
    const beyond = requested.filter((s) => !hasScope(principal.scopes, s));
    if (beyond.length > 0) {
      audit(event('authz.denied', 'denied', { action: 'auth.token', reason: 'scope_beyond_key', requested, granted: [...principal.scopes] }));
      throw new ApiError('insufficient_scope', `The key does not hold the requested scopes: ${beyond.join(', ')}.`, {
        'WWW-Authenticate': `Bearer error="insufficient_scope", scope="${beyond.join(' ')}"`,
      });
    }

    if (principal.expiresAt && principal.expiresAt.getTime() - Date.now() < 1_000) {
      // A token would die with its key before it could be used.
      throw new ApiError('forbidden', 'The key expires too soon to be exchanged for an access token.');
    }
    const issued = await issuer.issue({
      keyId: principal.keyId,
      tenant: principal.tenant,
      scopes: requested,
      ttlSeconds: Math.min(body.ttlSeconds ?? issuer.ttlSeconds, issuer.ttlSeconds),
      notAfter: principal.expiresAt,
    });
    // The jti identifies the token in the audit trail; the token itself is never recorded.
    audit(event('auth.token_issued', 'success', { jti: issued.jti, scopes: issued.scopes, expiresAt: issued.expiresAt.toISOString(), algorithm: issuer.algorithm }));
    // RFC 6749 §5.1: token responses must not be cached.
    c.header('Cache-Control', 'no-store');
    c.header('Pragma', 'no-cache');
    return c.json({ access_token: issued.token, token_type: 'Bearer', expires_in: issued.expiresIn, scope: issued.scopes.join(' ') });
  });
}

/** `GET /.well-known/jwks.json`: public, like any JWKS (RFC 8414 §2 `jwks_uri`). */
export function jwksRoutes(issuer: JwtIssuer): Hono<BulwarkEnv> {
  if (!issuer) throw new Error('jwksRoutes: issuer is required');
  return new Hono<BulwarkEnv>().get('/.well-known/jwks.json', (c) => {
    c.header('Cache-Control', 'public, max-age=300');
    return c.json(issuer.jwks());
  });
}
