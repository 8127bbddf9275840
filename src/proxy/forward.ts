/**
 * What crosses the proxy and how: which request headers go upstream (everything but
 * credentials and hop-by-hop headers; the tenant's credential is added), which response headers
 * come back, and the pass-through of the response body — pulled from upstream only as fast as
 * the client reads (backpressure), passed on byte for byte, and read for usage after each chunk
 * has been handed to the client.
 */
import type { Readable } from 'node:stream';
import type { UpstreamCredential } from './credentials.js';
import { UsageMeter } from './usage.js';

/** Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and are never relayed. */
const HOP_BY_HOP = ['connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade'];

/** Never forwarded upstream: the client's own credential, and headers that describe one hop. */
const DROPPED_REQUEST_HEADERS = new Set([
  ...HOP_BY_HOP,
  'authorization',
  'x-api-key',
  'cookie',
  'proxy-authorization',
  'host',
  'content-length',
  'accept-encoding',
  'expect',
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-host',
  'x-forwarded-proto',
  'x-real-ip',
  'x-request-id',
  'origin',
  'referer',
]);

/**
 * Hop-by-hop headers, framing the server sets itself, cookies, and everything Bulwark's own
 * protection layers decide: on the direct-write path headers passed to `writeHead` override
 * those set earlier, so an upstream `Vary`, CORS or CSP header would silently replace Bulwark's.
 */
const DROPPED_RESPONSE_HEADERS = new Set([
  ...HOP_BY_HOP,
  'proxy-authenticate',
  'set-cookie',
  'content-length',
  'server',
  'vary',
  'content-security-policy',
  'strict-transport-security',
  'x-frame-options',
  'x-content-type-options',
  'referrer-policy',
  'permissions-policy',
  'cross-origin-opener-policy',
  'cross-origin-resource-policy',
  'cache-control',
]);

/** The beta flag Anthropic requires with OAuth access tokens. */
export const OAUTH_BETA = 'oauth-2025-04-20';

/** Merges betas into a comma list: de-duplicated, order kept, the client's first. */
export function mergeBetas(clientValue: string | undefined, ...extra: string[]): string {
  const all = [...(clientValue ?? '').split(','), ...extra].map((b) => b.trim()).filter(Boolean);
  return [...new Set(all)].join(',');
}

/** A request's headers as name/value pairs, names lower-cased; repeats allowed. */
export type HeaderPairs = Iterable<readonly [string, string]>;

export function upstreamHeaders(incoming: HeaderPairs, credential: UpstreamCredential): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of incoming) {
    if (DROPPED_REQUEST_HEADERS.has(name) || name.startsWith('proxy-')) continue;
    // A repeated header is one comma-separated list (RFC 9110 §5.3), as web Headers joins it.
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  // Usage is read from the body, so it must arrive uncompressed.
  headers['accept-encoding'] = 'identity';
  if (credential.type === 'api_key') {
    headers['x-api-key'] = credential.apiKey;
  } else {
    headers.authorization = `Bearer ${credential.accessToken}`;
    headers['anthropic-beta'] = mergeBetas(headers['anthropic-beta'], OAUTH_BETA);
  }
  return headers;
}

/** The upstream response headers the client gets, as a plain object (names lower-case). */
export function clientHeaders(upstream: Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(upstream)) {
    if (value !== undefined && !DROPPED_RESPONSE_HEADERS.has(name) && !name.startsWith('access-control-')) headers[name] = value;
  }
  return headers;
}

/** The same headers for a web Response. */
export function toWebHeaders(headers: Record<string, string | string[]>): Headers {
  const web = new Headers();
  for (const [name, value] of Object.entries(headers)) {
    if (Array.isArray(value)) for (const v of value) web.append(name, v);
    else web.set(name, value);
  }
  return web;
}

export type StreamEnd =
  | { kind: 'complete' }
  | { kind: 'client_disconnected' }
  /** `answered`: the status Bulwark sent instead, when upstream failed before any byte went out. */
  | { kind: 'upstream_failed'; error: unknown; answered?: number };

export interface PassThroughOptions {
  body: Readable;
  meter: UsageMeter;
  /** Keeps a copy of the body for storage, when body storage is on. */
  capture?: { add(chunk: Uint8Array): void } | undefined;
  /** Whether the response is an SSE stream: a mid-stream failure then ends with an SSE error event. */
  sse: boolean;
  /** Called once, when the body has ended for whatever reason. */
  onEnd: (end: StreamEnd) => void;
  /** Stops the upstream request (client went away). */
  abortUpstream: () => void;
  /** The SSE error event sent to the client when upstream fails mid-stream. */
  streamErrorEvent: (error: unknown) => Uint8Array;
}

/**
 * The response body for the client: each upstream chunk is enqueued first and metered after,
 * and the next one is pulled only when the client wants more.
 */
export function passThrough(options: PassThroughOptions): ReadableStream<Uint8Array> {
  const { body, meter, capture, sse, onEnd, abortUpstream, streamErrorEvent } = options;
  const chunks = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const framer = sse ? new SseFramer() : undefined;
  let ended = false;
  const end = (how: StreamEnd) => {
    if (ended) return;
    ended = true;
    onEnd(how);
  };
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        // Loop until something is enqueued: a chunk that ends mid-event yields nothing yet, and
        // a pull that enqueues nothing is not called again.
        for (;;) {
          let next: IteratorResult<Buffer>;
          try {
            next = await chunks.next();
          } catch (error) {
            if (ended) return;
            if (sse) {
              controller.enqueue(streamErrorEvent(error));
              controller.close();
            } else {
              controller.error(error);
            }
            end({ kind: 'upstream_failed', error });
            return;
          }
          if (next.done) {
            const rest = framer?.flush();
            if (rest && rest.byteLength > 0) controller.enqueue(new Uint8Array(rest.buffer, rest.byteOffset, rest.byteLength));
            controller.close();
            end({ kind: 'complete' });
            return;
          }
          const chunk = new Uint8Array(next.value.buffer, next.value.byteOffset, next.value.byteLength);
          // SSE goes out in whole events, so an error event can never land inside a half-sent one.
          const ready = framer ? framer.push(chunk) : chunk;
          meter.feed(chunk);
          capture?.add(chunk);
          if (ready.byteLength > 0) {
            controller.enqueue(new Uint8Array(ready.buffer, ready.byteOffset, ready.byteLength));
            return;
          }
        }
      },
      cancel() {
        end({ kind: 'client_disconnected' });
        abortUpstream();
        body.destroy();
      },
    },
    { highWaterMark: 0 },
  );
}

/** Most bytes of one unfinished event held back; beyond it the stream is passed on unframed. */
const MAX_HELD_EVENT_BYTES = 1024 * 1024;

/** The last index of `needle` in `haystack` at or after `from`, or -1; scans only from `from` on. */
function lastIndexFrom(haystack: Buffer, needle: Buffer, from: number): number {
  let last = -1;
  for (let i = haystack.indexOf(needle, from); i >= 0; i = haystack.indexOf(needle, i + 1)) last = i;
  return last;
}

const EVENT_END = Buffer.from('\n\n');
const CRLF_EVENT_END = Buffer.from('\n\r\n');

/**
 * Cuts an SSE byte stream at event boundaries (a blank line): whole events pass at once, an
 * incomplete tail waits for the rest. The bytes are unchanged, only where chunks end moves.
 */
export class SseFramer {
  #pending: Buffer = Buffer.alloc(0);
  /** Set once an event grows past the cap: from then on bytes pass straight through. */
  #passThrough = false;

  push(chunk: Uint8Array): Buffer {
    const incoming = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.#passThrough) return incoming;
    const data = this.#pending.length ? Buffer.concat([this.#pending, incoming]) : incoming;
    // An event ends with a blank line: \n\n, or \r\n\r\n (whose last three bytes are \n\r\n).
    // Only the new bytes (and the last 2 held before them) can hold a new boundary.
    const from = Math.max(0, this.#pending.length - 2);
    const lf = lastIndexFrom(data, EVENT_END, from);
    const crlf = lastIndexFrom(data, CRLF_EVENT_END, from);
    const cut = Math.max(lf < 0 ? -1 : lf + EVENT_END.length, crlf < 0 ? -1 : crlf + CRLF_EVENT_END.length);
    if (cut < 0) {
      if (data.length > MAX_HELD_EVENT_BYTES) {
        // No blank line in sight (or bare-CR line ends): stop framing rather than hold it all.
        this.#passThrough = true;
        this.#pending = Buffer.alloc(0);
        return data;
      }
      this.#pending = data;
      return Buffer.alloc(0);
    }
    this.#pending = data.subarray(cut);
    return data.subarray(0, cut);
  }

  /** What is left at the end of a stream that completed normally. */
  flush(): Buffer {
    const rest = this.#pending;
    this.#pending = Buffer.alloc(0);
    return rest;
  }
}
