/**
 * The agent's event feed (`GET /api/events`): what happens in a tenant's conversations
 * (message started, text chunks, tool calls, message finished, session deleted) and model
 * switches, for dashboards and browsers.
 *
 * Events live in this process: a bounded buffer (the newest 1,000, at most 5 minutes old)
 * lets a client that reconnects with `Last-Event-ID` get what it missed. Ids carry this
 * process's boot id, so an id from before a restart (or from another instance) replays
 * nothing rather than the wrong events.
 */
import { randomBytes } from 'node:crypto';

export interface FeedEvent {
  id: string;
  /** The tenant whose event it is; undefined for events every tenant sees (a model switch). */
  tenant: string | undefined;
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

  publish(tenant: string | undefined, type: string, data: Record<string, unknown>): void {
    const event: FeedEvent = { id: `${this.#boot}.${++this.#seq}`, tenant, type, data, at: Date.now() };
    this.#buffer.push(event);
    if (this.#buffer.length > MAX_EVENTS) this.#buffer = this.#buffer.slice(-MAX_EVENTS);
    for (const listener of this.#listeners) listener(event);
  }

  /** The tenant's events after `lastEventId`, if that id is from this process and still kept. */
  since(lastEventId: string, tenant: string): FeedEvent[] {
    const [boot, seqText] = lastEventId.split('.');
    const seq = Number(seqText);
    if (boot !== this.#boot || !Number.isSafeInteger(seq)) return [];
    const oldest = Date.now() - MAX_AGE_MS;
    return this.#buffer.filter((e) => Number(e.id.split('.')[1]) > seq && e.at >= oldest && visibleTo(e, tenant));
  }

  subscribe(listener: (event: FeedEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

export function visibleTo(event: FeedEvent, tenant: string): boolean {
  return event.tenant === undefined || event.tenant === tenant;
}
