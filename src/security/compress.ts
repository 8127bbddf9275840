/**
 * Response compression for Bulwark's own JSON, HTML and text answers: brotli or gzip, chosen
 * from the client's `Accept-Encoding` with its q-values (RFC 9110 §12.5.3; `q=0` means "not
 * acceptable"), brotli preferred on a tie (RFC 7932, RFC 1952). The response then varies by
 * `Accept-Encoding` (RFC 9110 §12.5.5).
 *
 * Only bounded bodies are compressed, in one piece on libuv's thread pool: a body is read as
 * long as its chunks are already there; one that would make us wait is a live stream (SSE,
 * a proxied answer) and goes out untouched, its bytes already read put back in front. Never
 * touched: `text/event-stream` (compression buffers events), responses that already have a
 * `Content-Encoding`, responses the proxy wrote straight to the socket, HEAD, 1xx/204/206/304,
 * and `Cache-Control: no-transform` (RFC 9111 §5.2.2.6).
 */
import { promisify } from 'node:util';
import { brotliCompress, constants, gzip } from 'node:zlib';
import type { MiddlewareHandler } from 'hono';
import { requestHeader } from '../http/client-info.js';
import type { BulwarkEnv } from '../http/context.js';
import { editResponseHeaders, sentDirectly, withVary } from './headers.js';

export interface CompressOptions {
  /** Bodies smaller than this go out as they are: compression would not pay for itself. */
  thresholdBytes?: number;
}

export type ContentCoding = 'br' | 'gzip';

/** JSON, HTML, other text, JavaScript, XML and their `+json` / `+xml` suffixes — never SSE. */
const COMPRESSIBLE = /^\s*(?:text\/(?!event-stream(?:[;\s]|$))[^;\s]+|application\/(?:json|javascript|xml)|[^;\s/]+\/[^;\s]+\+(?:json|xml))(?:[;\s]|$)/i;
/** A bounded body is one already in memory; past this it is treated as a stream and left alone. */
const MAX_BUFFERED_BYTES = 8 * 1024 * 1024;

const brotli = promisify(brotliCompress);
const gzipAsync = promisify(gzip);

/**
 * The coding to answer with, or undefined for the body as it is. A coding is acceptable when
 * named with q > 0, or covered by `*` with q > 0; `x-gzip` is gzip (RFC 9110 §8.4.1.3).
 */
export function chooseEncoding(acceptEncoding: string | undefined): ContentCoding | undefined {
  if (!acceptEncoding) return undefined;
  let br: number | undefined;
  let gz: number | undefined;
  let any: number | undefined;
  for (const part of acceptEncoding.split(',')) {
    const [rawName = '', ...params] = part.split(';');
    const name = rawName.trim().toLowerCase();
    if (!name) continue;
    let q = 1;
    for (const param of params) {
      const [key = '', value = ''] = param.split('=').map((s) => s.trim());
      if (key.toLowerCase() !== 'q') continue;
      // RFC 9110 §12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
      q = /^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$/.test(value) ? Number(value) : 0;
    }
    if (name === 'br') br = Math.max(br ?? 0, q);
    else if (name === 'gzip' || name === 'x-gzip') gz = Math.max(gz ?? 0, q);
    else if (name === '*') any = q;
  }
  const qBr = br ?? any ?? 0;
  const qGzip = gz ?? any ?? 0;
  if (qBr <= 0 && qGzip <= 0) return undefined;
  return qBr >= qGzip ? 'br' : 'gzip';
}

export function compress(options: CompressOptions = {}): MiddlewareHandler<BulwarkEnv> {
  const { thresholdBytes = 512 } = options;
  if (!Number.isSafeInteger(thresholdBytes) || thresholdBytes < 0) {
    throw new Error(`compress: thresholdBytes must be a non-negative integer, got ${String(thresholdBytes)}`);
  }

  return async function compressMiddleware(c, next) {
    await next();
    const res = c.res;
    if (
      c.req.method === 'HEAD' ||
      sentDirectly(res) ||
      res.status < 200 ||
      res.status === 204 ||
      res.status === 206 ||
      res.status === 304 ||
      res.headers.has('content-encoding') ||
      !COMPRESSIBLE.test(res.headers.get('content-type') ?? '') ||
      /(?:^|,)\s*no-transform\s*(?:,|$)/i.test(res.headers.get('cache-control') ?? '') ||
      // Last: on Node, reading `body` turns @hono/node-server's lightweight response into a full one.
      res.body === null
    ) {
      return;
    }
    const declared = res.headers.get('content-length');
    if (declared !== null && Number(declared) < thresholdBytes) return;

    const encoding = chooseEncoding(requestHeader(c, 'accept-encoding'));
    if (encoding === undefined) {
      // Nothing to do but say the answer would differ for another Accept-Encoding; reading and
      // rebuilding the body here cost more than the rest of the pipeline together.
      editResponseHeaders(c, (headers) => headers.set('Vary', withVary(headers.get('vary'), 'Accept-Encoding')));
      return;
    }
    const body = await readIfBounded(res.body);
    if (!body.complete) {
      // A live stream: out as it is, without waiting for what has not arrived.
      c.res = new Response(body.stream, res);
      return;
    }
    const bytes = body.bytes;
    if (bytes.byteLength < thresholdBytes) {
      c.res = new Response(bytes, res);
      return;
    }
    const compressed = encoding === undefined ? undefined : await encode(encoding, bytes);
    // Hono's `c.res` setter copies the old headers over the new response's: edit after it.
    c.res = new Response(compressed !== undefined && compressed.byteLength < bytes.byteLength ? compressed : bytes, res);
    const headers = c.res.headers;
    headers.set('Vary', withVary(headers.get('vary'), 'Accept-Encoding'));
    if (compressed === undefined || compressed.byteLength >= bytes.byteLength) {
      headers.set('Content-Length', String(bytes.byteLength));
      return;
    }
    headers.set('Content-Encoding', encoding as ContentCoding);
    headers.set('Content-Length', String(compressed.byteLength));
    // The compressed bytes are another representation: a strong validator no longer fits (RFC 9110 §8.8.1).
    const etag = headers.get('etag');
    if (etag && !etag.startsWith('W/')) headers.set('ETag', `W/${etag}`);
  };
}

async function encode(encoding: ContentCoding, bytes: Uint8Array): Promise<Uint8Array> {
  if (encoding === 'br') {
    // Quality 4 is brotli's usual setting for dynamic content: gzip -6's speed, a better ratio.
    return brotli(bytes, {
      params: {
        [constants.BROTLI_PARAM_QUALITY]: 4,
        [constants.BROTLI_PARAM_MODE]: constants.BROTLI_MODE_TEXT,
        [constants.BROTLI_PARAM_SIZE_HINT]: bytes.byteLength,
      },
    });
  }
  return gzipAsync(bytes);
}

type ReadResult = Awaited<ReturnType<ReadableStreamDefaultReader<Uint8Array>['read']>>;
type ReadBody = { complete: true; bytes: Uint8Array } | { complete: false; stream: ReadableStream<Uint8Array> };

/**
 * Reads a body while its chunks are ready without waiting on I/O or a producer (a body built
 * from a string or a buffer is). If a read would wait, or the body passes MAX_BUFFERED_BYTES,
 * it gives back a stream of the chunks read so far followed by the rest.
 */
async function readIfBounded(body: ReadableStream<Uint8Array>): Promise<ReadBody> {
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  let pending: Promise<ReadResult> | undefined;
  while (size <= MAX_BUFFERED_BYTES) {
    pending ??= reader.read();
    const result = await readyOrUndefined(pending);
    if (result === undefined) break;
    pending = undefined;
    if (result.done) {
      reader.releaseLock();
      return { complete: true, bytes: chunks.length === 1 ? (chunks[0] as Uint8Array) : concat(chunks, size) };
    }
    chunks.push(result.value);
    size += result.value.byteLength;
  }
  return { complete: false, stream: resumed(chunks, reader, pending) };
}

/**
 * The read's result if it settles before the event loop's next turn, else undefined. A body
 * already in memory settles within microtasks; `setImmediate` lets them all run first.
 */
function readyOrUndefined<T>(read: Promise<T>): Promise<T | undefined> {
  let timer: NodeJS.Immediate | undefined;
  const later = new Promise<undefined>((resolve) => {
    timer = setImmediate(resolve, undefined);
  });
  return Promise.race([read, later]).finally(() => clearImmediate(timer));
}

function resumed(
  head: Uint8Array[],
  reader: ReadableStreamDefaultReader<Uint8Array>,
  pending: Promise<ReadResult> | undefined,
): ReadableStream<Uint8Array> {
  let next = 0;
  let inFlight = pending;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (next < head.length) {
        controller.enqueue(head[next++] as Uint8Array);
        return;
      }
      const result = await (inFlight ?? reader.read());
      inFlight = undefined;
      if (result.done) controller.close();
      else controller.enqueue(result.value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

function concat(chunks: readonly Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}
