/**
 * Bulwark JWTs and OIDC access tokens, end to end on a real KeyService/KeyVerifier over PGlite:
 * exchanging a key for a token at POST /auth/token, using it, and every way a token must be
 * refused (unsigned, algorithm swap, wrong audience/issuer, expired, wrong key, tampered, key
 * revoked or narrowed, token minting a token). The OIDC verifier fetches a real JWKS over
 * HTTP from a loopback server.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { Hono, type MiddlewareHandler } from 'hono';
import { SignJWT, createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tailEvents } from '../src/audit/log.js';
import {
  type BulwarkJwtOptions,
  type JwtAlgorithm,
  type TokenVerifier,
  bulwarkTokenVerifier,
  createBulwarkJwt,
  generateJwtSigningMaterial,
  oidcVerifier,
} from '../src/auth/jwt.js';
import { authenticate, requireScope } from '../src/auth/middleware.js';
import { createKeyHasher } from '../src/auth/keys.js';
import type { Principal } from '../src/auth/principal.js';
import { KeyVerifier, staticPrincipal } from '../src/auth/verify.js';
import type { BulwarkEnv } from '../src/http/context.js';
import { errorHandler, notFoundHandler } from '../src/http/errors.js';
import { requestId } from '../src/http/request-id.js';
import { authTokenRoutes, jwksRoutes } from '../src/http/routes/auth-token.js';
import { whoamiRoutes } from '../src/http/routes/whoami.js';
import type { Runtime } from '../src/http/runtime.js';
import { OPERATOR, type TestBulwark, startTestBulwark } from './helpers/runtime.js';

const ISSUER = 'https://bulwark.test';
const AUDIENCE = 'bulwark';

interface TokenApp {
  app: Hono<BulwarkEnv>;
  /** The IP passed to `onFailure`, once per authentication failure. */
  failures: (string | undefined)[];
}

/** The public pipeline's authentication part, with the token routes and two probes behind it. */
function tokenApp(
  runtime: Runtime,
  options: Omit<BulwarkJwtOptions, 'issuer' | 'audience'> & Partial<Pick<BulwarkJwtOptions, 'issuer' | 'audience'>>,
  extra: { verifiers?: TokenVerifier[]; before?: MiddlewareHandler<BulwarkEnv>; keyVerifier?: KeyVerifier } = {},
): TokenApp {
  const { issuer, verifier } = createBulwarkJwt({ issuer: ISSUER, audience: AUDIENCE, ...options });
  const failures: (string | undefined)[] = [];
  const keys = extra.keyVerifier ?? runtime.publicVerifier;
  const app = new Hono<BulwarkEnv>();
  app.onError(errorHandler(() => {}));
  app.notFound(notFoundHandler);
  app.use('*', requestId());
  app.route('/', jwksRoutes(issuer));
  if (extra.before) app.use('*', extra.before);
  app.use(
    '*',
    authenticate({
      verifier: keys,
      audit: runtime.audit,
      tokenVerifiers: [bulwarkTokenVerifier({ jwt: verifier, keys }), ...(extra.verifiers ?? [])],
      onFailure: (ip) => {
        failures.push(ip);
      },
    }),
  );
  app.route('/', whoamiRoutes());
  app.route('/', authTokenRoutes({ issuer, audit: runtime.audit }));
  app.post('/api/act', requireScope('write', { audit: runtime.audit }), (c) => c.json({ acted: true }));
  return { app, failures };
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const jsonHeaders = (token: string) => ({ ...bearer(token), 'content-type': 'application/json' });

async function exchange(app: Hono<BulwarkEnv>, key: string, body?: unknown): Promise<Response> {
  return app.request('/auth/token', {
    method: 'POST',
    headers: body === undefined ? bearer(key) : jsonHeaders(key),
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
}

async function tokenFor(app: Hono<BulwarkEnv>, key: string, body?: unknown): Promise<string> {
  const response = await exchange(app, key, body);
  expect(response.status).toBe(200);
  return ((await response.json()) as { access_token: string }).access_token;
}

function base64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

async function whoami(app: Hono<BulwarkEnv>, token: string): Promise<Response> {
  return app.request('/api/whoami', { headers: bearer(token) });
}

describe('Bulwark JWTs (HS256) over a real key store', () => {
  let b: TestBulwark;
  let secret: string;
  let subject: TokenApp;
  let app: Hono<BulwarkEnv>;

  beforeAll(async () => {
    b = await startTestBulwark('pglite');
    secret = generateJwtSigningMaterial('HS256');
    subject = tokenApp(b.runtime, { algorithm: 'HS256', secret });
    app = subject.app;
  });
  afterAll(async () => {
    await b?.close();
  });

  async function lastAuthFailure(response: Response) {
    await b.runtime.auditLog.flush();
    const events = await tailEvents(b.runtime.database.db, { type: 'auth.failure', limit: 1000 });
    return events.find((e) => e.requestId === response.headers.get('x-request-id'));
  }

  async function expectRefused(token: string, reason: string) {
    const response = await whoami(app, token);
    expect(response.status).toBe(401);
    expect(response.headers.get('www-authenticate')).toContain('error="invalid_token"');
    const body = (await response.json()) as { error: { code: string; message: string } };
    expect(body.error).toMatchObject({ code: 'unauthorized', message: 'Invalid access token.' });
    expect((await lastAuthFailure(response))?.details).toMatchObject({ reason, credential: 'jwt' });
  }

  describe('POST /auth/token', () => {
    it('exchanges a key for a JWT that authenticates the next request as that key', async () => {
      const { key, id } = await b.createKey(['read', 'write'], { name: 'agent' });
      const response = await exchange(app, key);
      expect(response.status).toBe(200);
      expect(response.headers.get('cache-control')).toBe('no-store');
      const body = (await response.json()) as Record<string, unknown>;
      expect(body).toEqual({ access_token: expect.any(String), token_type: 'Bearer', expires_in: 3600, scope: 'read write' });

      const me = await whoami(app, body.access_token as string);
      expect(me.status).toBe(200);
      expect(await me.json()).toMatchObject({ kind: 'jwt', keyId: id, keyName: 'agent', tenant: 'default', scopes: ['read', 'write'] });
      const act = await app.request('/api/act', { method: 'POST', headers: bearer(body.access_token as string) });
      expect(act.status).toBe(200);
    });

    it('signs sub, tenant, scopes, jti, iat, exp, iss and aud, typed at+jwt', async () => {
      const { key, id } = await b.createKey(['read']);
      const token = await tokenFor(app, key);
      expect(decodeProtectedHeader(token)).toEqual({ alg: 'HS256', typ: 'at+jwt' });
      const claims = decodeJwt(token);
      expect(claims).toEqual({
        sub: id,
        tenant: 'default',
        scopes: ['read'],
        jti: expect.stringMatching(/^[A-Za-z0-9_-]{22}$/),
        iat: expect.any(Number),
        exp: expect.any(Number),
        iss: ISSUER,
        aud: AUDIENCE,
      });
      expect((claims.exp as number) - (claims.iat as number)).toBe(3600);
      expect(decodeJwt(await tokenFor(app, key)).jti).not.toBe(claims.jti);
    });

    it('audits the issue with its jti, never the token', async () => {
      const { key, id } = await b.createKey(['read']);
      const response = await exchange(app, key);
      const { access_token: token } = (await response.json()) as { access_token: string };
      await b.runtime.auditLog.flush();
      const events = await tailEvents(b.runtime.database.db, { type: 'auth.token_issued', limit: 1000 });
      const event = events.find((e) => e.requestId === response.headers.get('x-request-id'));
      expect(event).toMatchObject({ outcome: 'success', keyId: id, tenantId: 'default', path: '/auth/token' });
      expect(event?.details).toMatchObject({ jti: decodeJwt(token).jti, scopes: ['read'] });
      expect(JSON.stringify(events)).not.toContain(token.split('.')[2]);
    });

    it('narrows scopes and shortens the lifetime on request, never beyond the configured one', async () => {
      const { key } = await b.createKey(['read', 'write']);
      const narrowed = await exchange(app, key, { scopes: ['read'], ttlSeconds: 60 });
      expect(narrowed.status).toBe(200);
      expect(await narrowed.json()).toMatchObject({ scope: 'read', expires_in: 60 });
      const token = decodeJwt(await tokenFor(app, key, { scopes: ['read'] }));
      expect(token.scopes).toEqual(['read']);

      const capped = await exchange(app, key, { ttlSeconds: 999_999 });
      expect(await capped.json()).toMatchObject({ expires_in: 3600 });
    });

    it('refuses scopes beyond the key with 403 insufficient_scope, audited', async () => {
      const { key, id } = await b.createKey(['read']);
      const response = await exchange(app, key, { scopes: ['read', 'admin'] });
      expect(response.status).toBe(403);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('insufficient_scope');
      await b.runtime.auditLog.flush();
      const denied = (await tailEvents(b.runtime.database.db, { type: 'authz.denied', limit: 1000 })).find((e) => e.keyId === id);
      expect(denied?.details).toMatchObject({ action: 'auth.token', reason: 'scope_beyond_key' });
    });

    it('grants a scope the key implies (read from write) but not one it does not', async () => {
      const { key } = await b.createKey(['write']);
      expect(decodeJwt(await tokenFor(app, key, { scopes: ['read'] })).scopes).toEqual(['read']);
      expect((await exchange(app, key, { scopes: ['llm'] })).status).toBe(403);
    });

    it('answers a malformed body with 400', async () => {
      const { key } = await b.createKey(['read']);
      for (const body of [{ scopes: 'read' }, { scopes: [] }, { scopes: ['NOT A SCOPE'] }, { ttlSeconds: -5 }, { ttlSeconds: 1.5 }, { key }]) {
        const response = await exchange(app, key, body);
        expect(response.status, JSON.stringify(body).slice(0, 40)).toBe(400);
      }
      const notJson = await app.request('/auth/token', { method: 'POST', headers: { ...bearer(key), 'content-type': 'application/json' }, body: '{"scopes":' });
      expect(((await notJson.json()) as { error: { code: string } }).error.code).toBe('invalid_json');
    });

    it('does not accept the key in the body or the URL', async () => {
      const { key } = await b.createKey(['read']);
      const inBody = await app.request('/auth/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key, api_key: key }) });
      expect(inBody.status).toBe(401);
      for (const query of ['api_key', 'key', 'access_token']) {
        const inUrl = await app.request(`/auth/token?${query}=${encodeURIComponent(key)}`, { method: 'POST' });
        expect(inUrl.status, query).toBe(401);
      }
    });

    it('refuses to let a JWT mint a JWT, with 403 forbidden', async () => {
      const { key } = await b.createKey(['read', 'write']);
      const token = await tokenFor(app, key);
      const response = await exchange(app, token);
      expect(response.status).toBe(403);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('forbidden');
      const withBody = await exchange(app, token, { scopes: ['read'] });
      expect(withBody.status).toBe(403);
    });

    it('refuses the bootstrap key: only store keys, whose revocation ends their tokens, can mint', async () => {
      const bootstrapKey = randomBytes(24).toString('base64url');
      const keyVerifier = new KeyVerifier({
        keys: b.runtime.keys,
        hasher: createKeyHasher(),
        staticCredentials: [{ secret: bootstrapKey, principal: staticPrincipal('bootstrap', 'bootstrap', 'bootstrap key', ['read', 'write']) }],
      });
      const { app: bootstrapApp } = tokenApp(b.runtime, { algorithm: 'HS256', secret }, { keyVerifier });
      expect((await bootstrapApp.request('/api/whoami', { headers: bearer(bootstrapKey) })).status).toBe(200);
      const response = await exchange(bootstrapApp, bootstrapKey);
      expect(response.status).toBe(403);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('forbidden');
    });
  });

  describe('refused tokens', () => {
    let key: string;
    let keyId: string;
    let good: string;
    beforeAll(async () => {
      ({ key, id: keyId } = await b.createKey(['read']));
      good = await tokenFor(app, key);
    });

    function claims(overrides: Record<string, unknown> = {}) {
      const now = Math.floor(Date.now() / 1000);
      return { sub: keyId, tenant: 'default', scopes: ['read'], jti: 'j1', iat: now, exp: now + 600, iss: ISSUER, aud: AUDIENCE, ...overrides };
    }

    it('accepts the untouched token (the control for every case below)', async () => {
      expect((await whoami(app, good)).status).toBe(200);
    });

    it('refuses an unsigned token (alg: none)', async () => {
      const unsigned = `${base64url({ alg: 'none', typ: 'at+jwt' })}.${base64url(claims())}.`;
      await expectRefused(unsigned, 'algorithm_not_allowed');
    });

    it('refuses a token signed with another secret', async () => {
      const forged = await new SignJWT(claims()).setProtectedHeader({ alg: 'HS256', typ: 'at+jwt' }).sign(Buffer.from(generateJwtSigningMaterial('HS256')));
      await expectRefused(forged, 'bad_signature');
    });

    it('refuses a token whose payload was changed after signing', async () => {
      const [header, , signature] = good.split('.');
      const tampered = `${header}.${base64url({ ...decodeJwt(good), scopes: ['admin'] })}.${signature}`;
      await expectRefused(tampered, 'bad_signature');
    });

    it('refuses a token for another audience', async () => {
      const other = createBulwarkJwt({ algorithm: 'HS256', secret, issuer: ISSUER, audience: 'someone-else' });
      await expectRefused((await other.issuer.issue({ keyId, tenant: 'default', scopes: ['read'] })).token, 'wrong_audience');
    });

    it('refuses a token from another issuer', async () => {
      const other = createBulwarkJwt({ algorithm: 'HS256', secret, issuer: 'https://evil.test', audience: AUDIENCE });
      await expectRefused((await other.issuer.issue({ keyId, tenant: 'default', scopes: ['read'] })).token, 'wrong_issuer');
    });

    it('refuses a token without the typ at+jwt header (an ID token signed with the same key)', async () => {
      const untyped = await new SignJWT(claims()).setProtectedHeader({ alg: 'HS256' }).sign(Buffer.from(secret));
      await expectRefused(untyped, 'wrong_type');
    });

    it('refuses a token missing a required claim', async () => {
      const { scopes: _scopes, ...withoutScopes } = claims();
      const token = await new SignJWT(withoutScopes).setProtectedHeader({ alg: 'HS256', typ: 'at+jwt' }).sign(Buffer.from(secret));
      await expectRefused(token, 'missing_claim');
    });

    it('tolerates 30 s of clock skew on expiry, and no more', async () => {
      const issueAt = (msAgo: number) =>
        createBulwarkJwt({ algorithm: 'HS256', secret, issuer: ISSUER, audience: AUDIENCE, ttlSeconds: 60, now: () => Date.now() - msAgo }).issuer.issue({ keyId, tenant: 'default', scopes: ['read'] });
      // Expired 10 s ago: inside the tolerance.
      expect((await whoami(app, (await issueAt(70_000)).token)).status).toBe(200);
      // Expired 40 s ago and an hour ago: refused.
      await expectRefused((await issueAt(100_000)).token, 'token_expired');
      await expectRefused((await issueAt(3_660_000)).token, 'token_expired');
    });

    it('refuses a JWT sent as X-API-Key: tokens travel as Bearer only', async () => {
      const response = await app.request('/api/whoami', { headers: { 'x-api-key': good } });
      expect(response.status).toBe(401);
    });

    it('gives one message for every refused token, and reports each failure to onFailure', async () => {
      const before = subject.failures.length;
      const messages = new Set<string>();
      for (const token of [`${good}x`, `${base64url({ alg: 'none' })}.${base64url(claims())}.`, good.replace(/\.[^.]+$/, '.AAAA')]) {
        const response = await whoami(app, token);
        expect(response.status).toBe(401);
        messages.add(((await response.json()) as { error: { message: string } }).error.message);
      }
      expect(messages.size).toBe(1);
      expect(subject.failures.length - before).toBe(3);
      // No credential guesses nothing, and a good token is no failure: neither counts toward a lockout.
      expect((await app.request('/api/whoami')).status).toBe(401);
      expect((await whoami(app, good)).status).toBe(200);
      expect(subject.failures.length - before).toBe(3);
    });
  });

  describe('a JWT dies with its key', () => {
    it('fails on the next request once this instance revokes the key', async () => {
      const { key, id } = await b.createKey(['read']);
      const token = await tokenFor(app, key);
      expect((await whoami(app, token)).status).toBe(200);
      expect((await b.runtime.keyService.revokeKey(OPERATOR, id)).ok).toBe(true);
      await expectRefused(token, 'revoked');
    });

    it('fails within a second when another instance revokes the key (the cache holds rows ≤500 ms)', async () => {
      const { key, id } = await b.createKey(['read']);
      const token = await tokenFor(app, key);
      expect((await whoami(app, token)).status).toBe(200);
      // Straight in the database, as another instance would: this process's cache is not told.
      await b.runtime.keys.revoke(id, new Date());
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      await expectRefused(token, 'revoked');
    });

    it('fails once the key expires', async () => {
      const { key } = await b.createKey(['read'], { expiresIn: '2s' });
      const response = await exchange(app, key);
      const body = (await response.json()) as { access_token: string; expires_in: number };
      expect(body.expires_in).toBeLessThanOrEqual(2);
      await new Promise((resolve) => setTimeout(resolve, 2_100));
      // The token's own exp is within the clock tolerance; the key's expiry still ends it.
      await expectRefused(body.access_token, 'expired');
    });

    it('carries only the scopes its key still holds after the key was narrowed', async () => {
      const { key, id } = await b.createKey(['read', 'write']);
      const token = await tokenFor(app, key);
      expect((await app.request('/api/act', { method: 'POST', headers: bearer(token) })).status).toBe(200);
      await b.runtime.database.db.updateTable('api_keys').set({ scopes: ['read'] }).where('id', '=', id).execute();
      b.runtime.publicVerifier.invalidate(id);
      const me = await whoami(app, token);
      expect(((await me.json()) as Principal).scopes).toEqual(['read']);
      const act = await app.request('/api/act', { method: 'POST', headers: bearer(token) });
      expect(act.status).toBe(403);
      expect(((await act.json()) as { error: { code: string } }).error.code).toBe('insufficient_scope');
    });

    it('is refused for a key id that was never in the store', async () => {
      const { issuer } = createBulwarkJwt({ algorithm: 'HS256', secret, issuer: ISSUER, audience: AUDIENCE });
      await expectRefused((await issuer.issue({ keyId: 'A'.repeat(16), tenant: 'default', scopes: ['admin'] })).token, 'unknown_key');
    });
  });

  describe('authenticate', () => {
    it('passes through a principal an earlier layer set (a cookie session)', async () => {
      const session: Principal = { kind: 'operator', tenant: 'default', keyId: 'session', keyName: 'dashboard session', scopes: ['admin'], expiresAt: null };
      const { app: sessionApp } = tokenApp(
        b.runtime,
        { algorithm: 'HS256', secret },
        {
          before: async (c, next) => {
            if (c.req.header('cookie') === 'session=ok') c.set('principal', session);
            await next();
          },
        },
      );
      const withSession = await sessionApp.request('/api/whoami', { headers: { cookie: 'session=ok' } });
      expect(withSession.status).toBe(200);
      expect(await withSession.json()).toMatchObject({ kind: 'operator', keyId: 'session' });
      expect((await sessionApp.request('/api/whoami', { headers: { cookie: 'session=forged' } })).status).toBe(401);
      // A session is not a key: it cannot mint tokens either.
      expect((await sessionApp.request('/auth/token', { method: 'POST', headers: { cookie: 'session=ok' } })).status).toBe(403);
    });
  });

  describe('GET /.well-known/jwks.json', () => {
    it('is public and empty for HS256, whose secret is never published', async () => {
      const response = await app.request('/.well-known/jwks.json');
      expect(response.status).toBe(200);
      const text = await response.text();
      expect(JSON.parse(text)).toEqual({ keys: [] });
      expect(text).not.toContain(secret);
    });
  });

  describe('asymmetric algorithms', () => {
    it.each(['ES256', 'EdDSA'] as JwtAlgorithm[])('%s: round trip, kid in the header, JWKS with only public parts', async (algorithm) => {
      const privateKeyPem = generateJwtSigningMaterial(algorithm);
      const { app: asymmetric } = tokenApp(b.runtime, { algorithm, privateKeyPem });
      const { key, id } = await b.createKey(['read']);
      const token = await tokenFor(asymmetric, key);
      const me = await whoami(asymmetric, token);
      expect(me.status).toBe(200);
      expect(((await me.json()) as Principal).keyId).toBe(id);

      const jwks = (await (await asymmetric.request('/.well-known/jwks.json')).json()) as { keys: JWK[] };
      expect(jwks.keys).toHaveLength(1);
      const [jwk] = jwks.keys as [JWK];
      expect(jwk).not.toHaveProperty('d');
      expect(Object.keys(jwk).sort()).toEqual(algorithm === 'ES256' ? ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y'] : ['alg', 'crv', 'kid', 'kty', 'use', 'x']);
      expect(decodeProtectedHeader(token)).toEqual({ alg: algorithm, typ: 'at+jwt', kid: jwk.kid });
      // Anyone holding the JWKS can verify Bulwark's tokens.
      const verified = await jwtVerify(token, createLocalJWKSet(jwks), { issuer: ISSUER, audience: AUDIENCE });
      expect(verified.payload.sub).toBe(id);
      // And a token from another key pair of the same algorithm is refused.
      const stranger = createBulwarkJwt({ algorithm, privateKeyPem: generateJwtSigningMaterial(algorithm), issuer: ISSUER, audience: AUDIENCE });
      expect((await whoami(asymmetric, (await stranger.issuer.issue({ keyId: id, tenant: 'default', scopes: ['read'] })).token)).status).toBe(401);
    });

    it('refuses an HS256 token signed with the public key when ES256 is configured (algorithm swap)', async () => {
      const privateKeyPem = generateJwtSigningMaterial('ES256');
      const { app: es256 } = tokenApp(b.runtime, { algorithm: 'ES256', privateKeyPem });
      const { id } = await b.createKey(['read']);
      const publicPem = createPublicKey(createPrivateKey(privateKeyPem)).export({ type: 'spki', format: 'pem' }).toString();
      const jwk = ((await (await es256.request('/.well-known/jwks.json')).json()) as { keys: JWK[] }).keys[0] as JWK;
      const now = Math.floor(Date.now() / 1000);
      const payload = { sub: id, tenant: 'default', scopes: ['read'], jti: 'swap', iat: now, exp: now + 600 };
      for (const hmacKey of [publicPem, JSON.stringify(jwk)]) {
        const swapped = await new SignJWT(payload)
          .setProtectedHeader({ alg: 'HS256', typ: 'at+jwt', kid: jwk.kid as string })
          .setIssuer(ISSUER)
          .setAudience(AUDIENCE)
          .sign(Buffer.from(hmacKey));
        const response = await whoami(es256, swapped);
        expect(response.status).toBe(401);
        await b.runtime.auditLog.flush();
        const events = await tailEvents(b.runtime.database.db, { type: 'auth.failure', limit: 1000 });
        expect(events.find((e) => e.requestId === response.headers.get('x-request-id'))?.details).toMatchObject({ reason: 'algorithm_not_allowed' });
      }
    });
  });
});

describe('createBulwarkJwt options', () => {
  const base = { issuer: ISSUER, audience: AUDIENCE };

  it('refuses an HS256 secret shorter than 32 bytes, naming BULWARK_JWT_SECRET and not echoing it', () => {
    const short = 'short-secret-of-31-bytes-xxxxxx';
    expect(Buffer.byteLength(short)).toBe(31);
    expect(() => createBulwarkJwt({ ...base, algorithm: 'HS256', secret: short })).toThrow(/BULWARK_JWT_SECRET.*32 bytes/);
    try {
      createBulwarkJwt({ ...base, algorithm: 'HS256', secret: short });
    } catch (err) {
      expect((err as Error).message).not.toContain(short);
    }
    expect(() => createBulwarkJwt({ ...base, algorithm: 'HS256', secret: 'x'.repeat(32) })).not.toThrow();
    expect(() => createBulwarkJwt({ ...base, algorithm: 'HS256' })).toThrow(/BULWARK_JWT_SECRET/);
  });

  it('refuses a private key that does not fit the algorithm, or is not PKCS#8', () => {
    expect(() => createBulwarkJwt({ ...base, algorithm: 'ES256', privateKeyPem: generateJwtSigningMaterial('EdDSA') })).toThrow(/P-256/);
    expect(() => createBulwarkJwt({ ...base, algorithm: 'EdDSA', privateKeyPem: generateJwtSigningMaterial('ES256') })).toThrow(/Ed25519/);
    const sec1 = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'sec1', format: 'pem' }).toString();
    expect(() => createBulwarkJwt({ ...base, algorithm: 'ES256', privateKeyPem: sec1 })).toThrow(/PKCS#8/);
    expect(() => createBulwarkJwt({ ...base, algorithm: 'ES256' })).toThrow(/BULWARK_JWT_PRIVATE_KEY_FILE/);
  });

  it('refuses an unknown algorithm, a clock tolerance over 30 s and a missing issuer or audience', () => {
    expect(() => createBulwarkJwt({ ...base, algorithm: 'none' as JwtAlgorithm, secret: 'x'.repeat(32) })).toThrow(/algorithm/);
    expect(() => createBulwarkJwt({ ...base, algorithm: 'HS256', secret: 'x'.repeat(32), clockToleranceSeconds: 31 })).toThrow(/clockToleranceSeconds/);
    expect(() => createBulwarkJwt({ ...base, issuer: '', algorithm: 'HS256', secret: 'x'.repeat(32) })).toThrow(/issuer/);
    expect(() => createBulwarkJwt({ ...base, audience: '', algorithm: 'HS256', secret: 'x'.repeat(32) })).toThrow(/audience/);
  });
});

describe('OIDC access tokens from a provider JWKS over HTTP', () => {
  const IDP = 'https://idp.test';
  let b: TestBulwark;
  let server: Server;
  let jwksUrl: string;
  let jwksRequests = 0;
  const provider = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kid = 'idp-key-1';
  let app: Hono<BulwarkEnv>;

  beforeAll(async () => {
    b = await startTestBulwark('pglite');
    const publicJwk = { ...(provider.publicKey.export({ format: 'jwk' }) as JWK), kid, alg: 'ES256', use: 'sig' };
    server = createServer((req, res) => {
      jwksRequests += 1;
      if (req.url !== '/jwks') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [publicJwk] }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    jwksUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks`;
    const oidc = oidcVerifier({
      jwksUrl,
      issuer: IDP,
      audience: AUDIENCE,
      algorithms: ['ES256'],
      scopeMap: { 'bulwark.read': ['read'], 'bulwark.write': ['write', 'llm'] },
      tenantClaim: 'org',
    });
    app = tokenApp(b.runtime, { algorithm: 'HS256', secret: generateJwtSigningMaterial('HS256') }, { verifiers: [oidc] }).app;
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => server?.close(() => resolve()));
    await b?.close();
  });

  function providerToken(claims: Record<string, unknown>, signWith = provider.privateKey, header: Record<string, unknown> = {}) {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ org: 'default', sub: 'user-42', iss: IDP, aud: AUDIENCE, iat: now, exp: now + 300, ...claims })
      .setProtectedHeader({ alg: 'ES256', kid, ...header })
      .sign(signWith);
  }

  it('accepts a provider token fetched against its JWKS, mapping known scopes and dropping the rest', async () => {
    const token = await providerToken({ scope: 'openid bulwark.read profile bulwark.write admin' });
    const response = await whoami(app, token);
    expect(response.status).toBe(200);
    const me = (await response.json()) as Principal;
    expect(me).toMatchObject({ kind: 'oidc', keyId: 'oidc:user-42', tenant: 'default' });
    expect([...me.scopes].sort()).toEqual(['llm', 'read', 'write']);
    expect(jwksRequests).toBeGreaterThan(0);
  });

  it('reads an array scope claim too, and gives no scope for unmapped ones', async () => {
    const arrayScopes = await whoami(app, await providerToken({ scope: ['bulwark.read'] }));
    expect(((await arrayScopes.json()) as Principal).scopes).toEqual(['read']);
    const unmapped = await whoami(app, await providerToken({ scope: 'openid admin' }));
    expect(unmapped.status).toBe(200);
    expect(((await unmapped.json()) as Principal).scopes).toEqual([]);
    const act = await app.request('/api/act', { method: 'POST', headers: bearer(await providerToken({ scope: 'openid admin' })) });
    expect(act.status).toBe(403);
  });

  it('cannot mint a Bulwark JWT with a provider token', async () => {
    const token = await providerToken({ scope: 'bulwark.write' });
    expect((await exchange(app, token)).status).toBe(403);
  });

  it('refuses a token signed by another key under the same kid, for another audience, expired, or without a valid tenant', async () => {
    const impostor = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const cases = [
      await providerToken({ scope: 'bulwark.read' }, impostor),
      await providerToken({ scope: 'bulwark.read', aud: 'another-api' }),
      await providerToken({ scope: 'bulwark.read', exp: Math.floor(Date.now() / 1000) - 120 }),
      await providerToken({ scope: 'bulwark.read', org: 'Not A Tenant!' }),
      await providerToken({ scope: 'bulwark.read' }, provider.privateKey, { kid: 'unknown-kid' }),
    ];
    for (const [index, token] of cases.entries()) {
      expect((await whoami(app, token)).status, `case ${index}`).toBe(401);
    }
  });

  it('answers 503, not 401, while the provider JWKS cannot be reached', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const deadUrl = `http://127.0.0.1:${(closed.address() as AddressInfo).port}/jwks`;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const unreachable = oidcVerifier({ jwksUrl: deadUrl, issuer: IDP, audience: AUDIENCE, algorithms: ['ES256'], scopeMap: {} });
    const { app: outage } = tokenApp(b.runtime, { algorithm: 'HS256', secret: generateJwtSigningMaterial('HS256') }, { verifiers: [unreachable] });
    const response = await whoami(outage, await providerToken({ scope: 'bulwark.read' }));
    expect(response.status).toBe(503);
    expect(response.headers.get('retry-after')).toBe('1');
  });

  it('refuses insecure configuration at build time', () => {
    expect(() => oidcVerifier({ jwksUrl: 'http://idp.example.com/jwks', issuer: IDP, audience: AUDIENCE })).toThrow(/https/);
    expect(() => oidcVerifier({ jwksUrl, issuer: IDP, audience: AUDIENCE, algorithms: ['HS256'] })).toThrow(/asymmetric/);
    expect(() => oidcVerifier({ jwksUrl, issuer: IDP, audience: AUDIENCE, scopeMap: { x: ['NOT VALID'] } })).toThrow(/scopeMap/);
  });
});
