/**
 * Migrations, the tenant and key repositories (src/store/repositories.ts) and the key service
 * (src/auth/key-service.ts) on PGlite and PostgreSQL: idempotent migrations, write-once
 * revocation, times that never move the wrong way, rotation with and without grace, expected
 * failures as values, and an audit event for every change.
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { AuditEventInput } from '../src/audit/log.js';
import { type Actor, KeyService } from '../src/auth/key-service.js';
import { createKeyHasher } from '../src/auth/keys.js';
import { staticPrincipal } from '../src/auth/verify.js';
import { openDatabase } from '../src/store/database.js';
import { MIGRATION_NAMES, migrateToLatest, pendingMigrations } from '../src/store/migrations.js';
import { KeyRepository, type NewKeyRow, TenantRepository } from '../src/store/repositories.js';
import { ENGINES, POSTGRES_URL, type TestDatabase, dropSchema, freshSchemaName, itOnPostgres, openTestDatabase } from './helpers/database.js';

const OPERATOR: Actor = { principal: staticPrincipal('operator', 'op', 'test operator', ['admin']), via: 'cli', requestId: 'req-1' };
const HOUR = 3_600_000;

let counter = 0;
function newKeyRow(tenantId: string, extra: Partial<NewKeyRow> = {}): NewKeyRow {
  counter += 1;
  return {
    id: `k${Date.now().toString(36)}${counter}`,
    tenantId,
    name: `key ${counter}`,
    prefix: 'bwk_test_',
    hashAlg: 'sha256',
    keyHash: '0'.repeat(64),
    scopes: ['read'],
    expiresAt: null,
    ...extra,
  };
}

describe.each(ENGINES)('store on %s', (engine) => {
  let t: TestDatabase;
  let tenants: TenantRepository;
  let keys: KeyRepository;
  beforeAll(async () => {
    t = await openTestDatabase(engine);
    tenants = new TenantRepository(t.database.db);
    keys = new KeyRepository(t.database.db);
    await tenants.create('acme', 'Acme');
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  describe('migrations', () => {
    it('applies nothing the second time and leaves nothing pending', async () => {
      expect(await migrateToLatest(t.database)).toEqual({ applied: [], pending: [] });
      expect(await pendingMigrations(t.database)).toEqual([]);
    });

    it('records every migration in schema_migrations', async () => {
      const { rows } = await sql<{ name: string }>`select name from schema_migrations order by name`.execute(t.database.db);
      expect(rows.map((r) => r.name)).toEqual(['0001_foundation', '0002_proxy', '0003_admin_sessions', '0004_mcp', '0005_agent_sessions']);
    });

    it('lists every migration as pending on an empty database, then applies it once', async () => {
      const fresh = await openTestDatabase(engine, { migrate: false });
      try {
        expect(await pendingMigrations(fresh.database)).toEqual([...MIGRATION_NAMES]);
        expect(await migrateToLatest(fresh.database)).toEqual({ applied: [...MIGRATION_NAMES], pending: [] });
        expect(await pendingMigrations(fresh.database)).toEqual([]);
      } finally {
        await fresh.cleanup();
      }
    });

    itOnPostgres(engine)('starts several instances together on a fresh schema and applies each migration once', async () => {
      // A few rounds: the race between instances creating the schema does not show every time.
      for (let round = 0; round < 4; round++) {
        const schema = freshSchemaName();
        const opened = await Promise.allSettled([0, 1, 2].map(() => openDatabase({ url: POSTGRES_URL, schema })));
        const databases = opened.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
        try {
          expect(opened.filter((o) => o.status === 'rejected').map((o) => String((o as PromiseRejectedResult).reason))).toEqual([]);
          const reports = await Promise.all(databases.map((d) => migrateToLatest(d)));
          expect(reports.flatMap((r) => r.applied)).toEqual([...MIGRATION_NAMES]);
          const { rows } = await sql<{ n: string | number }>`select count(*) as n from schema_migrations`.execute(databases[0]!.db);
          expect(Number(rows[0]?.n)).toBe(MIGRATION_NAMES.length);
        } finally {
          await Promise.all(databases.map((d) => d.close()));
          await dropSchema(schema);
        }
      }
    });

    itOnPostgres(engine)('does not mistake another schema’s migrated tables for its own', async () => {
      const fresh = await openTestDatabase('postgres', { migrate: false });
      try {
        expect(await pendingMigrations(fresh.database)).toEqual([...MIGRATION_NAMES]);
      } finally {
        await fresh.cleanup();
      }
    });
  });

  describe('TenantRepository', () => {
    it('creates a tenant once and returns false for a duplicate, keeping the first name', async () => {
      expect(await tenants.create('dup', 'First')).toBe(true);
      expect(await tenants.create('dup', 'Second')).toBe(false);
      expect(await tenants.find('dup')).toMatchObject({ id: 'dup', name: 'First' });
      await tenants.ensure('dup', 'Third');
      expect((await tenants.find('dup'))?.name).toBe('First');
      expect((await tenants.list()).filter((r) => r.id === 'dup')).toHaveLength(1);
      expect(await tenants.find('nobody')).toBeUndefined();
    });
  });

  describe('KeyRepository', () => {
    it('refuses a key for a tenant that does not exist', async () => {
      await expect(keys.insert(newKeyRow('no-such-tenant'))).rejects.toThrow();
    });

    it('keeps the first revoked_at when a key is revoked twice', async () => {
      const row = await keys.insert(newKeyRow('acme'));
      expect(row.revoked_at).toBeNull();
      const first = new Date(Date.now() - HOUR);
      expect((await keys.revoke(row.id, first))?.revoked_at).toEqual(first);
      expect((await keys.revoke(row.id, new Date()))?.revoked_at).toEqual(first);
      expect((await keys.findById(row.id))?.revoked_at).toEqual(first);
      expect(await keys.revoke('missing', new Date())).toBeUndefined();
    });

    it('hides revoked keys from list unless asked, and filters by tenant', async () => {
      await tenants.create('listed', 'Listed');
      const kept = await keys.insert(newKeyRow('listed'));
      const gone = await keys.insert(newKeyRow('listed'));
      await keys.revoke(gone.id, new Date());
      expect((await keys.list({ tenantId: 'listed' })).map((r) => r.id)).toEqual([kept.id]);
      expect((await keys.list({ tenantId: 'listed', includeRevoked: true })).map((r) => r.id).sort()).toEqual([kept.id, gone.id].sort());
      expect((await keys.list()).every((r) => r.revoked_at === null)).toBe(true);
    });

    it('shortens a key’s life with expireBy but never lengthens it', async () => {
      const now = Date.now();
      const row = await keys.insert(newKeyRow('acme'));
      await keys.expireBy(row.id, new Date(now + 2 * HOUR));
      expect((await keys.findById(row.id))?.expires_at).toEqual(new Date(now + 2 * HOUR));
      await keys.expireBy(row.id, new Date(now + 3 * HOUR));
      expect((await keys.findById(row.id))?.expires_at).toEqual(new Date(now + 2 * HOUR));
      await keys.expireBy(row.id, new Date(now + HOUR));
      expect((await keys.findById(row.id))?.expires_at).toEqual(new Date(now + HOUR));

      const limited = await keys.insert(newKeyRow('acme', { expiresAt: new Date(now + HOUR) }));
      await keys.expireBy(limited.id, new Date(now + 24 * HOUR));
      expect((await keys.findById(limited.id))?.expires_at).toEqual(new Date(now + HOUR));
    });

    it('never moves last_used_at backwards', async () => {
      const now = Date.now();
      const a = await keys.insert(newKeyRow('acme'));
      const b = await keys.insert(newKeyRow('acme'));
      await keys.touchLastUsed(new Map([[a.id, new Date(now)], [b.id, new Date(now - HOUR)]]));
      expect((await keys.findById(a.id))?.last_used_at).toEqual(new Date(now));
      await keys.touchLastUsed(new Map([[a.id, new Date(now - HOUR)], [b.id, new Date(now)]]));
      expect((await keys.findById(a.id))?.last_used_at).toEqual(new Date(now));
      expect((await keys.findById(b.id))?.last_used_at).toEqual(new Date(now));
      await keys.touchLastUsed(new Map([[a.id, new Date(now + 1_000)]]));
      expect((await keys.findById(a.id))?.last_used_at).toEqual(new Date(now + 1_000));
    });

    it('stores scopes, cidrs and limits and reads them back', async () => {
      const row = await keys.insert(newKeyRow('acme', { scopes: ['write', 'tool:deploy'], allowedCidrs: ['10.0.0.0/8'], limits: { rpm: 60 } }));
      expect(await keys.findById(row.id)).toMatchObject({ scopes: ['write', 'tool:deploy'], allowed_cidrs: ['10.0.0.0/8'], limits: { rpm: 60 } });
    });
  });

  describe('KeyService', () => {
    const audited: AuditEventInput[] = [];
    let service: KeyService;
    beforeAll(() => {
      service = new KeyService({ keys, tenants, hasher: createKeyHasher(), prefix: 'bwk_test_', audit: (e) => audited.push(e) });
    });
    beforeEach(() => {
      audited.length = 0;
    });

    async function create(name = 'svc key', scopes: string[] = ['read', 'llm']) {
      const result = await service.createKey(OPERATOR, { name, scopes, tenant: 'acme' });
      if (!result.ok) throw new Error(result.message);
      return result.value;
    }

    it('creates a key in a tenant and audits it without the key', async () => {
      const created = await create();
      expect(created).toMatchObject({ tenant: 'acme', name: 'svc key', scopes: ['read', 'llm'], status: 'active', rotatedFrom: null });
      expect(audited).toHaveLength(1);
      expect(audited[0]).toMatchObject({
        type: 'key.created',
        outcome: 'success',
        tenantId: 'acme',
        keyId: created.id,
        requestId: 'req-1',
        details: { name: 'svc key', scopes: ['read', 'llm'], via: 'cli', by: { kind: 'operator', keyId: 'op' } },
      });
      expect(JSON.stringify(audited)).not.toContain(created.key);
    });

    it('renames a key and audits old and new name', async () => {
      const created = await create('before');
      const renamed = await service.renameKey(OPERATOR, created.id, 'after');
      expect(renamed).toMatchObject({ ok: true, value: { id: created.id, name: 'after' } });
      expect((await keys.findById(created.id))?.name).toBe('after');
      expect(audited.at(-1)).toMatchObject({ type: 'key.renamed', keyId: created.id, details: { from: 'before', to: 'after' } });
    });

    it('revokes the old key at once when rotating without grace', async () => {
      const old = await create('rotating');
      const result = await service.rotateKey(OPERATOR, old.id);
      if (!result.ok) throw new Error(result.message);
      expect(result.value).toMatchObject({ name: 'rotating', tenant: 'acme', scopes: ['read', 'llm'], rotatedFrom: old.id, status: 'active' });
      expect(result.value.id).not.toBe(old.id);
      expect(result.value.key).not.toBe(old.key);
      expect(result.value.previous).toMatchObject({ id: old.id, status: 'revoked' });
      expect((await keys.findById(old.id))?.revoked_at).not.toBeNull();
      expect(audited.at(-1)).toMatchObject({ type: 'key.rotated', keyId: old.id, details: { newKeyId: result.value.id, graceSeconds: 0 } });
    });

    it('keeps the old key active for the grace period when rotating with grace', async () => {
      const old = await create('graceful');
      const before = Date.now();
      const result = await service.rotateKey(OPERATOR, old.id, { grace: '1h' });
      if (!result.ok) throw new Error(result.message);
      expect(result.value.rotatedFrom).toBe(old.id);
      expect(result.value.previous).toMatchObject({ id: old.id, status: 'active', revokedAt: null });
      const oldRow = await keys.findById(old.id);
      expect(oldRow?.revoked_at).toBeNull();
      const expiresAt = oldRow?.expires_at?.getTime() ?? 0;
      expect(expiresAt).toBeGreaterThanOrEqual(before + HOUR - 1_000);
      expect(expiresAt).toBeLessThanOrEqual(Date.now() + HOUR + 1_000);
      expect(audited.at(-1)).toMatchObject({ type: 'key.rotated', details: { graceSeconds: 3_600 } });
    });

    it('refuses to rotate a revoked key with conflict and audits nothing', async () => {
      const old = await create();
      await service.revokeKey(OPERATOR, old.id);
      expect(audited.map((e) => e.type)).toEqual(['key.created', 'key.revoked']);
      expect(await service.rotateKey(OPERATOR, old.id)).toMatchObject({ ok: false, code: 'conflict' });
      expect(audited).toHaveLength(2);
    });

    it('refuses a malformed grace with validation_failed and leaves the key alone', async () => {
      const old = await create();
      expect(await service.rotateKey(OPERATOR, old.id, { grace: '1 hour' })).toMatchObject({ ok: false, code: 'validation_failed' });
      expect(await keys.findById(old.id)).toMatchObject({ revoked_at: null, expires_at: null });
      expect((await keys.list({ tenantId: 'acme' })).some((r) => r.rotated_from === old.id)).toBe(false);
    });

    it('reports not_found for an unknown tenant and an unknown key', async () => {
      expect(await service.createKey(OPERATOR, { name: 'x', scopes: ['read'], tenant: 'ghost' })).toMatchObject({ ok: false, code: 'not_found' });
      expect(await service.renameKey(OPERATOR, 'nosuchkey', 'x')).toMatchObject({ ok: false, code: 'not_found' });
      expect(await service.revokeKey(OPERATOR, 'nosuchkey')).toMatchObject({ ok: false, code: 'not_found' });
      expect(await service.rotateKey(OPERATOR, "x'; drop table api_keys;--")).toMatchObject({ ok: false, code: 'not_found' });
      expect(audited).toEqual([]);
    });

    it('refuses invalid names, scopes, durations and tenant ids with validation_failed', async () => {
      const bad = [
        { name: '', scopes: ['read'] },
        { name: '   ', scopes: ['read'] },
        { name: 'bell\u0007', scopes: ['read'] },
        { name: 'half\ud800pair', scopes: ['read'] },
        { name: 'x'.repeat(101), scopes: ['read'] },
        { name: 'ok', scopes: [] },
        { name: 'ok', scopes: ['Read'] },
        { name: 'ok', scopes: ['read', 'tool:'] },
        { name: 'ok', scopes: ['read'], expiresIn: '0d' },
        { name: 'ok', scopes: ['read'], tenant: 'Bad Tenant' },
      ];
      for (const input of bad) {
        expect(await service.createKey(OPERATOR, { tenant: 'acme', ...input }), JSON.stringify(input)).toMatchObject({ ok: false, code: 'validation_failed' });
      }
      const created = await create();
      audited.length = 0;
      expect(await service.renameKey(OPERATOR, created.id, '')).toMatchObject({ ok: false, code: 'validation_failed' });
      expect(audited).toEqual([]);
    });

    it('confines a tenant’s key to its own tenant', async () => {
      const created = await create();
      const outsider: Actor = { principal: { kind: 'key', tenant: 'other', keyId: 'kx', keyName: 'x', scopes: ['admin'], expiresAt: null }, via: 'admin-api' };
      expect(await service.getKey(outsider, created.id)).toMatchObject({ ok: false, code: 'not_found' });
      expect(await service.revokeKey(outsider, created.id)).toMatchObject({ ok: false, code: 'not_found' });
      expect(await service.createKey(outsider, { name: 'x', scopes: ['read'], tenant: 'acme' })).toMatchObject({ ok: false, code: 'forbidden' });
      expect(await service.createTenant(outsider, 'newco')).toMatchObject({ ok: false, code: 'forbidden' });
      expect((await keys.findById(created.id))?.revoked_at).toBeNull();
      // Nothing changed, and every refused attempt is an audited authorization failure.
      expect(audited.map((e) => e.type)).toEqual(['key.created', 'authz.denied', 'authz.denied', 'authz.denied', 'authz.denied']);
      expect(audited.slice(1).map((e) => [e.tenantId, e.keyId, e.details?.action])).toEqual([
        ['other', 'kx', 'key.access'],
        ['other', 'kx', 'key.access'],
        ['other', 'kx', 'key.create'],
        ['other', 'kx', 'tenant.create'],
      ]);
    });

    it('creates a tenant once, then reports conflict, and audits the creation', async () => {
      expect(await service.createTenant(OPERATOR, 'newco', 'New Co')).toMatchObject({ ok: true, value: { id: 'newco', name: 'New Co' } });
      expect(await service.createTenant(OPERATOR, 'newco')).toMatchObject({ ok: false, code: 'conflict' });
      expect(await service.createTenant(OPERATOR, '-bad')).toMatchObject({ ok: false, code: 'validation_failed' });
      expect(audited).toEqual([expect.objectContaining({ type: 'tenant.created', tenantId: 'newco', keyId: null })]);
    });
  });
});
