/**
 * API keys: format, generation, parsing and hashing (src/auth/keys.ts), the scope vocabulary
 * (src/auth/scopes.ts), durations, and the KeyVerifier (src/auth/verify.ts) on real
 * repositories on PGlite and PostgreSQL — including a revocation by another process and the
 * guarantee that only a hash of a key is stored.
 *
 * Every key and secret is generated at run time; no secret-shaped literal lives here.
 */
import { randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEventInput } from '../src/audit/log.js';
import { type Actor, KeyService, parseDuration } from '../src/auth/key-service.js';
import { KEY_PREFIXES, createKeyHasher, generateKey, generateKeyId, looksLikeBulwarkKey, parseKey } from '../src/auth/keys.js';
import { hasScope, isValidScope, parseScopes } from '../src/auth/scopes.js';
import { KeyVerifier, StoreUnavailableError, staticPrincipal } from '../src/auth/verify.js';
import { type Database, openDatabase } from '../src/store/database.js';
import { KeyRepository, TenantRepository } from '../src/store/repositories.js';
import { ENGINES, POSTGRES_URL, type TestDatabase, openTestDatabase } from './helpers/database.js';

const KEY_FORMAT = /^bwk_(live|test)_[0-9A-Za-z]{16}_[0-9A-Za-z]{43}$/;
const OPERATOR: Actor = { principal: staticPrincipal('operator', 'op', 'test operator', ['admin']), via: 'cli' };

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('generateKey', () => {
  it('produces keys in the documented format for both prefixes', () => {
    for (const prefix of KEY_PREFIXES) {
      const key = generateKey(prefix);
      expect(key.plaintext).toMatch(KEY_FORMAT);
      expect(key.plaintext).toBe(`${prefix}${key.id}_${key.secret}`);
      expect(key.prefix).toBe(prefix);
      expect(looksLikeBulwarkKey(key.plaintext)).toBe(true);
    }
  });

  it('never repeats a key, a secret or an id over 1000 draws', () => {
    const keys = Array.from({ length: 1000 }, () => generateKey('bwk_live_'));
    expect(new Set(keys.map((k) => k.plaintext)).size).toBe(1000);
    expect(new Set(keys.map((k) => k.secret)).size).toBe(1000);
    expect(new Set(keys.map((k) => k.id)).size).toBe(1000);
    const ids = Array.from({ length: 1000 }, generateKeyId);
    expect(new Set(ids).size).toBe(1000);
    for (const id of ids) expect(id).toMatch(/^[0-9A-Za-z]{16}$/);
  });

  it('uses the whole base62 alphabet in secrets, not a biased subset', () => {
    const chars = new Set(Array.from({ length: 200 }, () => generateKey('bwk_test_').secret).join(''));
    expect(chars.size).toBe(62);
  });
});

describe('parseKey', () => {
  it('round-trips a generated key', () => {
    const key = generateKey('bwk_test_');
    expect(parseKey(key.plaintext)).toEqual({ prefix: 'bwk_test_', id: key.id, secret: key.secret });
  });

  it('rejects wrong lengths, prefixes, characters and surrounding text', () => {
    const { id, secret, plaintext } = generateKey('bwk_live_');
    const bad = [
      '',
      `bwk_live_${id.slice(1)}_${secret}`,
      `bwk_live_${id}x_${secret}`,
      `bwk_live_${id}_${secret.slice(1)}`,
      `bwk_live_${id}_${secret}x`,
      `bwk_prod_${id}_${secret}`,
      `BWK_LIVE_${id}_${secret}`,
      `sk_live_${id}_${secret}`,
      `bwk_live_${id}-${secret}`,
      `bwk_live_${id.slice(1)}-_${secret}`,
      `bwk_live_${id}_${secret.slice(1)}+`,
      `bwk_live_${id}_${secret.slice(1)}=`,
      ` ${plaintext}`,
      `${plaintext}\n`,
      `Bearer ${plaintext}`,
    ];
    for (const candidate of bad) expect(parseKey(candidate), JSON.stringify(candidate)).toBeUndefined();
  });
});

describe('createKeyHasher', () => {
  const secret = () => generateKey('bwk_live_').secret;

  it('hashes with plain SHA-256 without a server secret and verifies only the right secret', () => {
    const hasher = createKeyHasher();
    const s = secret();
    const stored = hasher.hash(s);
    expect(hasher.algorithm).toBe('sha256');
    expect(stored).toMatch(/^[0-9a-f]{64}$/);
    expect(hasher.verify(s, stored, 'sha256')).toBe(true);
    expect(hasher.verify(secret(), stored, 'sha256')).toBe(false);
    expect(hasher.verify(s, stored, 'hmac-sha256')).toBe(false);
    expect(hasher.verify(s, stored, 'md5')).toBe(false);
    expect(hasher.verify(s, stored.slice(0, 62), 'sha256')).toBe(false);
    expect(hasher.verify(s, `${stored}00`, 'sha256')).toBe(false);
    expect(hasher.verify(s, '', 'sha256')).toBe(false);
  });

  it('hashes with HMAC under a server secret, which a different server secret cannot verify', () => {
    const serverSecret = randomBytes(32).toString('base64');
    const hasher = createKeyHasher(serverSecret);
    const s = secret();
    const stored = hasher.hash(s);
    expect(hasher.algorithm).toBe('hmac-sha256');
    expect(stored).not.toBe(createKeyHasher().hash(s));
    expect(hasher.verify(s, stored, 'hmac-sha256')).toBe(true);
    expect(hasher.verify(secret(), stored, 'hmac-sha256')).toBe(false);
    expect(hasher.verify(s, stored, 'sha256')).toBe(false);
    expect(createKeyHasher(randomBytes(32).toString('base64')).verify(s, stored, 'hmac-sha256')).toBe(false);
    expect(createKeyHasher().verify(s, stored, 'hmac-sha256')).toBe(false);
  });

  it('still verifies keys stored as plain SHA-256 after a server secret is configured', () => {
    const s = secret();
    const legacy = createKeyHasher().hash(s);
    expect(createKeyHasher(randomBytes(32).toString('hex')).verify(s, legacy, 'sha256')).toBe(true);
  });
});

describe('scopes', () => {
  it('lets admin imply every scope', () => {
    for (const required of ['read', 'write', 'admin', 'llm', 'tool:deploy']) expect(hasScope(['admin'], required)).toBe(true);
  });

  it('lets write imply read but not admin', () => {
    expect(hasScope(['write'], 'read')).toBe(true);
    expect(hasScope(['write'], 'write')).toBe(true);
    expect(hasScope(['write'], 'admin')).toBe(false);
  });

  it('does not let read imply write or admin', () => {
    expect(hasScope(['read'], 'read')).toBe(true);
    expect(hasScope(['read'], 'write')).toBe(false);
    expect(hasScope(['read'], 'admin')).toBe(false);
    expect(hasScope([], 'read')).toBe(false);
  });

  it('lets tool:* grant each tool in its family and nothing else', () => {
    expect(hasScope(['tool:*'], 'tool:deploy')).toBe(true);
    expect(hasScope(['tool:*'], 'llm')).toBe(false);
    expect(hasScope(['tool:*'], 'tool')).toBe(false);
    expect(hasScope(['tool:*'], 'mcp:deploy')).toBe(false);
    expect(hasScope(['tool:*'], 'read')).toBe(false);
  });

  it('matches family and named scopes exactly', () => {
    expect(hasScope(['llm'], 'llm')).toBe(true);
    expect(hasScope(['llm'], 'mcp')).toBe(false);
    expect(hasScope(['tool:deploy'], 'tool:deploy')).toBe(true);
    expect(hasScope(['tool:deploy'], 'tool:delete')).toBe(false);
    expect(hasScope(['tool:deploy'], 'tool:*')).toBe(false);
    expect(hasScope(['tool'], 'tool:deploy')).toBe(false);
    expect(hasScope(['write'], 'llm')).toBe(false);
  });

  it('parses a comma list, trimming and removing duplicates, and reports invalid scopes', () => {
    expect(parseScopes(' read, write ,read,,tool:deploy')).toEqual({ scopes: ['read', 'write', 'tool:deploy'], invalid: [] });
    expect(parseScopes('read,Admin,tool:,9x,llm')).toEqual({ scopes: ['read', 'llm'], invalid: ['Admin', 'tool:', '9x'] });
    expect(parseScopes('')).toEqual({ scopes: [], invalid: [] });
    expect(isValidScope('tool:*')).toBe(true);
    expect(isValidScope('read write')).toBe(false);
  });
});

describe('parseDuration', () => {
  it('parses seconds, minutes, hours, days and weeks', () => {
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('15m')).toBe(900_000);
    expect(parseDuration('12h')).toBe(43_200_000);
    expect(parseDuration('30d')).toBe(2_592_000_000);
    expect(parseDuration('2w')).toBe(1_209_600_000);
    expect(parseDuration(' 1h ')).toBe(3_600_000);
  });

  it('refuses empty, zero, unknown units, negative and fractional durations', () => {
    for (const text of ['', '0d', '5y', '-1d', '1.5h', 'h', '12', '1 day', '99999999999999999999d']) {
      expect(parseDuration(text), text).toBeUndefined();
    }
  });

  it('accepts up to ten years and refuses longer, so no expiry overflows a date', () => {
    expect(parseDuration('3650d')).toBe(3650 * 86_400_000);
    expect(parseDuration('3651d')).toBeUndefined();
    expect(parseDuration('99999999d')).toBeUndefined();
  });
});

describe.each(ENGINES)('KeyVerifier on %s', (engine) => {
  let t: TestDatabase;
  let other: Database;
  let keys: KeyRepository;
  let service: KeyService;
  let otherService: KeyService;
  const hasher = createKeyHasher(randomBytes(32).toString('hex'));
  const audited: AuditEventInput[] = [];

  function makeService(database: Database): KeyService {
    return new KeyService({
      keys: new KeyRepository(database.db),
      tenants: new TenantRepository(database.db),
      hasher,
      prefix: 'bwk_test_',
      audit: (event) => audited.push(event),
    });
  }

  async function createKey(scopes: string[] = ['read'], expiresIn?: string) {
    const result = await service.createKey(OPERATOR, { name: 'verifier test', scopes, expiresIn });
    if (!result.ok) throw new Error(result.message);
    return result.value;
  }

  beforeAll(async () => {
    t = await openTestDatabase(engine);
    // "Another process": on PostgreSQL a second connection pool to the same schema.
    other = engine === 'postgres' ? await openDatabase({ url: POSTGRES_URL, schema: t.schema }) : t.database;
    keys = new KeyRepository(t.database.db);
    service = makeService(t.database);
    otherService = makeService(other);
  });
  afterAll(async () => {
    if (other && other !== t?.database) await other.close();
    await t?.cleanup();
  });

  it('verifies a created key and returns its principal', async () => {
    const created = await createKey(['write', 'tool:*']);
    const used: string[] = [];
    const verifier = new KeyVerifier({ keys, hasher, onKeyUsed: (id) => used.push(id) });
    expect(await verifier.verify(created.key)).toEqual({
      ok: true,
      principal: { kind: 'key', tenant: 'default', keyId: created.id, keyName: 'verifier test', scopes: ['write', 'tool:*'], expiresAt: null },
    });
    expect(used).toEqual([created.id]);
  });

  it('does not cache a row whose lookup was in flight when the key was revoked', async () => {
    const created = await createKey();
    const verifier = new KeyVerifier({ keys, hasher, cacheMs: 60_000 });
    const inFlight = verifier.verify(created.key);
    verifier.invalidate(created.id);
    await keys.revoke(created.id, new Date());
    await inFlight;
    expect(await verifier.verify(created.key)).toMatchObject({ ok: false, reason: 'revoked' });
  });

  it('refuses a key of the other environment when a prefix is required', async () => {
    const created = await createKey();
    const production = new KeyVerifier({ keys, hasher, prefix: 'bwk_live_' });
    expect(await production.verify(created.key)).toMatchObject({ ok: false, reason: 'wrong_environment', keyId: created.id });
  });

  it('refuses a wrong secret, a wrong prefix, an unknown id and a non-key, without calling onKeyUsed', async () => {
    const created = await createKey();
    const used: string[] = [];
    const verifier = new KeyVerifier({ keys, hasher, onKeyUsed: (id) => used.push(id) });
    const { id, secret } = parseKey(created.key)!;
    const otherSecret = generateKey('bwk_test_').secret;
    expect(await verifier.verify(`bwk_test_${id}_${otherSecret}`)).toEqual({ ok: false, reason: 'wrong_secret', keyId: id, tenant: 'default' });
    expect(await verifier.verify(`bwk_live_${id}_${secret}`)).toMatchObject({ ok: false, reason: 'wrong_secret' });
    const unknown = generateKey('bwk_test_');
    expect(await verifier.verify(unknown.plaintext)).toEqual({ ok: false, reason: 'unknown_key', keyId: unknown.id });
    expect(await verifier.verify(randomBytes(16).toString('hex'))).toEqual({ ok: false, reason: 'not_a_key' });
    expect(used).toEqual([]);
  });

  it('refuses a key whose hash was made under another server secret', async () => {
    const created = await createKey();
    const verifier = new KeyVerifier({ keys, hasher: createKeyHasher(randomBytes(32).toString('hex')) });
    expect(await verifier.verify(created.key)).toMatchObject({ ok: false, reason: 'wrong_secret' });
  });

  it('refuses an expired key', async () => {
    const created = await createKey(['read'], '1h');
    expect(created.expiresAt).not.toBeNull();
    const later = new KeyVerifier({ keys, hasher, now: () => Date.now() + 2 * 3_600_000 });
    expect(await later.verify(created.key)).toMatchObject({ ok: false, reason: 'expired', keyId: created.id });
    const verifier = new KeyVerifier({ keys, hasher });
    expect(await verifier.verify(created.key)).toMatchObject({ ok: true, principal: { expiresAt: new Date(created.expiresAt!) } });
  });

  it('sees a revocation by another process once cacheMs has passed', async () => {
    const created = await createKey();
    const verifier = new KeyVerifier({ keys, hasher, cacheMs: 200 });
    expect(await verifier.verify(created.key)).toMatchObject({ ok: true });
    const revoked = await otherService.revokeKey(OPERATOR, created.id);
    expect(revoked).toMatchObject({ ok: true, value: { status: 'revoked' } });
    await sleep(250);
    expect(await verifier.verify(created.key)).toEqual({ ok: false, reason: 'revoked', keyId: created.id, tenant: 'default' });
  });

  it('reuses a cached row only within cacheMs', async () => {
    const created = await createKey();
    let clock = Date.now() + 60_000;
    const verifier = new KeyVerifier({ keys, hasher, cacheMs: 200, now: () => clock });
    expect(await verifier.verify(created.key)).toMatchObject({ ok: true });
    await otherService.revokeKey(OPERATOR, created.id);
    clock += 199;
    expect(await verifier.verify(created.key)).toMatchObject({ ok: true });
    clock += 1;
    expect(await verifier.verify(created.key)).toMatchObject({ ok: false, reason: 'revoked' });
  });

  it('sees a revocation at once after invalidate()', async () => {
    const created = await createKey();
    const verifier = new KeyVerifier({ keys, hasher, cacheMs: 60_000 });
    expect(await verifier.verify(created.key)).toMatchObject({ ok: true });
    await otherService.revokeKey(OPERATOR, created.id);
    verifier.invalidate(created.id);
    expect(await verifier.verify(created.key)).toMatchObject({ ok: false, reason: 'revoked' });
  });

  it('sees a revocation by its own process at once when the service is wired to invalidate', async () => {
    const verifier = new KeyVerifier({ keys, hasher, cacheMs: 60_000 });
    const local = new KeyService({
      keys,
      tenants: new TenantRepository(t.database.db),
      hasher,
      prefix: 'bwk_test_',
      audit: () => {},
      onKeyInvalidated: (id) => verifier.invalidate(id),
    });
    const created = await createKey();
    expect(await verifier.verify(created.key)).toMatchObject({ ok: true });
    await local.revokeKey(OPERATOR, created.id);
    expect(await verifier.verify(created.key)).toMatchObject({ ok: false, reason: 'revoked' });
  });

  it('accepts the static bootstrap credential as kind bootstrap with its scopes', async () => {
    const secret = randomBytes(32).toString('base64url');
    const verifier = new KeyVerifier({
      keys,
      hasher,
      staticCredentials: [{ secret, principal: staticPrincipal('bootstrap', 'bootstrap', 'bootstrap key', ['write', 'llm']) }],
    });
    expect(await verifier.verify(secret)).toEqual({
      ok: true,
      principal: { kind: 'bootstrap', tenant: 'default', keyId: 'bootstrap', keyName: 'bootstrap key', scopes: ['write', 'llm'], expiresAt: null },
    });
    expect(await verifier.verify(`${secret}x`)).toEqual({ ok: false, reason: 'not_a_key' });
    expect(await verifier.verify(secret.slice(1))).toEqual({ ok: false, reason: 'not_a_key' });
  });

  it('accepts a static credential shaped like a Bulwark key', async () => {
    const secret = generateKey('bwk_live_').plaintext;
    const verifier = new KeyVerifier({
      keys,
      hasher,
      staticCredentials: [{ secret, principal: staticPrincipal('bootstrap', 'bootstrap', 'bootstrap key', ['admin']) }],
    });
    expect(await verifier.verify(secret)).toMatchObject({ ok: true, principal: { kind: 'bootstrap', scopes: ['admin'] } });
  });

  it('stores only a hash of the key, never the key or its secret', async () => {
    const created = await createKey(['admin']);
    const { secret } = parseKey(created.key)!;
    const rows = (await sql`select * from api_keys`.execute(t.database.db)).rows;
    const text = JSON.stringify(rows);
    expect(text).toContain(created.id);
    expect(text).not.toContain(created.key);
    expect(text).not.toContain(secret);
    const row = await keys.findById(created.id);
    expect(row).toMatchObject({ hash_alg: 'hmac-sha256', key_hash: hasher.hash(secret), prefix: 'bwk_test_' });
    expect(JSON.stringify(audited)).not.toContain(secret);
  });
});

describe('KeyVerifier while the store is away', () => {
  it('accepts a recently verified key from the cache and refuses an unseen one with StoreUnavailableError', async () => {
    const t = await openTestDatabase('pglite');
    const hasher = createKeyHasher();
    const keys = new KeyRepository(t.database.db);
    const service = new KeyService({ keys, tenants: new TenantRepository(t.database.db), hasher, prefix: 'bwk_test_', audit: () => {} });
    const seen = await service.createKey(OPERATOR, { name: 'seen', scopes: ['read'] });
    const unseen = await service.createKey(OPERATOR, { name: 'unseen', scopes: ['read'] });
    if (!seen.ok || !unseen.ok) throw new Error('setup');
    let now = 1_000_000;
    const verifier = new KeyVerifier({ keys, hasher, cacheMs: 500, staleIfErrorMs: 10_000, now: () => now });
    expect((await verifier.verify(seen.value.key)).ok).toBe(true);
    await t.cleanup(); // the database is gone
    now += 2_000; // past cacheMs, within staleIfErrorMs
    expect((await verifier.verify(seen.value.key)).ok).toBe(true);
    await expect(verifier.verify(unseen.value.key)).rejects.toBeInstanceOf(StoreUnavailableError);
    now += 10_000; // past staleIfErrorMs too
    await expect(verifier.verify(seen.value.key)).rejects.toBeInstanceOf(StoreUnavailableError);
  });
});
