/**
 * The MCP session store (src/mcp/sessions.ts) on PGlite and PostgreSQL, with a clock the test
 * moves: creation and lookup, the idle and absolute limits (and a key that expires sooner),
 * how often `last_seen_at` is written, purging, operator listing and ending, and what the
 * stored row and the operator's view may contain (never the id, only its SHA-256).
 *
 * Every session id is generated at run time; no secret-shaped literal lives here.
 */
import { createHash } from 'node:crypto';
import type { KyselyPlugin } from 'kysely';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Principal } from '../src/auth/principal.js';
import { hashSessionId } from '../src/auth/sessions.js';
import { McpSessionStore, type McpSessionStoreOptions, describeMcpSession } from '../src/mcp/sessions.js';
import { ENGINES, type TestDatabase, openTestDatabase } from './helpers/database.js';

const SECOND = 1_000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const T0 = Date.parse('2026-03-01T12:00:00.000Z');
const IDLE_MS = 10 * MINUTE;
const MAX_MS = HOUR;
const TOUCH_MS = MINUTE;

function principal(overrides: Partial<Principal> = {}): Principal {
  return { kind: 'key', tenant: 'acme', keyId: 'key_writer', keyName: 'writer', scopes: ['write'], expiresAt: null, ...overrides };
}

function initFor(name = 'session-test', version = '1.2.3') {
  return { protocolVersion: '2025-11-25', params: { protocolVersion: '2025-11-25', capabilities: { sampling: {} }, clientInfo: { name, version } } };
}

describe.each(ENGINES)('MCP session store on %s', (engine) => {
  let t: TestDatabase;
  let clock: number;
  let store: McpSessionStore;
  const now = () => new Date(clock);

  function storeWith(options: Partial<McpSessionStoreOptions> = {}): McpSessionStore {
    return new McpSessionStore(t.database.db, { idleMs: IDLE_MS, maxMs: MAX_MS, touchIntervalMs: TOUCH_MS, now, ...options });
  }

  /** A new session opened at the current clock; returns its id. */
  async function open(owner: Principal = principal(), init = initFor()): Promise<string> {
    const id = McpSessionStore.newId();
    await store.create(id, owner, init);
    return id;
  }

  async function storedRow(id: string) {
    return t.database.db.selectFrom('mcp_sessions').selectAll().where('id_hash', '=', hashSessionId(id)).executeTakeFirst();
  }

  async function rowCount(): Promise<number> {
    const { count } = await t.database.db.selectFrom('mcp_sessions').select((eb) => eb.fn.countAll<string>().as('count')).executeTakeFirstOrThrow();
    return Number(count);
  }

  beforeAll(async () => {
    t = await openTestDatabase(engine);
  });

  afterAll(async () => {
    await t?.cleanup();
  });

  beforeEach(async () => {
    await t.database.db.deleteFrom('mcp_sessions').execute();
    clock = T0;
    store = storeWith();
  });

  it('refuses a non-positive idleMs or maxMs when it is built', () => {
    expect(() => storeWith({ idleMs: 0 })).toThrow(/idleMs and maxMs must be positive/);
    expect(() => storeWith({ maxMs: -1 })).toThrow(/idleMs and maxMs must be positive/);
    expect(() => storeWith({ idleMs: Number.NaN })).toThrow(/idleMs and maxMs must be positive/);
  });

  it('issues 256-bit base64url ids, a different one each time', () => {
    const ids = new Set(Array.from({ length: 50 }, () => McpSessionStore.newId()));
    expect(ids.size).toBe(50);
    for (const id of ids) {
      expect(id).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(Buffer.from(id, 'base64url')).toHaveLength(32);
    }
  });

  it('finds a created session by its id, with its owner, client and limits', async () => {
    const owner = principal();
    const id = McpSessionStore.newId();
    const created = await store.create(id, owner, initFor('claude-code', '2.0.1'));
    const hash = createHash('sha256').update(id).digest('hex');
    expect(created).toMatchObject({ hash, ref: hash.slice(0, 16), tenant: 'acme', keyId: 'key_writer', principalKind: 'key', clientName: 'claude-code', clientVersion: '2.0.1' });

    clock += 5 * SECOND;
    const lookup = await store.lookup(id);
    expect(lookup).toEqual({
      ok: true,
      session: {
        hash,
        ref: hash.slice(0, 16),
        tenant: 'acme',
        keyId: 'key_writer',
        principalKind: 'key',
        clientName: 'claude-code',
        clientVersion: '2.0.1',
        protocolVersion: '2025-11-25',
        initParams: initFor('claude-code', '2.0.1').params,
        createdAt: new Date(T0),
        lastSeenAt: new Date(T0),
        expiresAt: new Date(T0 + MAX_MS),
      },
    });
  });

  it('answers an unknown but well-formed id with unknown', async () => {
    await open();
    expect(await store.lookup(McpSessionStore.newId())).toEqual({ ok: false, reason: 'unknown' });
  });

  it('answers a malformed id with unknown without querying the database', async () => {
    let queries = 0;
    const counter: KyselyPlugin = {
      transformQuery: (args) => {
        queries += 1;
        return args.node;
      },
      transformResult: async (args) => args.result,
    };
    const counted = new McpSessionStore(t.database.db.withPlugin(counter), { idleMs: IDLE_MS, maxMs: MAX_MS, now });
    const id = await open();
    // The counter itself sees queries: a well-formed id is looked up.
    expect(await counted.lookup(id)).toMatchObject({ ok: true });
    expect(queries).toBeGreaterThan(0);
    queries = 0;
    for (const malformed of ['', 'short', `${id}A`, id.slice(0, 42), `${id.slice(0, 42)}=`, `${id.slice(0, 42)}+`, `${id.slice(0, 42)}/`, ` ${id.slice(1)}`, "'; drop table mcp_sessions; --"]) {
      expect(await counted.lookup(malformed)).toEqual({ ok: false, reason: 'unknown' });
    }
    expect(queries).toBe(0);
  });

  it('ends a session idle for idleMs: lookup says idle_timeout and the row is gone', async () => {
    const id = await open();
    clock = T0 + IDLE_MS - 1;
    expect(await store.lookup(id)).toMatchObject({ ok: true });
    // That request was activity: the idle limit now runs from it.
    clock += IDLE_MS - 1;
    expect(await store.lookup(id)).toMatchObject({ ok: true });
    clock += IDLE_MS;
    expect(await store.lookup(id)).toEqual({ ok: false, reason: 'idle_timeout' });
    expect(await storedRow(id)).toBeUndefined();
    expect(await store.lookup(id)).toEqual({ ok: false, reason: 'unknown' });
  });

  it('ends a session at maxMs after it began even while it stays active', async () => {
    const id = await open();
    for (clock = T0 + 5 * MINUTE; clock < T0 + MAX_MS; clock += 5 * MINUTE) {
      expect(await store.lookup(id), `at +${(clock - T0) / MINUTE} min`).toMatchObject({ ok: true });
    }
    clock = T0 + MAX_MS;
    expect(await store.lookup(id)).toEqual({ ok: false, reason: 'expired' });
    expect(await storedRow(id)).toBeUndefined();
  });

  it("ends a session when its key expires, if that is before maxMs", async () => {
    const keyExpiry = new Date(T0 + 20 * MINUTE);
    const id = McpSessionStore.newId();
    const created = await store.create(id, principal({ expiresAt: keyExpiry }), initFor());
    expect(created.expiresAt).toEqual(keyExpiry);
    expect((await storedRow(id))?.expires_at).toEqual(keyExpiry);
    for (clock = T0 + 5 * MINUTE; clock < keyExpiry.getTime(); clock += 5 * MINUTE) {
      expect(await store.lookup(id)).toMatchObject({ ok: true });
    }
    clock = keyExpiry.getTime();
    expect(await store.lookup(id)).toEqual({ ok: false, reason: 'expired' });
    // A key that outlives maxMs does not lengthen the session.
    const late = McpSessionStore.newId();
    expect((await store.create(late, principal({ expiresAt: new Date(clock + 5 * HOUR) }), initFor())).expiresAt).toEqual(new Date(clock + MAX_MS));
  });

  it('writes last_seen_at at most once per touch interval', async () => {
    const id = await open();
    const lastSeen = async () => (await storedRow(id))?.last_seen_at.getTime();

    clock = T0 + 30 * SECOND;
    const early = await store.lookup(id);
    expect(early.ok && early.session.lastSeenAt.getTime()).toBe(T0);
    expect(await lastSeen()).toBe(T0);

    clock = T0 + TOUCH_MS - 1;
    await store.lookup(id);
    expect(await lastSeen()).toBe(T0);

    clock = T0 + TOUCH_MS;
    const touched = await store.lookup(id);
    expect(touched.ok && touched.session.lastSeenAt.getTime()).toBe(T0 + TOUCH_MS);
    expect(await lastSeen()).toBe(T0 + TOUCH_MS);

    clock = T0 + TOUCH_MS + 45 * SECOND;
    await store.lookup(id);
    expect(await lastSeen()).toBe(T0 + TOUCH_MS);

    clock = T0 + 2 * TOUCH_MS + 5 * SECOND;
    await store.lookup(id);
    expect(await lastSeen()).toBe(T0 + 2 * TOUCH_MS + 5 * SECOND);
  });

  it('defaults the touch interval to a tenth of idleMs, at most a minute', async () => {
    store = new McpSessionStore(t.database.db, { idleMs: 5 * MINUTE, maxMs: MAX_MS, now });
    const id = await open();
    clock = T0 + 30 * SECOND - 1;
    await store.lookup(id);
    expect((await storedRow(id))?.last_seen_at.getTime()).toBe(T0);
    clock = T0 + 30 * SECOND;
    await store.lookup(id);
    expect((await storedRow(id))?.last_seen_at.getTime()).toBe(T0 + 30 * SECOND);
  });

  it('purges idle and expired sessions with their reasons and leaves live ones', async () => {
    const idle = await open(principal({ keyId: 'key_idle' }));
    const expired = await open(principal({ keyId: 'key_short', expiresAt: new Date(T0 + 7 * MINUTE) }));
    clock = T0 + 5 * MINUTE;
    const live = await open(principal({ keyId: 'key_live' }));

    expect(await store.purgeExpired()).toEqual([]);
    clock = T0 + IDLE_MS;
    const ended = await store.purgeExpired();
    expect(ended.map((e) => ({ hash: e.session.hash, keyId: e.session.keyId, reason: e.reason })).sort((a, b) => a.keyId.localeCompare(b.keyId))).toEqual([
      { hash: hashSessionId(idle), keyId: 'key_idle', reason: 'idle_timeout' },
      { hash: hashSessionId(expired), keyId: 'key_short', reason: 'expired' },
    ]);
    expect(await rowCount()).toBe(1);
    expect(await store.lookup(live)).toMatchObject({ ok: true, session: { keyId: 'key_live' } });
    expect(await store.purgeExpired()).toEqual([]);
  });

  it('lists live sessions newest first, filtered by tenant and key', async () => {
    const acmeOne = await open(principal({ tenant: 'acme', keyId: 'key_one' }));
    clock += SECOND;
    const acmeOneAgain = await open(principal({ tenant: 'acme', keyId: 'key_one' }));
    clock += SECOND;
    const acmeTwo = await open(principal({ tenant: 'acme', keyId: 'key_two' }));
    clock += SECOND;
    const globex = await open(principal({ tenant: 'globex', keyId: 'key_three' }));

    const hashes = (sessions: { hash: string }[]) => sessions.map((s) => s.hash);
    expect(hashes(await store.list())).toEqual([globex, acmeTwo, acmeOneAgain, acmeOne].map(hashSessionId));
    expect(hashes(await store.list({ tenant: 'acme' }))).toEqual([acmeTwo, acmeOneAgain, acmeOne].map(hashSessionId));
    expect(hashes(await store.list({ keyId: 'key_one' }))).toEqual([acmeOneAgain, acmeOne].map(hashSessionId));
    expect(hashes(await store.list({ tenant: 'acme', keyId: 'key_two' }))).toEqual([hashSessionId(acmeTwo)]);
    expect(await store.list({ tenant: 'globex', keyId: 'key_one' })).toEqual([]);
    expect(await store.list({ tenant: 'nobody' })).toEqual([]);
  });

  it('leaves idle and expired sessions out of the list before they are purged', async () => {
    const willIdle = await open(principal({ keyId: 'key_idle' }));
    const willExpire = await open(principal({ keyId: 'key_short', expiresAt: new Date(T0 + 3 * MINUTE) }));
    const active = await open(principal({ keyId: 'key_active' }));
    expect(await store.list()).toHaveLength(3);

    clock = T0 + 3 * MINUTE;
    expect((await store.list()).map((s) => s.keyId).sort()).toEqual(['key_active', 'key_idle']);
    await store.lookup(active);

    clock = T0 + IDLE_MS;
    expect((await store.list()).map((s) => s.hash)).toEqual([hashSessionId(active)]);
    // Hidden, not yet deleted: the rows wait for purgeExpired or their next lookup.
    expect(await rowCount()).toBe(3);
    expect(await store.lookup(willIdle)).toEqual({ ok: false, reason: 'idle_timeout' });
    expect(await store.lookup(willExpire)).toEqual({ ok: false, reason: 'expired' });
  });

  it("ends a session by ref within its tenant, and not another tenant's", async () => {
    const id = await open(principal({ tenant: 'acme' }));
    const ref = hashSessionId(id).slice(0, 16);

    expect(await store.endByRef(ref, 'globex')).toBeUndefined();
    expect(await store.lookup(id)).toMatchObject({ ok: true });

    const ended = await store.endByRef(ref, 'acme');
    expect(ended).toMatchObject({ ref, hash: hashSessionId(id), tenant: 'acme', keyId: 'key_writer' });
    expect(await store.lookup(id)).toEqual({ ok: false, reason: 'unknown' });
    expect(await store.endByRef(ref, 'acme')).toBeUndefined();
  });

  it('ends a session by ref across tenants when no tenant is given (an operator)', async () => {
    const id = await open(principal({ tenant: 'globex' }));
    const ref = hashSessionId(id).slice(0, 16);
    expect(await store.endByRef(ref)).toMatchObject({ ref, tenant: 'globex' });
    expect(await storedRow(id)).toBeUndefined();
  });

  it('answers a ref that is not 16 lowercase hex characters with undefined and ends nothing', async () => {
    const id = await open();
    const ref = hashSessionId(id).slice(0, 16);
    for (const bad of ['ABCDEF0123456789', ref.slice(0, 15), `${ref}0`, 'zzzzzzzzzzzzzzzz', `${ref.slice(0, 15)}%`, "' or ''='", '']) {
      expect(await store.endByRef(bad), bad).toBeUndefined();
    }
    expect(await store.lookup(id)).toMatchObject({ ok: true });
  });

  it("ends every session of a key and only that key's", async () => {
    const first = await open(principal({ keyId: 'key_revoked' }));
    const second = await open(principal({ keyId: 'key_revoked' }));
    const other = await open(principal({ keyId: 'key_kept' }));

    expect((await store.endForKey('key_revoked')).sort()).toEqual([first, second].map(hashSessionId).sort());
    expect(await store.lookup(first)).toEqual({ ok: false, reason: 'unknown' });
    expect(await store.lookup(second)).toEqual({ ok: false, reason: 'unknown' });
    expect(await store.lookup(other)).toMatchObject({ ok: true });
    expect(await store.endForKey('key_revoked')).toEqual([]);
  });

  it('stores only the SHA-256 of the id, never the id itself', async () => {
    const id = await open();
    const rows = await t.database.db.selectFrom('mcp_sessions').selectAll().execute();
    expect(rows).toHaveLength(1);
    const row = rows[0];
    const hash = createHash('sha256').update(id).digest('hex');
    expect(row?.id_hash).toBe(hash);
    expect(row?.ref).toBe(hash.slice(0, 16));
    const idBytesHex = Buffer.from(id, 'base64url').toString('hex');
    for (const [column, value] of Object.entries(row ?? {})) {
      const text = value instanceof Date ? value.toISOString() : typeof value === 'string' ? value : JSON.stringify(value);
      expect(text ?? '', column).not.toContain(id);
      expect(text ?? '', column).not.toContain(idBytesHex);
    }
  });

  it("gives operators a view with the client and times but no hash, id or capabilities", async () => {
    const id = McpSessionStore.newId();
    const session = await store.create(id, principal(), initFor('claude-code', '2.0.1'));
    const view = describeMcpSession(session);
    expect(view).toEqual({
      ref: session.ref,
      tenant: 'acme',
      keyId: 'key_writer',
      principalKind: 'key',
      client: 'claude-code/2.0.1',
      protocolVersion: '2025-11-25',
      createdAt: new Date(T0).toISOString(),
      lastSeenAt: new Date(T0).toISOString(),
      expiresAt: new Date(T0 + MAX_MS).toISOString(),
    });
    const text = JSON.stringify(view);
    expect(text).not.toContain(session.hash);
    expect(text).not.toContain(id);
    expect(text).not.toContain('sampling');
  });

  it('records the client only as far as it describes itself, clipped to 200 characters', async () => {
    const bare = await store.create(McpSessionStore.newId(), principal(), { protocolVersion: '2025-11-25', params: {} });
    expect(describeMcpSession(bare).client).toBeNull();
    const nameOnly = await store.create(McpSessionStore.newId(), principal(), { protocolVersion: '2025-11-25', params: { clientInfo: { name: 'agent', version: 7 } } });
    expect(describeMcpSession(nameOnly).client).toBe('agent');
    const long = await store.create(McpSessionStore.newId(), principal(), initFor('n'.repeat(500), 'v'.repeat(500)));
    expect(long.clientName).toHaveLength(200);
    const row = await t.database.db.selectFrom('mcp_sessions').select(['client_name', 'client_version']).where('id_hash', '=', long.hash).executeTakeFirstOrThrow();
    expect(row).toEqual({ client_name: 'n'.repeat(200), client_version: 'v'.repeat(200) });
  });
});
