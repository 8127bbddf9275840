/**
 * The resumable-stream history of the MCP endpoint: the SSE events the SDK's Streamable HTTP
 * transport stores as it sends them, and replays when a client reconnects with Last-Event-ID
 * (MCP 2025-11-25, Transports § Resumability and Redelivery). One `EventHistory` serves every
 * session; `forSession` gives the transport of one session an `EventStore` bound to it.
 *
 * - An event id is 16 bytes from the CSPRNG, base64url: unguessable, and it says nothing about
 *   its session, stream or time. The record holds which session and stream an event belongs
 *   to, and a session's view answers only for that session's events, so another session's
 *   Last-Event-ID is simply unknown (the SDK answers 400), never a way into its stream.
 * - A payload is the JSON-RPC message sealed with the key ring (AES-256-GCM) under
 *   `mcp_events:<sessionHash>:<streamId>:<eventId>`: a payload copied to another session,
 *   stream or event fails authentication. A replay opens every event before it sends any; if
 *   one fails, `onTampered` hears of it and the whole replay is refused. A tampered history is
 *   never delivered, not even in part.
 * - A session's history is its newest `maxEvents` events that are not older than `maxAgeMs`.
 *   An event outside that window is unknown even while its row still exists, so answers never
 *   depend on when the clean-up last ran: the database trims a session once per tenth of
 *   `maxEvents` stores (sorting a session's rows on every insert would cost more than the rows),
 *   and `purgeExpired` drops old events on the server's timer.
 * - Both clean-ups remove a session's oldest events only. So while a resume point is there,
 *   everything after it is too, and a replay reads the point and its stream's later events in
 *   one statement: it is complete or refused, never missing events in the middle.
 * - Priming events (the empty `{}` the SDK stores to hand out a first event id) are stored like
 *   any other, being valid resume points, and are never sent on replay.
 * - Memory and database differ only in the `EventLog` underneath; keys, windows and tamper
 *   checks are one code path. No error message holds a payload, a plaintext or a key.
 */
import { randomBytes } from 'node:crypto';
import type { EventStore } from '@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import type { Kysely } from 'kysely';
import { DecryptError, type KeyRing, decryptJson, encryptJson } from '../store/crypto.js';
import type { Tables } from '../store/tables.js';

const EVENT_ID_BYTES = 16;
/** 16 bytes in unpadded base64url. Anything else is unknown without touching the store. */
const EVENT_ID = /^[A-Za-z0-9_-]{22}$/;
const DEFAULT_MAX_AGE_MS = 5 * 60_000;
const DEFAULT_MAX_EVENTS = 1000;

/** The SDK's `EventStore`, with the optional stream lookup always present (it lets the SDK refuse a foreign id with 400). */
export type SessionEventStore = EventStore & { getStreamIdForEventId(eventId: string): Promise<string | undefined> };

export interface EventHistory {
  /** An EventStore bound to one session (sessionHash = SHA-256 hex of the session id, opaque here). */
  forSession(sessionHash: string): SessionEventStore;
  /** Deletes a session's events (session ended). */
  deleteSession(sessionHash: string): Promise<void>;
  /** Deletes events older than maxAge; returns how many. Called on a timer by the server. */
  purgeExpired(now?: Date): Promise<number>;
}

/** A stored event that failed to open on replay: for the audit log, without its payload. */
export interface TamperedEvent {
  sessionHash: string;
  streamId: string;
  eventId: string;
  /** `DecryptError.reason`, or `malformed` for a payload that opens but is not a JSON object. */
  reason: string;
}

export interface EventHistoryOptions {
  keyRing: KeyRing;
  /** Events older than this are neither found nor replayed (default 5 min). */
  maxAgeMs?: number;
  /** Per session: only the newest this many events are kept (default 1000). */
  maxEvents?: number;
  /** Called once per refused replay; the caller audits it. */
  onTampered(event: TamperedEvent): void;
  now?: () => Date;
}

export type EventReplayFailure = 'unknown_event' | 'tampered';

const FAILURE_MESSAGES: Record<EventReplayFailure, string> = {
  unknown_event: 'the last event id is not in this session’s history (unknown, expired or dropped)',
  tampered: 'a stored event of this stream failed to decrypt; nothing was replayed',
};

/** Why `replayEventsAfter` refused. The SDK turns any throw into an error response; the reason is for logs. */
export class EventReplayError extends Error {
  override readonly name = 'EventReplayError';
  readonly reason: EventReplayFailure;

  constructor(reason: EventReplayFailure) {
    super(FAILURE_MESSAGES[reason]);
    this.reason = reason;
  }
}

export function memoryEventHistory(options: EventHistoryOptions): EventHistory {
  return eventHistory('memoryEventHistory', memoryEventLog(), options);
}

export function databaseEventHistory(db: Kysely<Tables>, options: EventHistoryOptions): EventHistory {
  if (!db) throw new Error('databaseEventHistory: db is required');
  return eventHistory('databaseEventHistory', databaseEventLog(db), options);
}

/** Where an event sits in its session's order; meaningful only to the log that returned it. */
type Position = string | number;

interface Located {
  streamId: string;
  position: Position;
}

interface StoredEvent {
  id: string;
  /** `KeyRing.encrypt` output; the log never sees a plaintext. */
  payload: string;
}

/** The storage under a history: rows in, rows out. Knows nothing of keys or messages. */
interface EventLog {
  append(sessionHash: string, streamId: string, event: StoredEvent, createdAt: Date): Promise<void>;
  /** The event, if it is among its session's newest `maxEvents` and was created at or after `since`. */
  locate(sessionHash: string, eventId: string, since: Date, maxEvents: number): Promise<Located | undefined>;
  /**
   * In one consistent read: the event at `from`, if still there, then the later events of its
   * stream created at or after `since`; at most `limit` rows, oldest first.
   */
  readStream(sessionHash: string, from: Located, since: Date, limit: number): Promise<StoredEvent[]>;
  /** Deletes all but the session's newest `keep` events. */
  trim(sessionHash: string, keep: number): Promise<void>;
  deleteSession(sessionHash: string): Promise<void>;
  /** Deletes events created before `cutoff`; returns how many. */
  deleteCreatedBefore(cutoff: Date): Promise<number>;
}

function eventHistory(factory: string, log: EventLog, options: EventHistoryOptions): EventHistory {
  const { keyRing, maxAgeMs = DEFAULT_MAX_AGE_MS, maxEvents = DEFAULT_MAX_EVENTS, onTampered, now = () => new Date() } = options;
  if (typeof keyRing?.encrypt !== 'function') throw new Error(`${factory}: keyRing is required`);
  if (typeof onTampered !== 'function') throw new Error(`${factory}: onTampered is required (a tampered history must be audited)`);
  requirePositiveInteger(factory, 'maxAgeMs', maxAgeMs);
  requirePositiveInteger(factory, 'maxEvents', maxEvents);
  // The overshoot between trims stays under 10 % of the limit, and its cost per event constant.
  const trimEvery = Math.max(1, Math.floor(maxEvents / 10));
  const oldestAllowed = (at: Date) => new Date(at.getTime() - maxAgeMs);

  function refuseTampered(sessionHash: string, streamId: string, eventId: string, reason: string): never {
    onTampered({ sessionHash, streamId, eventId, reason });
    throw new EventReplayError('tampered');
  }

  /** Opens every event or none: a replay must not deliver part of a history and then fail. */
  function openAll(sessionHash: string, streamId: string, events: readonly StoredEvent[]): Array<{ id: string; message: JSONRPCMessage }> {
    return events.map(({ id, payload }) => {
      let message: unknown;
      try {
        message = decryptJson(keyRing, payload, eventContext(sessionHash, streamId, id));
      } catch (err) {
        if (!(err instanceof DecryptError)) throw err;
        refuseTampered(sessionHash, streamId, id, err.reason);
      }
      // We only ever seal JSON-RPC messages (objects); anything else was not written by us.
      if (typeof message !== 'object' || message === null || Array.isArray(message)) refuseTampered(sessionHash, streamId, id, 'malformed');
      return { id, message: message as JSONRPCMessage };
    });
  }

  function forSession(sessionHash: string): SessionEventStore {
    // Part of the encryption context, where a ':' would let two sessions' contexts coincide.
    if (typeof sessionHash !== 'string' || sessionHash.length === 0 || sessionHash.includes(':')) {
      throw new TypeError(`${factory}: sessionHash must be a non-empty string without ':'`);
    }
    let storesUntilTrim = 0;

    function locate(eventId: string, since: Date): Promise<Located | undefined> {
      if (typeof eventId !== 'string' || !EVENT_ID.test(eventId)) return Promise.resolve(undefined);
      return log.locate(sessionHash, eventId, since, maxEvents);
    }

    async function store(streamId: string, message: JSONRPCMessage): Promise<string> {
      if (typeof streamId !== 'string' || streamId.length === 0) throw new TypeError(`${factory}: streamId must be a non-empty string`);
      const id = randomBytes(EVENT_ID_BYTES).toString('base64url');
      const payload = encryptJson(keyRing, message, eventContext(sessionHash, streamId, id));
      // Trimmed before the insert, so a failing trim stores nothing rather than an event
      // whose id the transport never learns.
      if (storesUntilTrim === 0) await log.trim(sessionHash, maxEvents - 1);
      storesUntilTrim = (storesUntilTrim + 1) % trimEvery;
      await log.append(sessionHash, streamId, { id, payload }, now());
      return id;
    }

    // The transport writes each event to the client once its store resolves, and does not wait
    // for one send before starting the next: stores run one at a time, in call order, so that a
    // tool's last progress notification cannot overtake its result, live or in a replay.
    let previous: Promise<unknown> = Promise.resolve();

    return {
      storeEvent(streamId, message) {
        const stored = previous.then(() => store(streamId, message));
        previous = stored.catch(() => {});
        return stored;
      },

      async getStreamIdForEventId(eventId) {
        return (await locate(eventId, oldestAllowed(now())))?.streamId;
      },

      async replayEventsAfter(lastEventId, { send }) {
        const since = oldestAllowed(now());
        const from = await locate(lastEventId, since);
        if (!from) throw new EventReplayError('unknown_event');
        const rows = await log.readStream(sessionHash, from, since, maxEvents + 1);
        // The resume point was dropped since `locate`, or has maxEvents newer events and is
        // about to be: what follows it may be incomplete, so the client must start afresh.
        if (rows[0]?.id !== lastEventId || rows.length > maxEvents) throw new EventReplayError('unknown_event');
        for (const { id, message } of openAll(sessionHash, from.streamId, rows.slice(1))) {
          if (!isPrimingEvent(message)) await send(id, message);
        }
        return from.streamId;
      },
    };
  }

  return {
    forSession,
    deleteSession(sessionHash) {
      return log.deleteSession(sessionHash);
    },
    purgeExpired(at = now()) {
      return log.deleteCreatedBefore(oldestAllowed(at));
    },
  };
}

/** Binds a payload to its session, stream and event (crypto.ts's associated data). */
function eventContext(sessionHash: string, streamId: string, eventId: string): string {
  return `mcp_events:${sessionHash}:${streamId}:${eventId}`;
}

/** The SDK stores `{}` to hand out a stream's first event id; it carries no message. */
function isPrimingEvent(message: object): boolean {
  return Object.keys(message).length === 0;
}

function requirePositiveInteger(factory: string, name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value <= 0) throw new Error(`${factory}: ${name} must be a positive integer`);
}

interface MemoryEvent extends StoredEvent {
  streamId: string;
  seq: number;
  createdAt: number;
}

/** One process's history: per session, its events in store order. */
function memoryEventLog(): EventLog {
  const sessions = new Map<string, MemoryEvent[]>();
  let lastSeq = 0;

  return {
    async append(sessionHash, streamId, event, createdAt) {
      let events = sessions.get(sessionHash);
      if (!events) sessions.set(sessionHash, (events = []));
      lastSeq += 1;
      events.push({ id: event.id, payload: event.payload, streamId, seq: lastSeq, createdAt: createdAt.getTime() });
    },

    async locate(sessionHash, eventId, since, maxEvents) {
      const events = sessions.get(sessionHash) ?? [];
      const index = events.findIndex((event) => event.id === eventId);
      const event = events[index];
      if (!event || event.createdAt < since.getTime() || events.length - 1 - index >= maxEvents) return undefined;
      return { streamId: event.streamId, position: event.seq };
    },

    async readStream(sessionHash, from, since, limit) {
      const events = sessions.get(sessionHash) ?? [];
      return events
        .filter((event) => event.streamId === from.streamId && event.seq >= Number(from.position) && event.createdAt >= since.getTime())
        .slice(0, limit)
        .map(({ id, payload }) => ({ id, payload }));
    },

    async trim(sessionHash, keep) {
      const events = sessions.get(sessionHash);
      if (events && events.length > keep) events.splice(0, events.length - keep);
    },

    async deleteSession(sessionHash) {
      sessions.delete(sessionHash);
    },

    async deleteCreatedBefore(cutoff) {
      let deleted = 0;
      for (const [sessionHash, events] of sessions) {
        const kept = events.filter((event) => event.createdAt >= cutoff.getTime());
        deleted += events.length - kept.length;
        if (kept.length > 0) sessions.set(sessionHash, kept);
        else sessions.delete(sessionHash);
      }
      return deleted;
    },
  };
}

/** The `mcp_events` table (migration 0004); `seq` is the store order. */
function databaseEventLog(db: Kysely<Tables>): EventLog {
  return {
    async append(sessionHash, streamId, event, createdAt) {
      await db
        .insertInto('mcp_events')
        .values({ id: event.id, session_hash: sessionHash, stream_id: streamId, payload: event.payload, created_at: createdAt })
        .execute();
    },

    async locate(sessionHash, eventId, since, maxEvents) {
      const row = await db
        .selectFrom('mcp_events as event')
        .select(['event.stream_id', 'event.seq'])
        .where('event.id', '=', eventId)
        .where('event.session_hash', '=', sessionHash)
        .where('event.created_at', '>=', since)
        // Out of the window once maxEvents newer events exist, whether or not a trim has run.
        .where(({ not, exists, selectFrom }) =>
          not(
            exists(
              selectFrom('mcp_events as newer')
                .select('newer.seq')
                .where('newer.session_hash', '=', sessionHash)
                .whereRef('newer.seq', '>', 'event.seq')
                .limit(1)
                .offset(maxEvents - 1),
            ),
          ),
        )
        .executeTakeFirst();
      return row && { streamId: row.stream_id, position: row.seq };
    },

    async readStream(sessionHash, from, since, limit) {
      // One statement, one snapshot: if the resume point is in it, so is everything after it.
      return db
        .selectFrom('mcp_events')
        .select(['id', 'payload'])
        .where('session_hash', '=', sessionHash)
        .where('stream_id', '=', from.streamId)
        .where('seq', '>=', from.position)
        .where('created_at', '>=', since)
        .orderBy('seq')
        .limit(limit)
        .execute();
    },

    async trim(sessionHash, keep) {
      // Everything up to the newest event beyond the first `keep`; nothing when there are fewer.
      const lastDropped = db
        .selectFrom('mcp_events')
        .select('seq')
        .where('session_hash', '=', sessionHash)
        .orderBy('seq', 'desc')
        .limit(1)
        .offset(keep);
      await db.deleteFrom('mcp_events').where('session_hash', '=', sessionHash).where('seq', '<=', lastDropped).execute();
    },

    async deleteSession(sessionHash) {
      await db.deleteFrom('mcp_events').where('session_hash', '=', sessionHash).execute();
    },

    async deleteCreatedBefore(cutoff) {
      const result = await db.deleteFrom('mcp_events').where('created_at', '<', cutoff).executeTakeFirst();
      return Number(result.numDeletedRows);
    },
  };
}
