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
import { requestHeader } from '../http/client-info.js';
import { SseFramer, type StreamEnd } from './forward.js';

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

/** The request's headers as lower-cased pairs, read from the socket on Node (no web Headers built). */
export function requestHeaderPairs(c: Context): Array<readonly [string, string]> {
  const incoming = bindings(c).incoming;
  if (!incoming) return [...c.req.raw.headers];
  const raw = incoming.rawHeaders;
  const pairs: Array<readonly [string, string]> = [];
  for (let i = 0; i + 1 < raw.length; i += 2) pairs.push([(raw[i] as string).toLowerCase(), raw[i + 1] as string]);
  return pairs;
}

/**
 * Calls `handler` if the client goes away before the response is complete; returns the
 * unsubscribe. On Node this watches the socket, since touching the web request's `signal`
 * would build a whole web Request (abort controller, body stream) for every call.
 */
export function onClientGone(c: Context, handler: () => void): () => void {
  const outgoing = bindings(c).outgoing;
  if (outgoing) {
    // Gone already (while the body was read, say): the 'close' event is not coming again.
    if (outgoing.destroyed && !outgoing.writableFinished) {
      queueMicrotask(handler);
      return () => {};
    }
    const listener = () => {
      if (!outgoing.writableFinished) handler();
    };
    outgoing.once('close', listener);
    return () => outgoing.off('close', listener);
  }
  const signal = c.req.raw.signal;
  if (signal.aborted) {
    queueMicrotask(handler);
    return () => {};
  }
  signal.addEventListener('abort', handler, { once: true });
  return () => signal.removeEventListener('abort', handler);
}

export class BodyTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`request body over ${limit} bytes`);
    this.name = 'BodyTooLargeError';
  }
}

/**
 * The whole request body — from the socket on Node, from the web request elsewhere — refused
 * with `BodyTooLargeError` past `maxBytes`, counted as it arrives (a chunked body has no
 * Content-Length to check first). A client that aborts the upload makes this reject.
 */
export async function readBody(c: Context, maxBytes: number): Promise<Uint8Array> {
  const declared = Number(requestHeader(c, 'content-length'));
  if (Number.isFinite(declared) && declared > maxBytes) throw new BodyTooLargeError(maxBytes);
  const incoming = bindings(c).incoming;
  if (!incoming || incoming.readableEnded) {
    const body = new Uint8Array(await c.req.arrayBuffer());
    if (body.byteLength > maxBytes) throw new BodyTooLargeError(maxBytes);
    return body;
  }
  const body = await collect(incoming, maxBytes);
  return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
}

/** Reads a request to its end with plain events (an async iterator costs more per call than the read). */
function collect(incoming: IncomingMessage, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const settle = (error?: Error) => {
      incoming.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
      if (error) reject(error);
      else resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
    };
    const onData = (chunk: Buffer) => {
      size += chunk.byteLength;
      if (size > maxBytes) {
        settle(new BodyTooLargeError(maxBytes));
        incoming.resume(); // drain the rest so the answer can be read
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => settle(incoming.aborted ? new Error('the client aborted the upload') : undefined);
    const onError = (error: Error) => settle(error);
    // Closed before its end: the client went away mid-upload.
    const onClose = () => settle(new Error('the client aborted the upload'));
    incoming.on('data', onData).once('end', onEnd).once('error', onError).once('close', onClose);
  });
}

export interface NodeRelayOptions {
  /** A client that reads nothing for this long is cut off, freeing the upstream connection. */
  stallTimeoutMs: number;
  status: number;
  headers: Record<string, string | string[]>;
  body: Readable;
  /** Called with each chunk after it was handed to the socket. */
  onChunk: (chunk: Uint8Array) => void;
  /** Written (then the response ends) when upstream fails after the headers went out. */
  errorEvent: ((error: unknown) => Uint8Array) | undefined;
  onEnd: (end: StreamEnd) => void;
  abortUpstream: () => void;
  /**
   * Up to this many bytes, the body is held and sent whole with its headers and a
   * Content-Length: one write instead of three (headers, body, chunked terminator). For
   * answers that are read whole anyway (JSON); 0 streams each chunk as it comes (SSE).
   */
  holdBytes: number;
  /** The answer when upstream fails while the body is still held, before anything was sent. */
  failedBeforeSending: (error: unknown) => { status: number; headers: Record<string, string>; body: Uint8Array };
}

/** Relays the upstream body to the client's socket and tells Hono the response is sent. */
export function relay(c: Context, options: NodeRelayOptions): Response {
  const outgoing = bindings(c).outgoing as ServerResponse;
  const { status, headers, body, onChunk, errorEvent, onEnd, abortUpstream, stallTimeoutMs, holdBytes, failedBeforeSending } = options;
  let ended = false;
  let stall: NodeJS.Timeout | undefined;
  const end = (how: StreamEnd) => {
    if (ended) return;
    ended = true;
    clearTimeout(stall);
    onEnd(how);
  };
  const clientGone = () => {
    if (ended) return;
    end({ kind: 'client_disconnected' });
    abortUpstream();
    body.destroy();
  };
  if (outgoing.destroyed) {
    clientGone();
    return RESPONSE_ALREADY_SENT;
  }
  // SSE responses go out whole events at a time, so an error event after an upstream failure
  // never lands inside a half-sent event.
  const framer = errorEvent ? new SseFramer() : undefined;
  let held: Buffer[] | undefined = holdBytes > 0 ? [] : undefined;
  let heldSize = 0;
  const sendHeaders = () => {
    outgoing.writeHead(status, headers);
    // Headers go out at once: an SSE client starts reading before the first event.
    outgoing.flushHeaders();
  };
  if (!held) sendHeaders();
  /** Headers and a whole body in one write, for what was held. */
  const sendWhole = (answerStatus: number, answerHeaders: Record<string, string | string[]>, whole: Uint8Array) => {
    outgoing.writeHead(answerStatus, { ...answerHeaders, 'content-length': String(whole.byteLength) });
    outgoing.end(whole);
  };

  const send = (ready: Buffer) => {
    if (ready.byteLength > 0 && !outgoing.write(ready)) {
      body.pause();
      // Backpressure, but not forever: a reader that stalls holds an upstream connection.
      stall = setTimeout(() => outgoing.destroy(), stallTimeoutMs);
      stall.unref();
    }
  };
  body.on('data', (chunk: Buffer) => {
    if (held) {
      held.push(chunk);
      heldSize += chunk.byteLength;
      onChunk(chunk);
      if (heldSize <= holdBytes) return;
      // Larger than expected: stream from here on.
      const sofar = Buffer.concat(held);
      held = undefined;
      sendHeaders();
      send(sofar);
      return;
    }
    send(framer ? framer.push(chunk) : chunk);
    onChunk(chunk);
  });
  outgoing.on('drain', () => {
    clearTimeout(stall);
    body.resume();
  });
  body.on('end', () => {
    if (held) {
      const whole = held.length === 1 ? (held[0] as Buffer) : Buffer.concat(held);
      held = undefined;
      sendWhole(status, headers, whole);
      end({ kind: 'complete' });
      return;
    }
    const rest = framer?.flush();
    outgoing.end(rest && rest.byteLength > 0 ? rest : undefined);
    end({ kind: 'complete' });
  });
  body.on('error', (error: Error) => {
    if (ended) return;
    if (held && !outgoing.destroyed) {
      // Nothing went out yet: the client gets a proper error instead of a cut connection.
      held = undefined;
      const answer = failedBeforeSending(error);
      sendWhole(answer.status, answer.headers, answer.body);
      end({ kind: 'upstream_failed', error, answered: answer.status });
      return;
    }
    if (errorEvent && !outgoing.destroyed) {
      outgoing.end(errorEvent(error)); // the partial event the framer holds is dropped
    } else {
      outgoing.destroy(error);
    }
    end({ kind: 'upstream_failed', error });
  });
  outgoing.on('close', () => {
    if (!outgoing.writableFinished) clientGone();
  });
  return RESPONSE_ALREADY_SENT;
}
