/**
 * Credential verification, the pure core of authentication: a presented credential in, a
 * `Principal` or an `AuthFailure` out. Nothing here knows about HTTP; `middleware.ts` is the
 * edge that turns results into statuses and headers.
 *
 * A store key costs one indexed lookup by its public id, cached in process for at most
 * `cacheMs` (so a revocation by another process lands within that time) and dropped at once
 * when this process revokes it.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { KeyRepository, KeyRow } from '../store/repositories.js';
import { type KeyHasher, parseKey } from './keys.js';
import { DEFAULT_TENANT, type Principal } from './principal.js';

export type AuthFailureReason = 'unknown_key' | 'wrong_secret' | 'wrong_environment' | 'expired' | 'revoked' | 'not_a_key';

/** Why a credential was refused. The reason is for the audit log; clients all get one message. */
export interface AuthFailure {
  ok: false;
  reason: AuthFailureReason;
  keyId?: string;
  tenant?: string;
}

export type VerifyResult = { ok: true; principal: Principal } | AuthFailure;

export interface StaticCredential {
  /** The secret as configured; only its hash is kept. */
  secret: string;
  principal: Principal;
}

export interface KeyVerifierOptions {
  keys: KeyRepository;
  hasher: KeyHasher;
  /** How long a looked-up key row may be reused; 0 disables the cache. */
  cacheMs?: number;
  /** Credentials that are not in the store: the bootstrap key, the admin key, the admin token. */
  staticCredentials?: readonly StaticCredential[];
  /** Called with each successful use of a store key (for last_used_at, off the hot path). */
  onKeyUsed?: (keyId: string, atMs: number) => void;
  now?: () => number;
  maxCacheEntries?: number;
  /**
   * While the store cannot be reached, a key verified within this long is still accepted from
   * the cache (default 60 s), so a database restart does not take the gateway down with it.
   * Revocations made during the outage land once the store answers again.
   */
  staleIfErrorMs?: number;
  /**
   * The only key prefix accepted (`bwk_live_` in production, `bwk_test_` elsewhere), so a test
   * key made against a shared database never opens a production deployment.
   */
  prefix?: string;
}

interface CacheEntry {
  row: KeyRow;
  fetchedAt: number;
}

export class KeyVerifier {
  readonly #keys: KeyRepository;
  readonly #hasher: KeyHasher;
  readonly #cacheMs: number;
  readonly #maxEntries: number;
  readonly #static: { digest: Buffer; principal: Principal }[];
  readonly #onKeyUsed: ((keyId: string, atMs: number) => void) | undefined;
  readonly #now: () => number;
  readonly #cache = new Map<string, CacheEntry>();
  /** Bumped by `invalidate`, so a lookup that was in flight during a revocation is not cached. */
  readonly #generations = new Map<string, number>();
  readonly #prefix: string | undefined;
  readonly #staleIfErrorMs: number;

  constructor(options: KeyVerifierOptions) {
    const { cacheMs = 500, maxCacheEntries = 10_000 } = options;
    if (!Number.isInteger(cacheMs) || cacheMs < 0) throw new Error('KeyVerifier: cacheMs must be a non-negative integer');
    this.#keys = options.keys;
    this.#hasher = options.hasher;
    this.#cacheMs = cacheMs;
    this.#maxEntries = maxCacheEntries;
    this.#static = (options.staticCredentials ?? []).map((c) => ({ digest: sha256(c.secret), principal: c.principal }));
    this.#onKeyUsed = options.onKeyUsed;
    this.#now = options.now ?? Date.now;
    this.#prefix = options.prefix;
    this.#staleIfErrorMs = options.staleIfErrorMs ?? 60_000;
  }

  async verify(presented: string): Promise<VerifyResult> {
    const parsed = parseKey(presented);
    if (!parsed) return this.#verifyStatic(presented);

    const row = await this.#lookup(parsed.id);
    if (!row) {
      // An operator may have chosen a bootstrap or admin key in Bulwark's own format.
      const fromConfig = this.#verifyStatic(presented);
      return fromConfig.ok ? fromConfig : { ok: false, reason: 'unknown_key', keyId: parsed.id };
    }
    if (row.prefix !== parsed.prefix || !this.#hasher.verify(parsed.secret, row.key_hash, row.hash_alg)) {
      return { ok: false, reason: 'wrong_secret', keyId: row.id, tenant: row.tenant_id };
    }
    if (this.#prefix && parsed.prefix !== this.#prefix) {
      return { ok: false, reason: 'wrong_environment', keyId: row.id, tenant: row.tenant_id };
    }
    const now = this.#now();
    if (row.revoked_at && row.revoked_at.getTime() <= now) return { ok: false, reason: 'revoked', keyId: row.id, tenant: row.tenant_id };
    if (row.expires_at && row.expires_at.getTime() <= now) return { ok: false, reason: 'expired', keyId: row.id, tenant: row.tenant_id };

    this.#onKeyUsed?.(row.id, now);
    return { ok: true, principal: rowPrincipal(row) };
  }

  /**
   * The current state of a store key named by its id alone, for credentials derived from a key
   * (Bulwark JWTs): the same cached lookup as `verify` (so `invalidate` and `cacheMs` bound how
   * long a revoked key's tokens live) and the same revocation, expiry and environment checks,
   * but no secret, since the caller has already proved possession another way (a signature).
   */
  async verifyKeyId(id: string): Promise<VerifyResult> {
    if (!KEY_ID.test(id)) return { ok: false, reason: 'unknown_key' };
    const row = await this.#lookup(id);
    if (!row) return { ok: false, reason: 'unknown_key', keyId: id };
    if (this.#prefix && row.prefix !== this.#prefix) return { ok: false, reason: 'wrong_environment', keyId: row.id, tenant: row.tenant_id };
    const now = this.#now();
    if (row.revoked_at && row.revoked_at.getTime() <= now) return { ok: false, reason: 'revoked', keyId: row.id, tenant: row.tenant_id };
    if (row.expires_at && row.expires_at.getTime() <= now) return { ok: false, reason: 'expired', keyId: row.id, tenant: row.tenant_id };
    this.#onKeyUsed?.(row.id, now);
    return { ok: true, principal: rowPrincipal(row) };
  }

  /** Drops a key from the cache; the next request looks it up again. */
  invalidate(keyId: string): void {
    this.#cache.delete(keyId);
    this.#generations.set(keyId, (this.#generations.get(keyId) ?? 0) + 1);
  }

  #verifyStatic(presented: string): VerifyResult {
    if (this.#static.length === 0) return { ok: false, reason: 'not_a_key' };
    const digest = sha256(presented);
    // Compare against every static credential so timing does not tell which one matched.
    let match: Principal | undefined;
    for (const credential of this.#static) {
      if (timingSafeEqual(digest, credential.digest) && !match) match = credential.principal;
    }
    return match ? { ok: true, principal: match } : { ok: false, reason: 'not_a_key' };
  }

  async #lookup(id: string): Promise<KeyRow | undefined> {
    const now = this.#now();
    const cached = this.#cache.get(id);
    if (cached && now - cached.fetchedAt < this.#cacheMs) return cached.row;
    const generation = this.#generations.get(id);
    let row: KeyRow | undefined;
    try {
      row = await this.#keys.findById(id);
    } catch (err) {
      if (cached && now - cached.fetchedAt < this.#staleIfErrorMs) return cached.row;
      throw new StoreUnavailableError(err);
    }
    if (row && this.#cacheMs > 0 && this.#generations.get(id) === generation) {
      this.#cache.delete(id);
      this.#cache.set(id, { row, fetchedAt: now });
      if (this.#cache.size > this.#maxEntries) this.#cache.delete(this.#cache.keys().next().value as string);
    } else {
      this.#cache.delete(id);
    }
    return row;
  }
}

/** The store could not be asked about a key that is not in the cache. */
export class StoreUnavailableError extends Error {
  constructor(cause: unknown) {
    super('the key store cannot be reached', { cause });
    this.name = 'StoreUnavailableError';
  }
}

/** A store key's public id, as `parseKey` accepts it. */
const KEY_ID = /^[0-9A-Za-z]{16}$/;

/** The principal of a store key row (as `verify` builds it). */
function rowPrincipal(row: KeyRow): Principal {
  return {
    kind: 'key',
    tenant: row.tenant_id,
    keyId: row.id,
    keyName: row.name,
    scopes: row.scopes,
    expiresAt: row.expires_at,
    ...(row.limits && Object.keys(row.limits).length > 0 ? { limits: row.limits } : {}),
    ...(row.allowed_cidrs.length > 0 ? { allowedCidrs: row.allowed_cidrs } : {}),
  };
}

function sha256(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/** The principal of a static credential from config. */
export function staticPrincipal(kind: 'bootstrap' | 'operator', keyId: string, keyName: string, scopes: readonly string[]): Principal {
  return { kind, tenant: DEFAULT_TENANT, keyId, keyName, scopes, expiresAt: null };
}
