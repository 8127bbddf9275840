/**
 * The proxy's fast path on Node: the request body read straight from the `IncomingMessage`,
 * and the upstream response written straight to the `ServerResponse` — node streams end to
 * end, as a bare proxy does, instead of through web `ReadableStream`s. Backpressure: upstream
 * is paused while the client's socket is full. A client that goes away aborts upstream.
 * Outside Node (in-process tests with `app.request`) callers fall back to the web path.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import type { Context } from 'hono';
import type { StreamEnd } from './forward.js';

interface NodeBindings {
  incoming?: IncomingMessage;
  outgoing?: ServerResponse;
}

function bindings(c: Context): NodeBindings {
  return (c.env ?? {}) as NodeBindings;
}

export function hasNodeResponse(c: Context): boolean {
  return Boolean(bindings(c).outgoing);
}

/**
 * Calls `handler` if the client goes away before the response is complete; returns the
 * unsubscribe. On Node this watches the socket, since touching the web request's `signal`
 * would build a whole web Request (abort controller, body stream) for every call.
 */
export function onClientGone(c: Context, handler: () => void): () => void {
  const outgoing = bindings(c).outgoing;
  if (outgoing) {
    const listener = () => {
      if (!outgoing.writableFinished) handler();
    };
    outgoing.once('close', listener);
    return () => outgoing.off('close', listener);
  }
  const signal = c.req.raw.signal;
  signal.addEventListener('abort', handler, { once: true });
  return () => signal.removeEventListener('abort', handler);
}

/** The whole request body: from the socket on Node, from the web request elsewhere. */
export async function readBody(c: Context): Promise<Uint8Array> {
  const incoming = bindings(c).incoming;
  if (!incoming || incoming.readableEnded) return new Uint8Array(await c.req.arrayBuffer());
  const chunks: Buffer[] = [];
  for await (const chunk of incoming) chunks.push(chunk as Buffer);
  const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
  return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
}

export interface NodeRelayOptions {
  status: number;
  headers: Headers;
  body: Readable;
  /** Called with each chunk after it was handed to the socket. */
  onChunk: (chunk: Uint8Array) => void;
  /** Written (then the response ends) when upstream fails after the headers went out. */
  errorEvent: ((error: unknown) => Uint8Array) | undefined;
  onEnd: (end: StreamEnd) => void;
  abortUpstream: () => void;
}

/** Relays the upstream body to the client's socket and tells Hono the response is sent. */
export function relay(c: Context, options: NodeRelayOptions): Response {
  const outgoing = bindings(c).outgoing as ServerResponse;
  const { status, headers, body, onChunk, errorEvent, onEnd, abortUpstream } = options;
  let ended = false;
  const end = (how: StreamEnd) => {
    if (ended) return;
    ended = true;
    onEnd(how);
  };
  const head: Record<string, string | string[]> = {};
  headers.forEach((value, name) => {
    head[name] = value;
  });
  outgoing.writeHead(status, head);
  // Headers go out at once: an SSE client starts reading before the first event.
  outgoing.flushHeaders();

  body.on('data', (chunk: Buffer) => {
    if (!outgoing.write(chunk)) body.pause();
    onChunk(chunk);
  });
  outgoing.on('drain', () => body.resume());
  body.on('end', () => {
    outgoing.end();
    end({ kind: 'complete' });
  });
  body.on('error', (error: Error) => {
    if (ended) return;
    if (errorEvent && !outgoing.destroyed) {
      outgoing.end(errorEvent(error));
    } else {
      outgoing.destroy(error);
    }
    end({ kind: 'upstream_failed', error });
  });
  outgoing.on('close', () => {
    if (ended || outgoing.writableFinished) return;
    end({ kind: 'client_disconnected' });
    abortUpstream();
    body.destroy();
  });
  return RESPONSE_ALREADY_SENT;
}
