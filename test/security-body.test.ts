/**
 * Body limits and JSON parsing: a declared Content-Length over the limit refused unread, a
 * chunked body refused while it streams in (through a real @hono/node-server listener), the
 * per-prefix limits, routes that read the Node request themselves left intact, and the JSON
 * depth scan that runs before JSON.parse.
 */
import { createHash } from 'node:crypto';
import { type IncomingMessage, type Server, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type ServerType, serve } from '@hono/node-server';
import { Hono } from 'hono';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ApiError, errorHandler } from '../src/http/errors.js';
import { requestId } from '../src/http/request-id.js';
import { BodyTooLargeError, readBody } from '../src/proxy/node-io.js';
import { type BodyLimitEnv, DEFAULT_BODY_LIMIT_BYTES, MIB, bodyLimit, payloadTooLarge } from '../src/security/body-limit.js';
import { jsonDepthExceeds, parseJsonBody } from '../src/security/json.js';

const sha256 = (data: Uint8Array | string) => createHash('sha256').update(data).digest('hex');

/** What the handlers saw, reset before each test. */
const seen = { handlerRan: 0, bodyRead: 0 };

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}
const abortWatch = { started: deferred(), aborted: deferred() };

function bodyApp(): Hono<BodyLimitEnv> {
  const app = new Hono<BodyLimitEnv>();
  app.onError(errorHandler((err) => console.error(err)));
  app.use('*', requestId());
  app.use('*', bodyLimit({ routes: [{ prefix: '/v1/messages', bytes: 32 * MIB }, { prefix: '/v1', bytes: 8 * MIB }] }));
  // Web path: the body through c.req, as routes using readJson do.
  app.all('*', async (c, next) => {
    if (['/raw', '/raw-late', '/until-abort', '/json'].includes(c.req.path)) return next();
    seen.handlerRan++;
    const text = await c.req.text();
    seen.bodyRead++;
    return c.json({ bytes: text.length, sha256: sha256(text), limit: c.get('bodyLimit') });
  });
  // Node path: the proxy's readBody on c.env.incoming, capped by the variable.
  app.post('/raw', async (c) => {
    seen.handlerRan++;
    try {
      const body = await readBody(c, c.get('bodyLimit'));
      seen.bodyRead++;
      return c.json({ bytes: body.byteLength, sha256: sha256(body), limit: c.get('bodyLimit') });
    } catch (err) {
      if (err instanceof BodyTooLargeError) throw payloadTooLarge(err.limit);
      throw err;
    }
  });
  // A route that reads the Node request itself after other async work (authentication, rate
  // limits): by then the whole small upload sits in Node's buffer — unless something else
  // started consuming the stream and took it from under the route.
  app.post('/raw-late', async (c) => {
    const incoming = (c.env as { incoming: IncomingMessage }).incoming;
    while (!incoming.complete) await new Promise((resolve) => setTimeout(resolve, 1));
    const chunks: Buffer[] = [];
    for await (const chunk of incoming) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    return c.json({ bytes: body.byteLength, sha256: sha256(body), limit: c.get('bodyLimit') });
  });
  // The replaced request still tells a web-path handler that the client went away.
  app.post('/until-abort', async (c) => {
    const signal = c.req.raw.signal;
    signal.addEventListener('abort', () => abortWatch.aborted.resolve(), { once: true });
    abortWatch.started.resolve();
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    return c.body(null, 204);
  });
  app.post('/json', async (c) => c.json({ parsed: parseJsonBody(await c.req.text()) }));
  return app;
}

/** `size` bytes of printable text (so a text() round trip keeps its length). */
function payload(size: number, fill = 'a'): Buffer {
  return Buffer.alloc(size, fill);
}

interface Answer {
  status: number;
  body: any;
}

/**
 * Sends `size` bytes chunked (no Content-Length), 64 KiB at a time with backpressure. With
 * `end: false` the request is never finished: only a server that refuses while reading can
 * answer, one that buffers the whole body first would wait forever (and the test times out).
 */
function sendChunked(base: string, path: string, size: number, { end }: { end: boolean }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const url = new URL(path, base);
    let sent = 0;
    let answered = false;
    const req = httpRequest(url, { method: 'POST', headers: { 'content-type': 'text/plain' } }, (res) => {
      answered = true;
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        req.destroy();
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : null });
      });
    });
    req.on('error', (err) => {
      if (!answered) reject(err);
    });
    expect(req.getHeader('content-length')).toBeUndefined();
    const chunk = payload(64 * 1024);
    const write = () => {
      while (sent < size && !answered) {
        const piece = chunk.subarray(0, Math.min(chunk.length, size - sent));
        sent += piece.length;
        if (!req.write(piece)) return void req.once('drain', write);
      }
      if (end && !answered) req.end();
    };
    write();
  });
}

/** Sends `size` bytes with a Content-Length, as most clients do. */
async function sendWithLength(base: string, path: string, size: number): Promise<{ status: number; body: any }> {
  const response = await fetch(new URL(path, base), { method: 'POST', body: payload(size), headers: { 'content-type': 'text/plain' } });
  return { status: response.status, body: await response.json() };
}

beforeEach(() => {
  seen.handlerRan = 0;
  seen.bodyRead = 0;
});

describe('bodyLimit through a real listener', () => {
  let server: ServerType;
  let base: string;
  beforeAll(async () => {
    server = await new Promise<ServerType>((resolve) => {
      const s = serve({ fetch: bodyApp().fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
    });
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    (server as Server).closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('refuses a 3 MB body with Content-Length on a 2 MB route with 413 before the handler runs', async () => {
    const { status, body } = await sendWithLength(base, '/api/message', 3 * MIB);
    expect(status).toBe(413);
    expect(body.error.code).toBe('payload_too_large');
    expect(body.error.message).toBe("The request body is larger than this route's limit of 2 MB (2097152 bytes).");
    expect(seen.handlerRan).toBe(0);
  });

  it('refuses a chunked 3 MB body on a 2 MB route with 413 while it is still being sent', async () => {
    const answer = await sendChunked(base, '/api/message', 3 * MIB, { end: false });
    expect(answer.status).toBe(413);
    expect(answer.body.error.code).toBe('payload_too_large');
    // The handler asked for the body and was refused; it never got it.
    expect(seen.handlerRan).toBe(1);
    expect(seen.bodyRead).toBe(0);
  });

  it('lets a 1 MB body through, with Content-Length and chunked, intact', async () => {
    const withLength = await sendWithLength(base, '/api/message', 1 * MIB);
    expect(withLength.status).toBe(200);
    expect(withLength.body).toEqual({ bytes: MIB, sha256: sha256(payload(MIB)), limit: DEFAULT_BODY_LIMIT_BYTES });
    const chunked = await sendChunked(base, '/api/message', 1 * MIB, { end: true });
    expect(chunked.status).toBe(200);
    expect(chunked.body).toEqual({ bytes: MIB, sha256: sha256(payload(MIB)), limit: DEFAULT_BODY_LIMIT_BYTES });
  });

  it('lets a body of exactly the limit through and refuses one byte more', async () => {
    expect((await sendChunked(base, '/api/message', 2 * MIB, { end: true })).status).toBe(200);
    expect((await sendChunked(base, '/api/message', 2 * MIB + 1, { end: true })).status).toBe(413);
  });

  it('applies the 32 MB limit to /v1/messages: 3 MB passes there', async () => {
    const chunked = await sendChunked(base, '/v1/messages', 3 * MIB, { end: true });
    expect(chunked.status).toBe(200);
    expect(chunked.body).toMatchObject({ bytes: 3 * MIB, limit: 32 * MIB });
    const withLength = await sendWithLength(base, '/v1/messages/count_tokens', 3 * MIB);
    expect(withLength.body).toMatchObject({ bytes: 3 * MIB, limit: 32 * MIB });
  });

  it('refuses a chunked body over 32 MB on /v1/messages while it is still being sent', async () => {
    const answer = await sendChunked(base, '/v1/messages', 33 * MIB, { end: false });
    expect(answer.status).toBe(413);
    expect(answer.body.error.message).toContain('limit of 32 MB');
    expect(seen.bodyRead).toBe(0);
  });

  it('leaves the Node request unread for a route that reads it itself, chunked or not', async () => {
    const chunked = await sendChunked(base, '/raw', 1 * MIB + 17, { end: true });
    expect(chunked.status).toBe(200);
    expect(chunked.body).toEqual({ bytes: MIB + 17, sha256: sha256(payload(MIB + 17)), limit: DEFAULT_BODY_LIMIT_BYTES });
    const withLength = await sendWithLength(base, '/raw', 1 * MIB);
    expect(withLength.body).toMatchObject({ bytes: MIB, sha256: sha256(payload(MIB)) });
  });

  it('leaves every byte to a route that reads the Node request only after other async work', async () => {
    const answer = await sendChunked(base, '/raw-late', 4000, { end: true });
    expect(answer.status).toBe(200);
    expect(answer.body).toEqual({ bytes: 4000, sha256: sha256(payload(4000)), limit: DEFAULT_BODY_LIMIT_BYTES });
  });

  it('lets a route that reads the Node request enforce the chosen limit itself', async () => {
    const answer = await sendChunked(base, '/raw', 3 * MIB, { end: false });
    expect(answer.status).toBe(413);
    expect(answer.body.error.message).toContain('limit of 2 MB');
    expect(seen.bodyRead).toBe(0);
  });

  it('keeps the abort signal of a chunked request it wrapped: a client that goes away aborts it', async () => {
    const req = httpRequest(new URL('/until-abort', base), { method: 'POST' });
    req.on('error', () => {});
    req.write('partial upload');
    await abortWatch.started.promise;
    req.destroy();
    await abortWatch.aborted.promise;
  });

  it('keeps serving on the same server after refusing bodies', async () => {
    const response = await fetch(`${base}/health`);
    expect(response.status).toBe(200);
  });
});

describe('bodyLimit in process', () => {
  const app = bodyApp();

  it('refuses a declared Content-Length over the limit, whatever the method', async () => {
    const response = await app.request('/api/message', { method: 'GET', headers: { 'content-length': String(3 * MIB) } });
    expect(response.status).toBe(413);
    expect(seen.handlerRan).toBe(0);
  });

  it('refuses a 3 MB body sent without Content-Length', async () => {
    const response = await app.request('/api/message', { method: 'POST', body: 'x'.repeat(3 * MIB) });
    expect(response.status).toBe(413);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe('payload_too_large');
    expect(seen.bodyRead).toBe(0);
  });

  it('refuses a body streamed past the limit without reading the rest of the stream', async () => {
    let pulled = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled++;
        controller.enqueue(new Uint8Array(MIB));
      },
    });
    const response = await app.request('/api/message', { method: 'POST', body: stream, duplex: 'half' } as RequestInit);
    expect(response.status).toBe(413);
    // An endless stream: a buffering limit would never answer. Two MiB pass, the third trips it.
    expect(pulled).toBeLessThan(6);
  });

  it('picks the longest matching prefix, on segment boundaries', async () => {
    const limitOf = async (path: string) => ((await (await app.request(path, { method: 'POST', body: '{}' })).json()) as { limit: number }).limit;
    expect(await limitOf('/v1/messages')).toBe(32 * MIB);
    expect(await limitOf('/v1/messages/count_tokens')).toBe(32 * MIB);
    expect(await limitOf('/v1/messagesX')).toBe(8 * MIB);
    expect(await limitOf('/v1/models')).toBe(8 * MIB);
    expect(await limitOf('/v10')).toBe(2 * MIB);
    expect(await limitOf('/mcp')).toBe(2 * MIB);
  });

  it('refuses to build with a bad option, naming it and its value', () => {
    expect(() => bodyLimit({ defaultBytes: -1 })).toThrow('bodyLimit: defaultBytes must be a whole number of bytes, not -1');
    expect(() => bodyLimit({ defaultBytes: 1.5 })).toThrow(/defaultBytes.*1\.5/);
    expect(() => bodyLimit({ routes: [{ prefix: 'v1/messages', bytes: 1 }] })).toThrow(/routes\[0\]\.prefix.*"v1\/messages"/);
    expect(() => bodyLimit({ routes: [{ prefix: '/v1/*', bytes: 1 }] })).toThrow(/routes\[0\]\.prefix/);
    expect(() => bodyLimit({ routes: [{ prefix: '/a', bytes: 1 }, { prefix: '/b', bytes: Number.NaN }] })).toThrow(/routes\[1\]\.bytes/);
    expect(() => bodyLimit({ routes: [{ prefix: '/a', bytes: 1 }, { prefix: '/a/', bytes: 2 }] })).toThrow(/"\/a" twice/);
  });
});

describe('parseJsonBody', () => {
  const nested = (depth: number, inner = '1') => '['.repeat(depth) + inner + ']'.repeat(depth);

  it('parses valid JSON', () => {
    expect(parseJsonBody('{"model":"m","messages":[{"role":"user","content":"hi"}]}')).toEqual({
      model: 'm',
      messages: [{ role: 'user', content: 'hi' }],
    });
  });

  it('refuses malformed JSON with invalid_json', () => {
    for (const text of ['{', '{"a":}', '', 'undefined', '{"a":1}}']) {
      let error: unknown;
      try {
        parseJsonBody(text);
      } catch (err) {
        error = err;
      }
      expect(error, text).toBeInstanceOf(ApiError);
      expect((error as ApiError).code).toBe('invalid_json');
      expect((error as ApiError).message).toBe('The request body is not valid JSON.');
    }
  });

  it('allows 64 levels and refuses 65', () => {
    expect(parseJsonBody(nested(64))).toBeInstanceOf(Array);
    expect(() => parseJsonBody(nested(65))).toThrow('The request body nests deeper than 64 levels.');
    expect(() => parseJsonBody('{"a":'.repeat(65) + '1' + '}'.repeat(65))).toThrow(/deeper than 64/);
    expect(() => parseJsonBody(nested(5), 4)).toThrow('The request body nests deeper than 4 levels.');
  });

  it('refuses a million levels quickly, without a stack overflow, even when unterminated', () => {
    expect(() => parseJsonBody('['.repeat(1_000_000))).toThrow(ApiError);
    expect(() => parseJsonBody(nested(1_000_000))).toThrow(/deeper than 64/);
  });

  it('does not count brackets inside strings', () => {
    const text = JSON.stringify({ a: '['.repeat(1000), b: '{'.repeat(1000), c: ']]]}}}' });
    expect(parseJsonBody(text)).toEqual({ a: '['.repeat(1000), b: '{'.repeat(1000), c: ']]]}}}' });
  });

  it('handles escapes: an escaped quote stays in the string, an escaped backslash does not swallow the quote', () => {
    // `"\"[[[…"`: the brackets are still inside the string.
    const escapedQuote = JSON.stringify({ a: `"${'['.repeat(100)}` });
    expect(parseJsonBody(escapedQuote)).toEqual({ a: `"${'['.repeat(100)}` });
    // `["\\", [[[…]]]]`: the string is one backslash and ends; the brackets after it count.
    const escapedBackslash = `["\\\\", ${nested(70)}]`;
    expect(jsonDepthExceeds(escapedBackslash, 64)).toBe(true);
    expect(() => parseJsonBody(escapedBackslash)).toThrow(/deeper than 64/);
    expect(parseJsonBody(`["\\\\", ${nested(10)}]`)).toHaveLength(2);
  });

  it('refuses a bad maxDepth', () => {
    expect(() => parseJsonBody('1', 0)).toThrow(/maxDepth/);
  });

  describe('through a route', () => {
    const app = bodyApp();
    const post = (body: string) => app.request('/json', { method: 'POST', body, headers: { 'content-type': 'application/json' } });

    it('answers malformed JSON with 400 invalid_json', async () => {
      const response = await post('{"model": ');
      expect(response.status).toBe(400);
      expect(await response.json()).toMatchObject({ error: { code: 'invalid_json', message: 'The request body is not valid JSON.' } });
    });

    it('answers 10 000 levels of nesting with 400 invalid_json', async () => {
      const response = await post(nested(10_000));
      expect(response.status).toBe(400);
      expect(await response.json()).toMatchObject({ error: { code: 'invalid_json', message: 'The request body nests deeper than 64 levels.' } });
    });

    it('accepts brackets inside strings', async () => {
      const response = await post(JSON.stringify({ prompt: '[['.repeat(5000) }));
      expect(response.status).toBe(200);
    });
  });
});
