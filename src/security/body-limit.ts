/**
 * Request body size limits, per path prefix, answered with 413 `payload_too_large`
 * (RFC 9110 §15.5.14) before the body is buffered.
 *
 * - A declared `Content-Length` (RFC 9112 §6.2) over the limit is refused at once, unread.
 *   Node's parser never delivers more than the declared length, so nothing else is needed.
 * - A body without one (chunked, RFC 9112 §7.1) is counted while it is read: the web request's
 *   body is replaced by a counting stream that errors with the 413 once the count passes the
 *   limit, so `c.req.text()/json()/arrayBuffer()` reject and at most one socket chunk past the
 *   limit is ever held.
 *
 * The replacement is lazy (a stream with highWaterMark 0 that opens the original body on its
 * first read): on @hono/node-server, merely building the web body starts consuming the Node
 * `IncomingMessage`, which would steal bytes from routes that read `c.env.incoming` directly
 * (the proxy's `readBody`). Such routes take their cap from the `bodyLimit` context variable.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { MiddlewareHandler } from 'hono';
import { requestHeader } from '../http/client-info.js';
import { ApiError } from '../http/errors.js';

export const MIB = 1024 * 1024;
export const DEFAULT_BODY_LIMIT_BYTES = 2 * MIB;

export interface BodyLimitVariables {
  /** The byte limit for this request's body, chosen by path. */
  bodyLimit: number;
}

export interface BodyLimitEnv {
  Variables: BodyLimitVariables;
}

export interface BodyLimitRoute {
  /** A path prefix matched on segment boundaries: `/v1/messages` covers `/v1/messages/count_tokens`. */
  prefix: string;
  bytes: number;
}

export interface BodyLimitOptions {
  /** The limit for any path no route names (2 MiB). */
  defaultBytes?: number;
  /** Larger (or smaller) limits by path prefix; the longest matching prefix wins. */
  routes?: readonly BodyLimitRoute[];
}

interface NodeBindings {
  incoming?: IncomingMessage;
  outgoing?: ServerResponse;
}

function checkBytes(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new Error(`bodyLimit: ${name} must be a whole number of bytes, not ${JSON.stringify(value)}`);
  }
  return value;
}

function checkPrefix(name: string, value: unknown): string {
  if (typeof value !== 'string' || !value.startsWith('/') || /[\s?#*]/.test(value)) {
    throw new Error(`bodyLimit: ${name} must be a path starting with "/" (no query, no wildcard), not ${JSON.stringify(value)}`);
  }
  return value.length > 1 ? value.replace(/\/+$/, '') : value;
}

/** "2", "32", "0.5": the limit in MiB, for people. */
function megabytes(bytes: number): string {
  return String(Number((bytes / MIB).toFixed(2)));
}

export function payloadTooLarge(limit: number): ApiError {
  return new ApiError('payload_too_large', `The request body is larger than this route's limit of ${megabytes(limit)} MB (${limit} bytes).`);
}

/**
 * A copy of `original` whose body errors with the 413 once more than `limit` bytes came
 * through. Nothing is read from `original` until the copy's body is.
 */
function countingRequest(original: Request, limit: number, signal: AbortSignal): Request {
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  let seen = 0;
  const body = new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        reader ??= original.body?.getReader();
        if (!reader) return controller.close();
        const { done, value } = await reader.read();
        if (done) return controller.close();
        seen += value.byteLength;
        if (seen > limit) {
          // Not cancelled: on Node that destroys the socket before the 413 can be written.
          // @hono/node-server drains what is left of the upload once the answer is sent.
          reader.releaseLock();
          return controller.error(payloadTooLarge(limit));
        }
        controller.enqueue(value);
      },
      async cancel(reason) {
        await reader?.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
  return new Request(original.url, { method: original.method, headers: original.headers, body, duplex: 'half', signal });
}

/**
 * The signal of the replaced request. On Node, touching `original.signal` would build the web
 * body (see the module comment), so the client going away is watched on the response instead,
 * as @hono/node-server does for its own.
 */
function abortSignalFor(c: { env: unknown; req: { raw: Request } }): AbortSignal {
  const outgoing = (c.env as NodeBindings | undefined)?.outgoing;
  if (!outgoing) return c.req.raw.signal;
  const controller = new AbortController();
  outgoing.once('close', () => {
    if (!outgoing.writableFinished) controller.abort(new Error('Client connection prematurely closed.'));
  });
  return controller.signal;
}

export function bodyLimit(options: BodyLimitOptions = {}): MiddlewareHandler<BodyLimitEnv> {
  const { defaultBytes = DEFAULT_BODY_LIMIT_BYTES, routes = [] } = options;
  checkBytes('defaultBytes', defaultBytes);
  if (!Array.isArray(routes)) throw new Error('bodyLimit: routes must be a list of { prefix, bytes }');
  const table = routes
    .map((route, i) => ({ prefix: checkPrefix(`routes[${i}].prefix`, route?.prefix), bytes: checkBytes(`routes[${i}].bytes`, route?.bytes) }))
    .sort((a, b) => b.prefix.length - a.prefix.length);
  const seen = new Set<string>();
  for (const { prefix } of table) {
    if (seen.has(prefix)) throw new Error(`bodyLimit: routes names the prefix ${JSON.stringify(prefix)} twice`);
    seen.add(prefix);
  }

  const limitFor = (path: string): number => {
    for (const { prefix, bytes } of table) {
      if (prefix === '/' || path === prefix || path.startsWith(`${prefix}/`)) return bytes;
    }
    return defaultBytes;
  };

  return async function bodyLimitMiddleware(c, next) {
    const limit = limitFor(c.req.path);
    c.set('bodyLimit', limit);

    const declared = requestHeader(c, 'content-length');
    const chunked = requestHeader(c, 'transfer-encoding') !== undefined;
    if (declared !== undefined && !chunked && /^\s*\d+\s*$/.test(declared)) {
      if (Number(declared) > limit) throw payloadTooLarge(limit);
      return next();
    }
    // @hono/node-server gives GET and HEAD no body; a web Request may not have one.
    const method = c.req.method;
    if (method === 'GET' || method === 'HEAD') return next();
    c.req.raw = countingRequest(c.req.raw, limit, abortSignalFor(c));
    return next();
  };
}
