/**
 * The MCP resumable-stream history (src/mcp/event-store.ts) in memory, on PGlite and on
 * PostgreSQL: replay order and stream isolation, priming events, session isolation, the age
 * and count windows, and refusal of a tampered history (on the database engines, where a test
 * can reach a stored row the way an attacker with database access would).
 *
 * Keys and session ids are generated at run time; no secret-shaped literal lives here.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  type EventHistory,
  type EventHistoryOptions,
  EventReplayError,
  type SessionEventStore,
  type TamperedEvent,
  databaseEventHistory,
  memoryEventHistory,
} from '../src/mcp/event-store.js';
import { KeyRing, isEncryptedValue } from '../src/store/crypto.js';
import { ENGINES, type Engine, type TestDatabase, openTestDatabase } from './helpers/database.js';

const MINUTE = 60_000;
const BACKENDS = ['memory', ...ENGINES] as const;
type Backend = (typeof BACKENDS)[number];

const PRIMING = {} as JSONRPCMessage;

function newSessionHash(): string {
  return createHash('sha256').update(randomBytes(32)).digest('hex');
}

function notification(text: string): JSONRPCMessage {
  return { jsonrpc: '2.0', method: 'notifications/message', params: { level: 'info', data: text } };
}

/** Replays into an array; returns what was sent and the stream id. */
async function replay(store: SessionEventStore, lastEventId: string) {
  const sent: Array<[string, JSONRPCMessage]> = [];
  const streamId = await store.replayEventsAfter(lastEventId, {
    send: async (eventId, message) => {
      sent.push([eventId, message]);
    },
  });
  return { streamId, sent };
}

/** Stores each message on `streamId`; returns their event ids in order. */
async function storeAll(store: SessionEventStore, streamId: string, messages: readonly JSONRPCMessage[]): Promise<string[]> {
  const ids: string[] = [];
  for (const message of messages) ids.push(await store.storeEvent(streamId, message));
  return ids;
}

function flipByte(payload: string): string {
  const parts = payload.split('.');
  const sealed = Buffer.from(parts[3] ?? '', 'base64url');
  sealed[0] = (sealed[0] ?? 0) ^ 0x01;
  parts[3] = sealed.toString('base64url');
  return parts.join('.');
}

describe.each(BACKENDS)('MCP event history (%s)', (backend: Backend) => {
  let t: TestDatabase | undefined;
  let keyRing: KeyRing;
  let clock: number;
  let tampered: TamperedEvent[];

  function makeHistory(options: Partial<EventHistoryOptions> = {}): EventHistory {
    const all: EventHistoryOptions = {
      keyRing,
      onTampered: (event) => tampered.push(event),
      now: () => new Date(clock),
      ...options,
    };
    return backend === 'memory' ? memoryEventHistory(all) : databaseEventHistory(requireDb().database.db, all);
  }

  function requireDb(): TestDatabase {
    if (!t) throw new Error('no database for the memory backend');
    return t;
  }

  /**
   * Registers a test that reaches stored rows directly only on the database engines (the memory
   * backend exposes none), so memory runs report no skipped tests.
   */
  const itOnDatabase: (name: string, fn: () => Promise<void>) => void = backend === 'memory' ? () => {} : (name, fn) => it(name, fn);

  beforeAll(async () => {
    if (backend !== 'memory') t = await openTestDatabase(backend as Engine);
  });
  afterAll(async () => {
    await t?.cleanup();
  });
  beforeEach(async () => {
    keyRing = KeyRing.fromConfig([randomBytes(32).toString('base64')]);
    clock = Date.parse('2030-01-01T00:00:00Z');
    tampered = [];
    if (t) await t.database.db.deleteFrom('mcp_events').execute();
  });

  async function storedRow(eventId: string) {
    return requireDb().database.db.selectFrom('mcp_events').selectAll().where('id', '=', eventId).executeTakeFirstOrThrow();
  }

  async function setPayload(eventId: string, payload: string): Promise<void> {
    await requireDb().database.db.updateTable('mcp_events').set({ payload }).where('id', '=', eventId).execute();
  }

  async function countRows(sessionHash?: string): Promise<number> {
    let query = requireDb().database.db.selectFrom('mcp_events').select((eb) => eb.fn.countAll<string>().as('n'));
    if (sessionHash) query = query.where('session_hash', '=', sessionHash);
    return Number((await query.executeTakeFirstOrThrow()).n);
  }

  describe('storing and replaying', () => {
    it('replays the later events of the same stream in store order and returns its stream id', async () => {
      const store = makeHistory().forSession(newSessionHash());
      const [start = '', a1 = '', a2 = ''] = await storeAll(store, 'stream-a', [PRIMING, notification('a1'), notification('a2')]);
      await store.storeEvent('stream-b', notification('b1'));
      const a3 = await store.storeEvent('stream-a', notification('a3'));

      const { streamId, sent } = await replay(store, start);

      expect(streamId).toBe('stream-a');
      expect(sent).toEqual([
        [a1, notification('a1')],
        [a2, notification('a2')],
        [a3, notification('a3')],
      ]);
    });

    it('replays only the events after the given one', async () => {
      const store = makeHistory().forSession(newSessionHash());
      const [, , a2 = '', a3 = ''] = await storeAll(store, 'stream-a', [PRIMING, notification('a1'), notification('a2'), notification('a3')]);

      expect((await replay(store, a2)).sent).toEqual([[a3, notification('a3')]]);
      expect((await replay(store, a3)).sent).toEqual([]);
    });

    it('never replays events of another stream of the same session', async () => {
      const store = makeHistory().forSession(newSessionHash());
      const [b0 = ''] = await storeAll(store, 'stream-b', [PRIMING]);
      await storeAll(store, 'stream-a', [PRIMING, notification('a1')]);
      const b1 = await store.storeEvent('stream-b', notification('b1'));

      const { streamId, sent } = await replay(store, b0);

      expect(streamId).toBe('stream-b');
      expect(sent).toEqual([[b1, notification('b1')]]);
    });

    it('never sends priming events on replay, though they are valid resume points', async () => {
      const store = makeHistory().forSession(newSessionHash());
      const [first = '', , , last = ''] = await storeAll(store, 'stream-a', [PRIMING, PRIMING, notification('a1'), PRIMING]);

      expect((await replay(store, first)).sent.map(([, message]) => message)).toEqual([notification('a1')]);
      expect(await replay(store, last)).toEqual({ streamId: 'stream-a', sent: [] });
    });

    it('answers getStreamIdForEventId with the stream of an event of this session', async () => {
      const store = makeHistory().forSession(newSessionHash());
      const a = await store.storeEvent('stream-a', PRIMING);
      const b = await store.storeEvent('_GET_stream', notification('b'));

      expect(await store.getStreamIdForEventId(a)).toBe('stream-a');
      expect(await store.getStreamIdForEventId(b)).toBe('_GET_stream');
    });

    it('makes event ids of 16 random bytes in base64url that say nothing of stream or time', async () => {
      const store = makeHistory().forSession(newSessionHash());
      const ids = await storeAll(store, 'stream-a', Array.from({ length: 50 }, () => PRIMING));

      expect(new Set(ids).size).toBe(ids.length);
      for (const id of ids) {
        expect(id).toMatch(/^[A-Za-z0-9_-]{22}$/);
        expect(Buffer.from(id, 'base64url')).toHaveLength(16);
        expect(id).not.toContain('stream');
        expect(id).not.toContain(String(clock));
      }
    });

    it('encrypts every payload with the key ring, bound to session, stream and event id', async () => {
      const sessionHash = newSessionHash();
      const store = makeHistory().forSession(sessionHash);
      const encrypt = vi.spyOn(keyRing, 'encrypt');

      const id = await store.storeEvent('stream-a', notification('sealed text'));

      expect(encrypt).toHaveBeenCalledOnce();
      expect(encrypt.mock.calls[0]?.[1]).toBe(`mcp_events:${sessionHash}:stream-a:${id}`);
      encrypt.mockRestore();
    });

    itOnDatabase('stores no plaintext: the payload column holds only ciphertext', async () => {
      const marker = `plaintext-marker-${randomBytes(8).toString('hex')}`;
      const store = makeHistory().forSession(newSessionHash());
      const id = await store.storeEvent('stream-a', notification(marker));

      const row = await storedRow(id);

      expect(isEncryptedValue(row.payload)).toBe(true);
      expect(row.payload).not.toContain(marker);
      expect(row.payload).not.toContain('notifications/message');
      expect(row.stream_id).toBe('stream-a');
    });

    it('refuses a session hash that could blur the encryption context', () => {
      const history = makeHistory();
      expect(() => history.forSession('')).toThrow(/sessionHash/);
      expect(() => history.forSession('a:b')).toThrow(/sessionHash/);
    });
  });

  describe('session isolation', () => {
    it('treats an unknown event id as unknown: no stream, and replay throws', async () => {
      const store = makeHistory().forSession(newSessionHash());
      await store.storeEvent('stream-a', PRIMING);
      const unknown = randomBytes(16).toString('base64url');

      for (const id of [unknown, '', 'not an id', `${unknown}x`]) {
        expect(await store.getStreamIdForEventId(id)).toBeUndefined();
        await expect(replay(store, id)).rejects.toMatchObject({ name: 'EventReplayError', reason: 'unknown_event' });
      }
    });

    it('treats another session’s event id as unknown and sends nothing of its stream', async () => {
      const history = makeHistory();
      const victim = history.forSession(newSessionHash());
      const attacker = history.forSession(newSessionHash());
      const [start = ''] = await storeAll(victim, 'stream-a', [PRIMING, notification('secret')]);
      const send = vi.fn(async () => {});

      expect(await attacker.getStreamIdForEventId(start)).toBeUndefined();
      await expect(attacker.replayEventsAfter(start, { send })).rejects.toThrow(EventReplayError);
      expect(send).not.toHaveBeenCalled();
      expect((await replay(victim, start)).sent).toHaveLength(1);
    });

    it('deleteSession forgets that session’s events and no other', async () => {
      const history = makeHistory();
      const ending = newSessionHash();
      const ended = history.forSession(ending);
      const other = history.forSession(newSessionHash());
      const [endedStart = ''] = await storeAll(ended, 'stream-a', [PRIMING, notification('gone')]);
      const [otherStart = ''] = await storeAll(other, 'stream-a', [PRIMING, notification('kept')]);

      await history.deleteSession(ending);

      expect(await ended.getStreamIdForEventId(endedStart)).toBeUndefined();
      await expect(replay(ended, endedStart)).rejects.toThrow(EventReplayError);
      expect((await replay(other, otherStart)).sent.map(([, m]) => m)).toEqual([notification('kept')]);
      if (t) expect(await countRows(ending)).toBe(0);
    });
  });

  describe('age and count windows', () => {
    it('neither finds nor replays events older than maxAge', async () => {
      const store = makeHistory({ maxAgeMs: 5 * MINUTE }).forSession(newSessionHash());
      const old = await store.storeEvent('stream-a', PRIMING);
      clock += 2 * MINUTE;
      const [recent = '', later = ''] = await storeAll(store, 'stream-a', [notification('recent'), notification('later')]);
      clock += 3 * MINUTE + 1;

      expect(await store.getStreamIdForEventId(old)).toBeUndefined();
      await expect(replay(store, old)).rejects.toMatchObject({ reason: 'unknown_event' });
      expect(await store.getStreamIdForEventId(recent)).toBe('stream-a');
      expect((await replay(store, recent)).sent).toEqual([[later, notification('later')]]);
    });

    it('purgeExpired deletes events older than maxAge and returns how many', async () => {
      const history = makeHistory({ maxAgeMs: 5 * MINUTE });
      const one = history.forSession(newSessionHash());
      const two = history.forSession(newSessionHash());
      await storeAll(one, 'stream-a', [PRIMING, notification('old')]);
      await two.storeEvent('stream-b', PRIMING);
      clock += 4 * MINUTE;
      const [kept = ''] = await storeAll(one, 'stream-a', [notification('kept'), notification('after')]);

      // The first three are now 5 min + 1 ms old; the last two 1 min + 1 ms.
      const purgeAt = new Date(clock + MINUTE + 1);
      expect(await history.purgeExpired(purgeAt)).toBe(3);
      expect(await history.purgeExpired(purgeAt)).toBe(0);

      expect((await replay(one, kept)).sent.map(([, m]) => m)).toEqual([notification('after')]);
      if (t) expect(await countRows()).toBe(2);
    });

    it('purgeExpired defaults to the configured clock', async () => {
      const history = makeHistory({ maxAgeMs: MINUTE });
      await history.forSession(newSessionHash()).storeEvent('stream-a', PRIMING);

      expect(await history.purgeExpired()).toBe(0);
      clock += MINUTE + 1;
      expect(await history.purgeExpired()).toBe(1);
    });

    it('keeps only the newest maxEvents of a session', async () => {
      const history = makeHistory({ maxEvents: 3 });
      const sessionHash = newSessionHash();
      const store = history.forSession(sessionHash);
      const other = history.forSession(newSessionHash());
      const [otherStart = ''] = await storeAll(other, 'stream-a', [PRIMING, notification('other')]);
      const [e0 = '', e1 = '', e2 = '', e3 = '', e4 = ''] = await storeAll(store, 'stream-a', [
        PRIMING,
        notification('1'),
        notification('2'),
        notification('3'),
        notification('4'),
      ]);

      expect(await store.getStreamIdForEventId(e0)).toBeUndefined();
      expect(await store.getStreamIdForEventId(e1)).toBeUndefined();
      await expect(replay(store, e1)).rejects.toMatchObject({ reason: 'unknown_event' });
      expect(await store.getStreamIdForEventId(e2)).toBe('stream-a');
      expect((await replay(store, e2)).sent).toEqual([
        [e3, notification('3')],
        [e4, notification('4')],
      ]);
      expect((await replay(other, otherStart)).sent).toHaveLength(1);
      if (t) expect(await countRows(sessionHash)).toBe(3);
    });

    it('counts maxEvents across all streams of a session, and exactly even between trims', async () => {
      const history = makeHistory({ maxEvents: 20 });
      const sessionHash = newSessionHash();
      const store = history.forSession(sessionHash);
      const ids: string[] = [];
      for (let i = 0; i < 26; i++) ids.push(await store.storeEvent(i % 2 === 0 ? 'stream-a' : 'stream-b', notification(String(i))));

      // Trimmed before every other store (a tenth of 20): events 5..25 are still stored, but
      // only the newest 20, 6..25, are in the history.
      if (t) expect(await countRows(sessionHash)).toBe(21);
      expect(await store.getStreamIdForEventId(ids[5] ?? '')).toBeUndefined();
      await expect(replay(store, ids[5] ?? '')).rejects.toMatchObject({ reason: 'unknown_event' });
      const { streamId, sent } = await replay(store, ids[6] ?? '');
      expect(streamId).toBe('stream-a');
      expect(sent.map(([id]) => id)).toEqual([8, 10, 12, 14, 16, 18, 20, 22, 24].map((i) => ids[i]));
    });
  });

  describe('tampering', () => {
    async function storedStream() {
      const sessionHash = newSessionHash();
      const store = makeHistory().forSession(sessionHash);
      const [start = '', first = '', second = ''] = await storeAll(store, 'stream-a', [PRIMING, notification('first'), notification('second')]);
      return { sessionHash, store, start, first, second };
    }

    async function expectRefused(store: SessionEventStore, lastEventId: string): Promise<EventReplayError> {
      const send = vi.fn(async () => {});
      const error = await store.replayEventsAfter(lastEventId, { send }).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error).toBeInstanceOf(EventReplayError);
      expect(send).not.toHaveBeenCalled();
      return error as EventReplayError;
    }

    itOnDatabase('refuses the whole replay when a payload has a flipped byte, and reports it once', async () => {
      const { sessionHash, store, start, second } = await storedStream();
      const original = (await storedRow(second)).payload;
      await setPayload(second, flipByte(original));

      const error = await expectRefused(store, start);

      expect(error.reason).toBe('tampered');
      expect(error.message).not.toContain(original);
      expect(error.message).not.toContain('second');
      expect(tampered).toEqual([{ sessionHash, streamId: 'stream-a', eventId: second, reason: 'authentication_failed' }]);
    });

    itOnDatabase('refuses a payload copied from another event of the same stream', async () => {
      const { sessionHash, store, start, first, second } = await storedStream();
      await setPayload(second, (await storedRow(first)).payload);

      await expectRefused(store, start);
      expect(tampered).toEqual([{ sessionHash, streamId: 'stream-a', eventId: second, reason: 'authentication_failed' }]);
    });

    itOnDatabase('refuses a payload copied from another session', async () => {
      const { store, start, second } = await storedStream();
      const other = makeHistory().forSession(newSessionHash());
      const foreign = await other.storeEvent('stream-a', notification('foreign'));
      await setPayload(second, (await storedRow(foreign)).payload);

      await expectRefused(store, start);
      expect(tampered.map((event) => [event.eventId, event.reason])).toEqual([[second, 'authentication_failed']]);
    });

    itOnDatabase('refuses an event moved to another stream', async () => {
      const store = makeHistory().forSession(newSessionHash());
      const target = await store.storeEvent('stream-b', PRIMING);
      const [, first = ''] = await storeAll(store, 'stream-a', [PRIMING, notification('first')]);
      await requireDb().database.db.updateTable('mcp_events').set({ stream_id: 'stream-b' }).where('id', '=', first).execute();

      await expectRefused(store, target);
      expect(tampered.map((event) => [event.streamId, event.eventId, event.reason])).toEqual([['stream-b', first, 'authentication_failed']]);
    });

    itOnDatabase('refuses a payload that is not an encrypted value, with reason malformed', async () => {
      const { store, start, first } = await storedStream();
      await setPayload(first, 'not a sealed value');

      await expectRefused(store, start);
      expect(tampered.map((event) => event.reason)).toEqual(['malformed']);
    });

    itOnDatabase('refuses a correctly sealed payload that is not a JSON-RPC object, with reason malformed', async () => {
      const { sessionHash, store, start, first, second } = await storedStream();
      await setPayload(first, keyRing.encrypt('{not json', `mcp_events:${sessionHash}:stream-a:${first}`));
      await setPayload(second, keyRing.encrypt('"a string"', `mcp_events:${sessionHash}:stream-a:${second}`));

      await expectRefused(store, start);
      expect(tampered.map((event) => [event.eventId, event.reason])).toEqual([[first, 'malformed']]);
      tampered = [];
      await expectRefused(store, first);
      expect(tampered.map((event) => [event.eventId, event.reason])).toEqual([[second, 'malformed']]);
    });

    itOnDatabase('refuses a payload sealed under a key that is not in the ring', async () => {
      const { sessionHash, store, start, first } = await storedStream();
      const stranger = KeyRing.fromConfig([randomBytes(32).toString('base64')]);
      await setPayload(first, stranger.encrypt(JSON.stringify(notification('x')), `mcp_events:${sessionHash}:stream-a:${first}`));

      await expectRefused(store, start);
      expect(tampered.map((event) => event.reason)).toEqual(['unknown_key']);
    });

    it('replays an untouched history without reporting anything', async () => {
      const { store, start } = await storedStream();

      expect((await replay(store, start)).sent).toHaveLength(2);
      expect(tampered).toEqual([]);
    });
  });
});

describe('event history options', () => {
  const keyRing = KeyRing.fromConfig([randomBytes(32).toString('base64')]);
  const onTampered = () => {};

  it.each([
    ['maxEvents', { maxEvents: 0 }],
    ['maxEvents', { maxEvents: 1.5 }],
    ['maxAgeMs', { maxAgeMs: -1 }],
    ['maxAgeMs', { maxAgeMs: Number.NaN }],
  ])('refuses a bad %s at build time, naming it', (name, bad) => {
    expect(() => memoryEventHistory({ keyRing, onTampered, ...bad })).toThrow(new RegExp(`memoryEventHistory: ${name}`));
  });

  it('requires a key ring and a tamper callback', () => {
    expect(() => memoryEventHistory({ onTampered } as unknown as EventHistoryOptions)).toThrow(/keyRing/);
    expect(() => memoryEventHistory({ keyRing } as unknown as EventHistoryOptions)).toThrow(/onTampered/);
  });
});
