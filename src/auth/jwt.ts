/**
 * Bulwark's short-lived access tokens (JWTs) and the pluggable verification of bearer tokens
 * that are not Bulwark keys. Pure core, no HTTP: `middleware.ts` and `routes/auth-token.ts`
 * are the edges.
 *
 * - `createBulwarkJwt(options)` builds the issuer and the signature/claims verifier for one
 *   algorithm (HS256 with BULWARK_JWT_SECRET, or ES256/EdDSA with a PKCS#8 private key whose
 *   public half is published as a JWK set).
 * - `bulwarkTokenVerifier` turns a verified Bulwark JWT into a principal only while its key is
 *   alive: a JWT dies with its key, and carries no scope its key no longer has.
 * - `oidcVerifier` accepts access tokens of an external OpenID provider through its JWKS.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, randomBytes } from 'node:crypto';
import { type JWK, type JWTPayload, type JWTVerifyGetKey, SignJWT, createRemoteJWKSet, decodeJwt, errors, jwtVerify } from 'jose';
import { SCOPE_PATTERN } from '../config/schema.js';
import { DEFAULT_TENANT, type Principal } from './principal.js';
import { hasScope } from './scopes.js';
import type { AuthFailureReason, VerifyResult } from './verify.js';

export const JWT_ALGORITHMS = ['HS256', 'ES256', 'EdDSA'] as const;
export type JwtAlgorithm = (typeof JWT_ALGORITHMS)[number];

/**
 * RFC 9068 §2.1: access tokens carry `typ: at+jwt`, so an ID token or any other JWT signed with
 * the same key can never be replayed as an access token (RFC 8725 §3.11, explicit typing).
 */
const ACCESS_TOKEN_TYPE = 'at+jwt';
/** The most clock skew ever tolerated; more would stretch every token's life. */
const MAX_CLOCK_TOLERANCE_SECONDS = 30;
/** One day: a JWT cannot be revoked by itself, so its life is kept short. */
const MAX_TTL_SECONDS = 86_400;
const MIN_SECRET_BYTES = 32;
const KEY_ID = /^[0-9A-Za-z]{16}$/;
const TENANT_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const MAX_SCOPES = 64;

export interface BulwarkJwtOptions {
  algorithm: JwtAlgorithm;
  /** HS256 only: at least 32 bytes (BULWARK_JWT_SECRET). */
  secret?: string | undefined;
  /** ES256 (P-256) or EdDSA (Ed25519) only: an unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"). */
  privateKeyPem?: string | undefined;
  /** The `iss` Bulwark signs and requires. */
  issuer: string;
  /** The `aud` Bulwark signs and requires. */
  audience: string;
  /** The longest life of an issued token (default one hour, at most one day). */
  ttlSeconds?: number;
  /** Allowed clock skew when verifying (default and maximum 30 s). */
  clockToleranceSeconds?: number;
  /** The clock (milliseconds); tests move it. */
  now?: () => number;
}

/** What a verified Bulwark JWT says. */
export interface BulwarkTokenClaims {
  keyId: string;
  tenant: string;
  scopes: string[];
  jti: string;
  issuedAt: Date;
  expiresAt: Date;
}

export interface IssueTokenInput {
  keyId: string;
  tenant: string;
  scopes: readonly string[];
  /** Shorter than the configured lifetime if given; never longer. */
  ttlSeconds?: number | undefined;
  /** The token expires no later than this (the key's own expiry). */
  notAfter?: Date | null | undefined;
}

export interface IssuedToken {
  /** The compact JWS. Secret: never log or audit it. */
  token: string;
  jti: string;
  scopes: string[];
  expiresIn: number;
  expiresAt: Date;
}

export interface JwkSet {
  keys: JWK[];
}

export interface JwtIssuer {
  readonly algorithm: JwtAlgorithm;
  /** The configured (longest) lifetime, in seconds. */
  readonly ttlSeconds: number;
  issue(input: IssueTokenInput): Promise<IssuedToken>;
  /** The public keys that verify Bulwark's tokens (RFC 7517 §5); empty for HS256. */
  jwks(): JwkSet;
}

/** Why a bearer token was refused. For the audit log only; clients all get one message. */
export type TokenFailureReason =
  | 'malformed_token'
  | 'algorithm_not_allowed'
  | 'bad_signature'
  | 'unknown_signing_key'
  | 'token_expired'
  | 'not_yet_valid'
  | 'wrong_issuer'
  | 'wrong_audience'
  | 'wrong_type'
  | 'missing_claim'
  | 'invalid_claims'
  | 'tenant_mismatch'
  | AuthFailureReason;

export type ClaimsResult = { ok: true; claims: BulwarkTokenClaims } | { ok: false; reason: TokenFailureReason };

export interface JwtVerifier {
  /** Checks signature (with the pinned algorithm), type, issuer, audience, lifetime and claims. */
  verify(token: string): Promise<ClaimsResult>;
}

export type TokenVerifyResult = { ok: true; principal: Principal } | { ok: false; reason: TokenFailureReason; keyId?: string; tenant?: string };

/** A way to accept bearer tokens other than Bulwark keys (STYLE.md 4: one interface, small implementations). */
export interface TokenVerifier {
  /** For the audit log: which verifier refused or accepted. */
  readonly name: string;
  verify(token: string): Promise<TokenVerifyResult>;
}

/** The token could not be checked (an identity provider's JWKS is unreachable): not the client's fault. */
export class TokenVerifierUnavailableError extends Error {
  constructor(verifier: string, cause: unknown) {
    super(`${verifier}: the token verification keys cannot be fetched`, { cause });
    this.name = 'TokenVerifierUnavailableError';
  }
}

interface SigningKeys {
  sign: KeyObject | Uint8Array;
  verify: KeyObject | Uint8Array;
  kid: string | undefined;
  publicJwk: JWK | undefined;
}

/** Builds Bulwark's JWT issuer and verifier; a bad option throws here, naming the setting. */
export function createBulwarkJwt(options: BulwarkJwtOptions): { issuer: JwtIssuer; verifier: JwtVerifier } {
  const { algorithm, issuer: iss, audience: aud, ttlSeconds = 3600, clockToleranceSeconds = MAX_CLOCK_TOLERANCE_SECONDS, now = Date.now } = options;
  if (!(JWT_ALGORITHMS as readonly string[]).includes(algorithm)) {
    throw new Error(`jwt: algorithm must be one of ${JWT_ALGORITHMS.join(', ')} (BULWARK_JWT_ALGORITHM)`);
  }
  if (typeof iss !== 'string' || !iss) throw new Error('jwt: issuer is required (jwt.issuer)');
  if (typeof aud !== 'string' || !aud) throw new Error('jwt: audience is required (jwt.audience)');
  if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > MAX_TTL_SECONDS) {
    throw new Error(`jwt: ttlSeconds must be an integer from 1 to ${MAX_TTL_SECONDS} (BULWARK_JWT_TTL_SECONDS)`);
  }
  if (!Number.isInteger(clockToleranceSeconds) || clockToleranceSeconds < 0 || clockToleranceSeconds > MAX_CLOCK_TOLERANCE_SECONDS) {
    throw new Error(`jwt: clockToleranceSeconds must be an integer from 0 to ${MAX_CLOCK_TOLERANCE_SECONDS}`);
  }
  const keys = signingKeys(algorithm, options.secret, options.privateKeyPem);

  const issuer: JwtIssuer = {
    algorithm,
    ttlSeconds,
    async issue(input) {
      if (!KEY_ID.test(input.keyId)) throw new Error('jwt: only store keys can be issued tokens');
      const scopes = [...new Set(input.scopes)];
      const bad = scopes.filter((s) => !SCOPE_PATTERN.test(s));
      if (bad.length > 0 || scopes.length > MAX_SCOPES) throw new Error('jwt: invalid scopes');
      const requested = input.ttlSeconds ?? ttlSeconds;
      if (!Number.isInteger(requested) || requested < 1) throw new Error('jwt: ttlSeconds must be a positive integer');
      const issuedAt = Math.floor(now() / 1000);
      let expiresAt = issuedAt + Math.min(requested, ttlSeconds);
      if (input.notAfter) expiresAt = Math.min(expiresAt, Math.floor(input.notAfter.getTime() / 1000));
      if (expiresAt <= issuedAt) throw new Error('jwt: the key expires before a token could be used');
      const jti = randomBytes(16).toString('base64url');
      const token = await new SignJWT({ tenant: input.tenant, scopes })
        .setProtectedHeader({ alg: algorithm, typ: ACCESS_TOKEN_TYPE, ...(keys.kid ? { kid: keys.kid } : {}) })
        .setSubject(input.keyId)
        .setJti(jti)
        .setIssuedAt(issuedAt)
        .setExpirationTime(expiresAt)
        .setIssuer(iss)
        .setAudience(aud)
        .sign(keys.sign);
      return { token, jti, scopes, expiresIn: expiresAt - issuedAt, expiresAt: new Date(expiresAt * 1000) };
    },
    jwks() {
      return { keys: keys.publicJwk ? [{ ...keys.publicJwk }] : [] };
    },
  };

  const verifier: JwtVerifier = {
    async verify(token) {
      // Routing only, never trusted: a token for another issuer is not Bulwark's to judge.
      const claimedIssuer = unverifiedIssuer(token);
      if (claimedIssuer === undefined) return { ok: false, reason: 'malformed_token' };
      if (claimedIssuer !== iss) return { ok: false, reason: 'wrong_issuer' };
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, keys.verify, {
          algorithms: [algorithm],
          typ: ACCESS_TOKEN_TYPE,
          issuer: iss,
          audience: aud,
          clockTolerance: clockToleranceSeconds,
          requiredClaims: ['exp', 'iat', 'sub', 'jti', 'tenant', 'scopes'],
          currentDate: new Date(now()),
        }));
      } catch (err) {
        return { ok: false, reason: joseFailure(err) };
      }
      const { sub, tenant, scopes, jti, iat, exp } = payload as JWTPayload & { tenant?: unknown; scopes?: unknown };
      if (
        typeof sub !== 'string' ||
        !KEY_ID.test(sub) ||
        typeof tenant !== 'string' ||
        !TENANT_ID.test(tenant) ||
        typeof jti !== 'string' ||
        typeof iat !== 'number' ||
        typeof exp !== 'number' ||
        !isScopeList(scopes)
      ) {
        return { ok: false, reason: 'invalid_claims' };
      }
      return { ok: true, claims: { keyId: sub, tenant, scopes: [...scopes], jti, issuedAt: new Date(iat * 1000), expiresAt: new Date(exp * 1000) } };
    },
  };

  return { issuer, verifier };
}

/**
 * Fresh signing material for development, which the runtime keeps in the data dir (mode 600)
 * when none is configured: a 32-byte random secret for HS256, a PKCS#8 PEM private key otherwise.
 */
export function generateJwtSigningMaterial(algorithm: JwtAlgorithm): string {
  switch (algorithm) {
    case 'HS256':
      return randomBytes(32).toString('base64url');
    case 'ES256':
      return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    case 'EdDSA':
      return generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    default:
      throw new Error(`jwt: algorithm must be one of ${JWT_ALGORITHMS.join(', ')}`);
  }
}

function signingKeys(algorithm: JwtAlgorithm, secret: string | undefined, privateKeyPem: string | undefined): SigningKeys {
  if (algorithm === 'HS256') {
    if (privateKeyPem !== undefined) throw new Error('jwt: HS256 uses BULWARK_JWT_SECRET; a private key (BULWARK_JWT_PRIVATE_KEY_FILE) is for ES256 or EdDSA');
    if (typeof secret !== 'string' || !secret) throw new Error('BULWARK_JWT_SECRET is required for HS256 tokens');
    const bytes = Buffer.byteLength(secret, 'utf8');
    // RFC 7518 §3.2: the HMAC key must be at least as long as the hash output (256 bits).
    if (bytes < MIN_SECRET_BYTES) throw new Error(`BULWARK_JWT_SECRET must be at least ${MIN_SECRET_BYTES} bytes (it has ${bytes})`);
    const key = new Uint8Array(Buffer.from(secret, 'utf8'));
    return { sign: key, verify: key, kid: undefined, publicJwk: undefined };
  }
  if (secret !== undefined) throw new Error(`jwt: ${algorithm} signs with a private key (BULWARK_JWT_PRIVATE_KEY_FILE); unset BULWARK_JWT_SECRET or choose HS256`);
  if (typeof privateKeyPem !== 'string' || !privateKeyPem.includes('-----BEGIN PRIVATE KEY-----')) {
    throw new Error(`BULWARK_JWT_PRIVATE_KEY_FILE must be an unencrypted PKCS#8 PEM private key ("-----BEGIN PRIVATE KEY-----") for ${algorithm}`);
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: privateKeyPem, format: 'pem' });
  } catch {
    // The parser's message could quote the key material: say only what is wrong.
    throw new Error('BULWARK_JWT_PRIVATE_KEY_FILE could not be read as a PKCS#8 PEM private key');
  }
  const fits =
    algorithm === 'ES256'
      ? privateKey.asymmetricKeyType === 'ec' && privateKey.asymmetricKeyDetails?.namedCurve === 'prime256v1'
      : privateKey.asymmetricKeyType === 'ed25519';
  if (!fits) throw new Error(`BULWARK_JWT_PRIVATE_KEY_FILE must be ${algorithm === 'ES256' ? 'an EC P-256' : 'an Ed25519'} key for ${algorithm}`);
  const publicKey = createPublicKey(privateKey);
  const exported = publicKey.export({ format: 'jwk' }) as JWK;
  const kid = jwkThumbprint(exported);
  // Only the public members: never `d`.
  const publicJwk: JWK =
    exported.kty === 'EC'
      ? { kty: 'EC', crv: exported.crv as string, x: exported.x as string, y: exported.y as string, kid, alg: algorithm, use: 'sig' }
      : { kty: 'OKP', crv: exported.crv as string, x: exported.x as string, kid, alg: algorithm, use: 'sig' };
  return { sign: privateKey, verify: publicKey, kid, publicJwk };
}

/** RFC 7638 JWK thumbprint: SHA-256 of the required members in lexicographic order. */
function jwkThumbprint(jwk: JWK): string {
  const members = jwk.kty === 'EC' ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y } : { crv: jwk.crv, kty: jwk.kty, x: jwk.x };
  return createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

function isScopeList(value: unknown): value is string[] {
  return Array.isArray(value) && value.length <= MAX_SCOPES && value.every((s) => typeof s === 'string' && SCOPE_PATTERN.test(s));
}

/** The `iss` a token claims, read without verifying anything; undefined when it is not a JWT. */
function unverifiedIssuer(token: string): string | undefined {
  try {
    const { iss } = decodeJwt(token);
    return typeof iss === 'string' ? iss : '';
  } catch {
    return undefined;
  }
}

/** Maps jose's errors to audit reasons; anything else is a bug and is rethrown. */
function joseFailure(err: unknown): TokenFailureReason {
  if (err instanceof TokenVerifierUnavailableError) throw err;
  if (err instanceof errors.JWTExpired) return 'token_expired';
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.reason === 'missing') return 'missing_claim';
    if (err.claim === 'iss') return 'wrong_issuer';
    if (err.claim === 'aud') return 'wrong_audience';
    if (err.claim === 'nbf') return 'not_yet_valid';
    if (err.claim === 'typ') return 'wrong_type';
    return 'invalid_claims';
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return 'algorithm_not_allowed';
  if (err instanceof errors.JWSSignatureVerificationFailed) return 'bad_signature';
  if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys) return 'unknown_signing_key';
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid || err instanceof errors.JOSENotSupported) return 'malformed_token';
  throw err;
}

/** Looks a key up by id (KeyVerifier.verifyKeyId: the cached path that `invalidate` clears). */
export interface KeyIdVerifier {
  verifyKeyId(keyId: string): Promise<VerifyResult>;
}

export interface BulwarkTokenVerifierOptions {
  jwt: JwtVerifier;
  keys: KeyIdVerifier;
}

/**
 * Bulwark's own JWTs. The token proves who its key is; the key decides whether that still
 * counts: unknown, revoked or expired keys fail (within the key cache's ≤500 ms, at once when
 * this process revoked it), and the token's scopes are cut to what the key holds now.
 */
export function bulwarkTokenVerifier(options: BulwarkTokenVerifierOptions): TokenVerifier {
  const { jwt, keys } = options;
  if (!jwt || !keys) throw new Error('bulwarkTokenVerifier: jwt and keys are required');
  return {
    name: 'bulwark-jwt',
    async verify(token) {
      const verified = await jwt.verify(token);
      if (!verified.ok) return verified;
      const { claims } = verified;
      const key = await keys.verifyKeyId(claims.keyId);
      if (!key.ok) return { ok: false, reason: key.reason, keyId: claims.keyId, ...(key.tenant ? { tenant: key.tenant } : {}) };
      const principal = key.principal;
      if (principal.tenant !== claims.tenant) return { ok: false, reason: 'tenant_mismatch', keyId: claims.keyId, tenant: principal.tenant };
      const expiresAt = principal.expiresAt && principal.expiresAt < claims.expiresAt ? principal.expiresAt : claims.expiresAt;
      return {
        ok: true,
        // The token acts as its key (same id, tenant and limits), narrowed.
        principal: { ...principal, kind: 'jwt', scopes: claims.scopes.filter((s) => hasScope(principal.scopes, s)), expiresAt },
      };
    },
  };
}

export interface OidcVerifierOptions {
  /** The provider's JWKS (https; http only on loopback, for tests and local providers). */
  jwksUrl: string | URL;
  issuer: string;
  audience: string;
  /** Asymmetric algorithms only (default RS256 and ES256); HS* and `none` are refused. */
  algorithms?: readonly string[];
  /** The claim holding the provider's scopes: a space-separated string or an array. */
  scopesClaim?: string;
  /**
   * Provider scope → Bulwark scopes. Scopes not in the map are dropped, so with no map the
   * principal gets no scope at all: a provider never grants Bulwark scopes by name collision.
   */
  scopeMap?: Readonly<Record<string, readonly string[]>>;
  /** A claim naming the tenant; without it every principal lives in `defaultTenant`. */
  tenantClaim?: string;
  defaultTenant?: string;
  clockToleranceSeconds?: number;
  /** JWKS fetch timeout (default 5 s). */
  timeoutMs?: number;
}

const ASYMMETRIC_ALGORITHMS = new Set(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519']);
const LOOPBACK_HOSTS = new Set(['127.0.0.1', '[::1]', 'localhost']);

/** Access tokens of an external OpenID provider, verified against its JWKS. */
export function oidcVerifier(options: OidcVerifierOptions): TokenVerifier {
  const {
    issuer,
    audience,
    algorithms = ['RS256', 'ES256'],
    scopesClaim = 'scope',
    scopeMap = {},
    tenantClaim,
    defaultTenant = DEFAULT_TENANT,
    clockToleranceSeconds = MAX_CLOCK_TOLERANCE_SECONDS,
    timeoutMs = 5_000,
  } = options;
  let url: URL;
  try {
    url = new URL(options.jwksUrl);
  } catch {
    throw new Error('oidc: jwksUrl must be a URL');
  }
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname))) {
    throw new Error('oidc: jwksUrl must use https (http is allowed only on loopback)');
  }
  if (!issuer) throw new Error('oidc: issuer is required');
  if (!audience) throw new Error('oidc: audience is required');
  if (algorithms.length === 0 || algorithms.some((a) => !ASYMMETRIC_ALGORITHMS.has(a))) {
    throw new Error(`oidc: algorithms must be asymmetric JWS algorithms (${[...ASYMMETRIC_ALGORITHMS].join(', ')})`);
  }
  if (!scopesClaim) throw new Error('oidc: scopesClaim must not be empty');
  for (const [external, mapped] of Object.entries(scopeMap)) {
    const bad = mapped.filter((s) => !SCOPE_PATTERN.test(s));
    if (bad.length > 0) throw new Error(`oidc: scopeMap.${external} holds invalid Bulwark scopes: ${bad.join(', ')}`);
  }
  if (!TENANT_ID.test(defaultTenant)) throw new Error('oidc: defaultTenant is not a valid tenant id');
  if (!Number.isInteger(clockToleranceSeconds) || clockToleranceSeconds < 0 || clockToleranceSeconds > MAX_CLOCK_TOLERANCE_SECONDS) {
    throw new Error(`oidc: clockToleranceSeconds must be an integer from 0 to ${MAX_CLOCK_TOLERANCE_SECONDS}`);
  }
  const name = 'oidc';
  const remote = createRemoteJWKSet(url, { timeoutDuration: timeoutMs });
  // jose reports an unreachable or broken JWKS as a fetch error: that is an outage, not a bad token.
  const getKey: JWTVerifyGetKey = async (header, token) => {
    try {
      return await remote(header, token);
    } catch (err) {
      if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys) throw err;
      throw new TokenVerifierUnavailableError(name, err);
    }
  };
  const scopeMapEntries = new Map(Object.entries(scopeMap));

  return {
    name,
    async verify(token) {
      // Not the provider's token: do not make it fetch keys for it.
      const claimedIssuer = unverifiedIssuer(token);
      if (claimedIssuer === undefined) return { ok: false, reason: 'malformed_token' };
      if (claimedIssuer !== issuer) return { ok: false, reason: 'wrong_issuer' };
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, getKey, {
          algorithms: [...algorithms],
          issuer,
          audience,
          clockTolerance: clockToleranceSeconds,
          requiredClaims: ['exp', 'sub'],
        }));
      } catch (err) {
        return { ok: false, reason: joseFailure(err) };
      }
      const { sub, exp } = payload;
      if (typeof sub !== 'string' || !sub || sub.length > 255 || !/^[\x21-\x7e]+$/.test(sub) || typeof exp !== 'number') {
        return { ok: false, reason: 'invalid_claims' };
      }
      let tenant = defaultTenant;
      if (tenantClaim) {
        const claimed = payload[tenantClaim];
        if (typeof claimed !== 'string' || !TENANT_ID.test(claimed)) return { ok: false, reason: 'invalid_claims', keyId: `oidc:${sub}` };
        tenant = claimed;
      }
      const raw = payload[scopesClaim];
      // RFC 8693 §4.2 / RFC 9068 §2.2.3: `scope` is space-separated; some providers send an array.
      const external = typeof raw === 'string' ? raw.split(' ').filter(Boolean) : Array.isArray(raw) ? raw.filter((s): s is string => typeof s === 'string') : [];
      const scopes = [...new Set(external.flatMap((s) => scopeMapEntries.get(s) ?? []))];
      return {
        ok: true,
        // The `oidc:` keyId can never name a store key.
        principal: { kind: 'oidc', tenant, keyId: `oidc:${sub}`, keyName: `OIDC subject ${sub}`, scopes, expiresAt: new Date(exp * 1000) },
      };
    },
  };
}
