/**
 * The agent's event feed (`GET /api/events`): what happens in a key's conversations (message
 * started, text chunks, tool calls, message finished, session deleted) and model switches, for
 * dashboards and browsers. Like the conversations, a key sees its own events only.
 *
 * Events live in this process: a bounded buffer (the newest 1,000, at most 5 minutes old)
 * lets a client that reconnects with `Last-Event-ID` get what it missed. Ids carry this
 * process's boot id, so an id from before a restart (or from another instance) replays
 * nothing rather than the wrong events.
 */
import { randomBytes } from 'node:crypto';

export interface FeedEvent {
  id: string;
  /** The key whose event it is (its conversations); undefined for events everyone sees (a model switch). */
  owner: { tenant: string; keyId: string } | undefined;
  type: string;
  data: Record<string, unknown>;
  at: number;
}

const MAX_EVENTS = 1000;
const MAX_AGE_MS = 5 * 60_000;

export class EventFeed {
  readonly #boot = randomBytes(6).toString('base64url');
  #seq = 0;
  #buffer: FeedEvent[] = [];
  readonly #listeners = new Set<(event: FeedEvent) => void>();
  readonly #streams = new Map<string, Set<() => void>>();

  publish(owner: { tenant: string; keyId: string } | undefined, type: string, data: Record<string, unknown>): void {
    const event: FeedEvent = { id: `${this.#boot}.${++this.#seq}`, owner: owner && { tenant: owner.tenant, keyId: owner.keyId }, type, data, at: Date.now() };
    this.#buffer.push(event);
    if (this.#buffer.length > MAX_EVENTS) this.#buffer = this.#buffer.slice(-MAX_EVENTS);
    for (const listener of this.#listeners) listener(event);
  }

  /** The reader's events after `lastEventId`, if that id is from this process and still kept. */
  since(lastEventId: string, reader: { tenant: string; keyId: string }): FeedEvent[] {
    const [boot, seqText] = lastEventId.split('.');
    const seq = Number(seqText);
    if (boot !== this.#boot || !Number.isSafeInteger(seq)) return [];
    const oldest = Date.now() - MAX_AGE_MS;
    return this.#buffer.filter((e) => Number(e.id.split('.')[1]) > seq && e.at >= oldest && visibleTo(e, reader));
  }

  /** Registers an open stream of a key, so it can be ended when the key is; returns the unregister. */
  track(keyId: string, end: () => void): () => void {
    let ends = this.#streams.get(keyId);
    if (!ends) this.#streams.set(keyId, (ends = new Set()));
    ends.add(end);
    return () => {
      ends.delete(end);
      if (ends.size === 0 && this.#streams.get(keyId) === ends) this.#streams.delete(keyId);
    };
  }

  /** How many streams a key has open here. */
  openStreams(keyId: string): number {
    return this.#streams.get(keyId)?.size ?? 0;
  }

  /** Ends every open stream of a key (revoked, rotated out, deleted). */
  endForKey(keyId: string): void {
    for (const end of [...(this.#streams.get(keyId) ?? [])]) end();
  }

  subscribe(listener: (event: FeedEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

export function visibleTo(event: FeedEvent, reader: { tenant: string; keyId: string }): boolean {
  return event.owner === undefined || (event.owner.tenant === reader.tenant && event.owner.keyId === reader.keyId);
}
