/**
 * The tamper-evident audit chain (src/audit/log.ts) on PGlite and on PostgreSQL: appends in
 * batches and concurrently stay one linear chain; editing, deleting or splicing a row is found
 * at that row; masking happens before anything is stored; tailEvents filters and orders.
 *
 * Fake credentials are generated at run time, so this file holds no secret-shaped literal.
 */
import { randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  type AuditEvent,
  type AuditEventInput,
  AuditLog,
  GENESIS_HASH,
  appendChained,
  canonicalJson,
  chainHash,
  makeEvent,
  tailEvents,
  verifyChain,
} from '../src/audit/log.js';
import { openDatabase } from '../src/store/database.js';
import { ENGINES, POSTGRES_URL, type TestDatabase, itOnPostgres, openTestDatabase } from './helpers/database.js';

function fakeAnthropicKey(): string {
  return `sk-ant-api03-${randomBytes(24).toString('hex')}`;
}

function event(type: string, extra: Partial<AuditEventInput> = {}): AuditEvent {
  return makeEvent({ type, outcome: 'success', ...extra });
}

function events(count: number, type = 'test.event'): AuditEvent[] {
  return Array.from({ length: count }, (_, i) => event(type, { details: { i, nested: { b: [1, 2], a: 'x' } } }));
}

describe('canonicalJson', () => {
  it('gives the same text whatever the key order, at every depth', () => {
    const a = canonicalJson({ b: 1, a: { d: [{ y: 2, x: 1 }], c: null } });
    const b = canonicalJson({ a: { c: null, d: [{ x: 1, y: 2 }] }, b: 1 });
    expect(a).toBe(b);
    expect(a).toBe('{"a":{"c":null,"d":[{"x":1,"y":2}]},"b":1}');
  });

  it('keeps array order and drops undefined properties', () => {
    expect(canonicalJson([2, 1])).not.toBe(canonicalJson([1, 2]));
    expect(canonicalJson({ a: 1, gone: undefined })).toBe('{"a":1}');
  });
});

describe('makeEvent', () => {
  it('masks a secret-looking string in details, in a secret-named field and in the path', () => {
    const secret = fakeAnthropicKey();
    const token = randomBytes(16).toString('hex');
    const made = makeEvent({
      type: 'llm.request',
      outcome: 'failure',
      path: `/v1/messages?key=${secret}`,
      details: { note: `upstream said ${secret} is invalid`, nested: { apiKey: token } },
    });
    const text = JSON.stringify(made);
    expect(text).not.toContain(secret);
    expect(text).not.toContain(secret.slice('sk-ant-api03-'.length));
    expect(text).not.toContain(token);
    expect(made.path).toContain('/v1/messages');
    expect(made.details.note).toContain('sk-ant-****');
    expect(made.details).toMatchObject({ nested: { apiKey: '****' } });
  });

  it('fills id and time and turns empty optional fields into null', () => {
    const made = makeEvent({ type: 't', outcome: 'info', ip: '', keyId: undefined }, new Date('2024-01-02T03:04:05.678Z'));
    expect(made.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(made.time).toBe('2024-01-02T03:04:05.678Z');
    expect(made).toMatchObject({ ip: null, keyId: null, tenantId: null, details: {} });
  });
});

describe.each(ENGINES)('audit chain on %s', (engine) => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase(engine);
  });
  afterAll(async () => {
    await t?.cleanup();
  });
  beforeEach(async () => {
    await sql`delete from audit_events`.execute(t.database.db);
  });

  const db = () => t.database.db;

  async function rows() {
    const result = await sql<{ seq: string | number; id: string; hash: string; prev_hash: string }>`
      select seq, id, hash, prev_hash from audit_events order by seq`.execute(db());
    return result.rows.map((r) => ({ ...r, seq: Number(r.seq) }));
  }

  it('verifies appended events with the right count and the last hash as head', async () => {
    await appendChained(db(), events(5));
    const stored = await rows();
    expect(stored).toHaveLength(5);
    expect(stored[0]?.prev_hash).toBe(GENESIS_HASH);
    const result = await verifyChain(db());
    expect(result).toEqual({ ok: true, checked: 5, head: stored[4]?.hash });
  });

  it('verifies an empty log with the genesis hash as head', async () => {
    expect(await verifyChain(db())).toEqual({ ok: true, checked: 0, head: GENESIS_HASH });
  });

  it('links batches appended one after another into one chain, across verify pages', async () => {
    await appendChained(db(), events(3));
    await appendChained(db(), events(1));
    await appendChained(db(), events(4));
    const stored = await rows();
    for (let i = 1; i < stored.length; i++) expect(stored[i]?.prev_hash).toBe(stored[i - 1]?.hash);
    expect(await verifyChain(db(), { pageSize: 3 })).toMatchObject({ ok: true, checked: 8 });
  });

  it('keeps one valid chain when several appends run concurrently', async () => {
    const batches = Array.from({ length: 8 }, (_, i) => events(i + 1, `concurrent.${i}`));
    await Promise.all(batches.map((batch) => appendChained(db(), batch)));
    expect(await verifyChain(db())).toMatchObject({ ok: true, checked: 36 });
    // Each batch is contiguous: the lock serialises whole transactions, not rows.
    const types = (await tailEvents(db(), { limit: 1000 })).map((e) => e.type);
    const firstIndex = new Map<string, number>();
    types.forEach((type, index) => firstIndex.has(type) || firstIndex.set(type, index));
    for (const [type, start] of firstIndex) {
      const length = Number(type.split('.')[1]) + 1;
      expect(types.slice(start, start + length).every((t2) => t2 === type)).toBe(true);
    }
  });

  itOnPostgres(engine)('keeps one valid chain when two instances append to the same PostgreSQL', async () => {
    const other = await openDatabase({ url: POSTGRES_URL, schema: t.schema });
    try {
      await Promise.all(
        Array.from({ length: 6 }, (_, i) => appendChained(i % 2 ? other.db : db(), events(5, `instance.${i % 2}`))),
      );
    } finally {
      await other.close();
    }
    expect(await verifyChain(db())).toMatchObject({ ok: true, checked: 30 });
  });

  it('names the edited row when a row’s details are changed', async () => {
    await appendChained(db(), events(5));
    const target = (await rows())[2]!;
    await sql`update audit_events set details = ${JSON.stringify({ i: 99 })}::jsonb where seq = ${target.seq}`.execute(db());
    const result = await verifyChain(db());
    expect(result).toMatchObject({ ok: false, checked: 2, badSeq: target.seq, badId: target.id });
    expect(result.ok ? '' : result.reason).toMatch(/edited/);
  });

  it('names the edited row when a row’s type is changed', async () => {
    await appendChained(db(), events(4));
    const target = (await rows())[3]!;
    await sql`update audit_events set type = 'harmless.event' where seq = ${target.seq}`.execute(db());
    expect(await verifyChain(db())).toMatchObject({ ok: false, badSeq: target.seq, reason: expect.stringMatching(/edited/) });
  });

  it('finds an edit even when the attacker also rewrites that row’s hash, at the next row', async () => {
    await appendChained(db(), events(4));
    const stored = await rows();
    const target = stored[1]!;
    // Recompute row 2's hash for its new content: row 2 now fits, but row 3 no longer links to it.
    await sql`update audit_events set type = 'harmless.event' where seq = ${target.seq}`.execute(db());
    const [edited] = await tailEvents(db(), { type: 'harmless.event' });
    const { seq: _s, prevHash, hash: _h, ...content } = edited!;
    await sql`update audit_events set hash = ${chainHash(prevHash, content)} where seq = ${target.seq}`.execute(db());
    expect(await verifyChain(db())).toMatchObject({ ok: false, badSeq: stored[2]!.seq, reason: expect.stringMatching(/deleted or inserted/) });
  });

  it('fails at the row after a deleted middle row', async () => {
    await appendChained(db(), events(5));
    const stored = await rows();
    await sql`delete from audit_events where seq = ${stored[2]!.seq}`.execute(db());
    const result = await verifyChain(db());
    expect(result).toMatchObject({ ok: false, checked: 2, badSeq: stored[3]!.seq, badId: stored[3]!.id });
    expect(result.ok ? '' : result.reason).toMatch(/deleted or inserted/);
  });

  it('fails when the first row is deleted', async () => {
    await appendChained(db(), events(3));
    const stored = await rows();
    await sql`delete from audit_events where seq = ${stored[0]!.seq}`.execute(db());
    expect(await verifyChain(db())).toMatchObject({ ok: false, checked: 0, badSeq: stored[1]!.seq });
  });

  async function insertRaw(forged: AuditEvent, prevHash: string, hash: string, seq?: number) {
    const seqColumn = seq === undefined ? sql`` : sql`seq, `;
    const seqValue = seq === undefined ? sql`` : sql`${seq}, `;
    await sql`
      insert into audit_events (${seqColumn}id, time, type, outcome, tenant_id, key_id, ip, user_agent, method, path, request_id, details, prev_hash, hash)
      values (${seqValue}${forged.id}, ${forged.time}, ${forged.type}, ${forged.outcome}, ${forged.tenantId}, ${forged.keyId}, ${forged.ip},
              ${forged.userAgent}, ${forged.method}, ${forged.path}, ${forged.requestId}, ${JSON.stringify(forged.details)}::jsonb,
              ${prevHash}, ${hash})`.execute(db());
  }

  it('refuses a row added at the end with a wrong previous hash', async () => {
    await appendChained(db(), events(3));
    const forged = event('key.created', { details: { forged: true } });
    const wrongPrev = randomBytes(32).toString('hex');
    await insertRaw(forged, wrongPrev, chainHash(wrongPrev, forged));
    const last = (await rows()).at(-1)!;
    expect(await verifyChain(db())).toMatchObject({ ok: false, checked: 3, badSeq: last.seq, badId: forged.id, reason: expect.stringMatching(/deleted or inserted/) });
  });

  it('refuses a row added at the end with the right link but a made-up hash', async () => {
    await appendChained(db(), events(3));
    const head = (await rows()).at(-1)!.hash;
    const forged = event('key.created');
    await insertRaw(forged, head, randomBytes(32).toString('hex'));
    expect(await verifyChain(db())).toMatchObject({ ok: false, checked: 3, badId: forged.id, reason: expect.stringMatching(/edited/) });
  });

  it('accepts a correctly chained row appended at the end (appending is legal; anchor the head to catch it)', async () => {
    await appendChained(db(), events(3));
    const head = (await rows()).at(-1)!.hash;
    const appended = event('key.created');
    await insertRaw(appended, head, chainHash(head, appended));
    expect(await verifyChain(db())).toEqual({ ok: true, checked: 4, head: chainHash(head, appended) });
  });

  it('refuses a correctly hashed row spliced into the middle, at the row after it', async () => {
    await appendChained(db(), events(4));
    const stored = await rows();
    const [second, third] = [stored[1]!, stored[2]!];
    // Make room after row 2 by moving the later rows up, then splice a row that links to row 2.
    await sql`update audit_events set seq = seq + 100 where seq > ${second.seq}`.execute(db());
    const forged = event('key.revoked');
    await insertRaw(forged, second.hash, chainHash(second.hash, forged), second.seq + 1);
    const result = await verifyChain(db());
    expect(result).toMatchObject({ ok: false, checked: 3, badSeq: third.seq + 100, badId: third.id, reason: expect.stringMatching(/deleted or inserted/) });
  });

  it('stores an event holding NUL characters instead of wedging the queue behind it', async () => {
    const log = new AuditLog(db(), { flushIntervalMs: 10_000 });
    log.record({ type: 'auth.failure', outcome: 'failure', path: '/api/\u0000x', userAgent: 'ua\u0000', details: { 'k\u0000': 'v\u0000' } });
    log.record({ type: 'key.created', outcome: 'success' });
    await log.flush();
    const stored = await tailEvents(db(), {});
    expect(stored.map((e) => e.type)).toEqual(['auth.failure', 'key.created']);
    expect(stored[0]).toMatchObject({ path: '/api/x', userAgent: 'ua', details: { k: 'v' } });
    expect(await log.close(1_000)).toBe(0);
  });

  it('stores an event holding a lone UTF-16 surrogate (which jsonb refuses) with it replaced', async () => {
    const log = new AuditLog(db(), { flushIntervalMs: 10_000 });
    log.record({ type: 'key.renamed', outcome: 'success', details: { to: 'x\ud800y' } });
    await log.flush();
    expect((await tailEvents(db(), {}))[0]?.details).toEqual({ to: 'x\ufffdy' });
    expect(await log.close(1_000)).toBe(0);
  });

  it('writes an event once when the same batch is appended again (a late-confirmed or replayed write)', async () => {
    const batch = events(3);
    await appendChained(db(), batch);
    await appendChained(db(), [...batch, ...events(1)]);
    expect((await rows()).map((r) => r.id)).toHaveLength(4);
    expect(await verifyChain(db())).toMatchObject({ ok: true, checked: 4 });
  });

  describe('with the anchor an instance keeps outside the database', () => {
    it('passes while the anchored row is intact', async () => {
      const head = await appendChained(db(), events(3));
      expect(head).toMatchObject({ seq: expect.any(Number), hash: expect.stringMatching(/^[0-9a-f]{64}$/) });
      expect(await verifyChain(db(), { anchor: head })).toMatchObject({ ok: true, checked: 3 });
    });

    it('fails when the newest rows are deleted, which the chain alone cannot see', async () => {
      await appendChained(db(), events(3));
      const head = await appendChained(db(), events(2));
      await sql`delete from audit_events where seq >= ${(await rows())[3]!.seq}`.execute(db());
      expect(await verifyChain(db())).toMatchObject({ ok: true });
      expect(await verifyChain(db(), { anchor: head })).toMatchObject({ ok: false, badSeq: head!.seq, reason: expect.stringMatching(/missing or was rewritten/) });
    });

    it('fails when the chain is re-hashed from an edited row onward', async () => {
      const head = await appendChained(db(), events(4));
      const stored = await rows();
      // The attacker edits row 2 and recomputes every hash after it, so the links all fit.
      await sql`update audit_events set details = '{"forged":true}' where seq = ${stored[1]!.seq}`.execute(db());
      const all = await tailEvents(db(), { limit: 1000 });
      let prev = all[0]!.hash;
      for (const event of all.slice(1)) {
        const { seq: _s, prevHash: _p, hash: _h, ...content } = event;
        const hash = chainHash(prev, content);
        await sql`update audit_events set prev_hash = ${prev}, hash = ${hash} where seq = ${event.seq}`.execute(db());
        prev = hash;
      }
      expect(await verifyChain(db())).toMatchObject({ ok: true });
      expect(await verifyChain(db(), { anchor: head })).toMatchObject({ ok: false, badSeq: head!.seq });
    });
  });

  describe('tailEvents', () => {
    beforeEach(async () => {
      await appendChained(db(), [
        event('key.created', { tenantId: 'acme' }),
        event('auth.failure'),
        event('key.revoked', { tenantId: 'other' }),
        event('keyring.opened'),
        event('key'),
        event('key.rotated', { tenantId: 'acme' }),
        event('keyx.created'),
      ]);
    });

    it('filters by exact type', async () => {
      expect((await tailEvents(db(), { type: 'key.created' })).map((e) => e.type)).toEqual(['key.created']);
      expect((await tailEvents(db(), { type: 'key' })).map((e) => e.type)).toEqual(['key']);
    });

    it('filters by family with a trailing dot or star, oldest first', async () => {
      const family = ['key.created', 'key.revoked', 'key.rotated'];
      expect((await tailEvents(db(), { type: 'key.' })).map((e) => e.type)).toEqual(family);
      expect((await tailEvents(db(), { type: 'key.*' })).map((e) => e.type)).toEqual(family);
    });

    it('treats LIKE wildcards in a family as literal characters', async () => {
      expect(await tailEvents(db(), { type: 'key_.' })).toEqual([]);
      expect(await tailEvents(db(), { type: '%.' })).toEqual([]);
    });

    it('returns the newest events up to the limit, oldest first, with increasing seq', async () => {
      const all = await tailEvents(db(), {});
      expect(all.map((e) => e.type)).toEqual(['key.created', 'auth.failure', 'key.revoked', 'keyring.opened', 'key', 'key.rotated', 'keyx.created']);
      for (let i = 1; i < all.length; i++) expect(all[i]!.seq).toBeGreaterThan(all[i - 1]!.seq);
      expect((await tailEvents(db(), { limit: 2 })).map((e) => e.type)).toEqual(['key.rotated', 'keyx.created']);
      expect((await tailEvents(db(), { type: 'key.', limit: 2 })).map((e) => e.type)).toEqual(['key.revoked', 'key.rotated']);
    });

    it('filters by tenant', async () => {
      expect((await tailEvents(db(), { tenantId: 'acme' })).map((e) => e.type)).toEqual(['key.created', 'key.rotated']);
    });
  });

  describe('AuditLog', () => {
    it('writes recorded events to the database on flush, masked, as a valid chain', async () => {
      const log = new AuditLog(db(), { flushIntervalMs: 10_000 });
      const secret = fakeAnthropicKey();
      const first = log.record({ type: 'auth.failure', outcome: 'failure', details: { presented: secret } });
      const second = log.record({ type: 'key.created', outcome: 'success', tenantId: 'acme' });
      expect(await tailEvents(db(), {})).toEqual([]);
      await log.flush();
      const stored = await tailEvents(db(), {});
      expect(stored.map((e) => e.id)).toEqual([first.id, second.id]);
      expect(stored[1]).toMatchObject({ type: 'key.created', outcome: 'success', tenantId: 'acme', details: {} });
      expect(JSON.stringify(stored)).not.toContain(secret);
      expect(await verifyChain(db())).toMatchObject({ ok: true, checked: 2 });
      expect(log.stats).toMatchObject({ pending: 0, written: 2 });
      expect(await log.close(1_000)).toBe(0);
    });
  });
});
