/**
 * Response compression: brotli or gzip by Accept-Encoding and its q-values, the threshold,
 * what is never compressed (SSE, encoded, HEAD, 204, live streams, direct socket writes), and
 * that the decompressed body is the original — in process and on a real listener.
 */
import { type IncomingHttpHeaders, request as httpRequest, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import { serve } from '@hono/node-server';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { Hono } from 'hono';
import { stream } from 'hono/streaming';
import { afterEach, describe, expect, it } from 'vitest';
import type { BulwarkEnv } from '../src/http/context.js';
import { errorHandler, notFoundHandler } from '../src/http/errors.js';
import { chooseEncoding, type CompressOptions, compress } from '../src/security/compress.js';

const ITEMS = Array.from({ length: 200 }, (_, i) => ({ id: `key_${i}`, name: `key number ${i}`, scopes: ['read', 'write'] }));
const BIG_JSON = JSON.stringify({ items: ITEMS });
const BIG_HTML = `<!doctype html><ul>${ITEMS.map((item) => `<li>${item.name}</li>`).join('')}</ul>`;
const BIG_TEXT = 'x'.repeat(4000);

function testApp(options?: CompressOptions): Hono<BulwarkEnv> {
  const app = new Hono<BulwarkEnv>();
  app.onError(errorHandler(() => {}));
  app.notFound(notFoundHandler);
  app.use('*', compress(options));
  app.get('/big', (c) => c.json({ items: ITEMS }, 200, { ETag: '"v1"' }));
  app.get('/small', (c) => c.json({ ok: true }));
  app.get('/page', (c) => c.html(BIG_HTML));
  app.get('/sse', (c) => c.body(`data: ${BIG_TEXT}\n\n`, 200, { 'content-type': 'text/event-stream' }));
  app.get('/encoded', (c) => c.body(BIG_TEXT, 200, { 'content-type': 'text/plain', 'content-encoding': 'identity' }));
  app.get('/binary', (c) => c.body(new Uint8Array(4000), 200, { 'content-type': 'application/octet-stream' }));
  app.get('/no-transform', (c) => c.json({ items: ITEMS }, 200, { 'cache-control': 'no-transform' }));
  app.get('/empty', (c) => c.body(null, 204));
  app.get('/live', (c) =>
    stream(c, async (s) => {
      c.header('content-type', 'application/json');
      for (let i = 0; i < 3; i++) {
        await s.sleep(5);
        await s.write(`${JSON.stringify({ part: i, filler: BIG_TEXT })}\n`);
      }
    }),
  );
  app.get('/direct', (c) => {
    const outgoing = (c.env as { outgoing: ServerResponse }).outgoing;
    outgoing.writeHead(200, { 'content-type': 'application/json' });
    outgoing.end(BIG_JSON);
    return RESPONSE_ALREADY_SENT;
  });
  return app;
}

async function bytes(response: Response): Promise<Buffer> {
  return Buffer.from(await response.arrayBuffer());
}

function varyOf(headers: { get(name: string): string | null }): string[] {
  return (headers.get('vary') ?? '').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
}

describe('choosing a content coding', () => {
  it('prefers br, then gzip, and honours q-values including q=0', () => {
    expect(chooseEncoding('gzip, deflate, br, zstd')).toBe('br');
    expect(chooseEncoding('gzip')).toBe('gzip');
    expect(chooseEncoding('x-gzip')).toBe('gzip');
    expect(chooseEncoding('br;q=0, gzip')).toBe('gzip');
    expect(chooseEncoding('br;q=0.5, gzip;q=0.8')).toBe('gzip');
    expect(chooseEncoding('br;q=1.0, gzip;q=1')).toBe('br');
    expect(chooseEncoding('*')).toBe('br');
    expect(chooseEncoding('*;q=0.5, br;q=0')).toBe('gzip');
    expect(chooseEncoding('gzip;q=0, br;q=0')).toBeUndefined();
    expect(chooseEncoding('*;q=0')).toBeUndefined();
    expect(chooseEncoding('identity')).toBeUndefined();
    expect(chooseEncoding('deflate')).toBeUndefined();
    expect(chooseEncoding('')).toBeUndefined();
    expect(chooseEncoding(undefined)).toBeUndefined();
    expect(chooseEncoding('gzip;q=2')).toBeUndefined();
  });
});

describe('compress in process', () => {
  it('brotli-compresses a large JSON answer for a browser, and it decompresses to the original', async () => {
    const response = await testApp().request('/big', { headers: { 'accept-encoding': 'gzip, deflate, br' } });
    expect(response.headers.get('content-encoding')).toBe('br');
    expect(varyOf(response.headers)).toContain('accept-encoding');
    const body = await bytes(response);
    expect(Number(response.headers.get('content-length'))).toBe(body.byteLength);
    expect(body.byteLength).toBeLessThan(BIG_JSON.length / 4);
    expect(brotliDecompressSync(body).toString('utf8')).toBe(BIG_JSON);
    expect(response.headers.get('content-type')).toMatch(/^application\/json/);
    expect(response.headers.get('etag')).toBe('W/"v1"');
  });

  it('gzips when that is all the client takes, or when br is refused with q=0', async () => {
    for (const acceptEncoding of ['gzip', 'br;q=0, gzip', 'br;q=0.1, gzip;q=0.9']) {
      const response = await testApp().request('/page', { headers: { 'accept-encoding': acceptEncoding } });
      expect(response.headers.get('content-encoding'), acceptEncoding).toBe('gzip');
      expect(gunzipSync(await bytes(response)).toString('utf8')).toBe(BIG_HTML);
    }
  });

  it('sends the body as it is when no coding is acceptable, but still says it varies', async () => {
    for (const acceptEncoding of ['identity', 'br;q=0, gzip;q=0', 'deflate']) {
      const response = await testApp().request('/big', { headers: { 'accept-encoding': acceptEncoding } });
      expect(response.headers.get('content-encoding'), acceptEncoding).toBeNull();
      expect(varyOf(response.headers)).toContain('accept-encoding');
      expect((await bytes(response)).toString('utf8')).toBe(BIG_JSON);
    }
    const none = await testApp().request('/big');
    expect(none.headers.get('content-encoding')).toBeNull();
    expect(await none.text()).toBe(BIG_JSON);
  });

  it('leaves a body below the threshold untouched', async () => {
    const small = await testApp().request('/small', { headers: { 'accept-encoding': 'br, gzip' } });
    expect(small.headers.get('content-encoding')).toBeNull();
    expect(await small.json()).toEqual({ ok: true });
    const raised = await testApp({ thresholdBytes: BIG_JSON.length + 1 }).request('/big', { headers: { 'accept-encoding': 'br' } });
    expect(raised.headers.get('content-encoding')).toBeNull();
    expect(await raised.text()).toBe(BIG_JSON);
    const atThreshold = await testApp({ thresholdBytes: BIG_JSON.length }).request('/big', { headers: { 'accept-encoding': 'br' } });
    expect(atThreshold.headers.get('content-encoding')).toBe('br');
  });

  it('never compresses SSE, an already-encoded body, binary, no-transform, HEAD or 204', async () => {
    const app = testApp();
    const headers = { 'accept-encoding': 'br, gzip' };
    const sse = await app.request('/sse', { headers });
    expect(sse.headers.get('content-encoding')).toBeNull();
    expect(await sse.text()).toBe(`data: ${BIG_TEXT}\n\n`);
    expect((await app.request('/encoded', { headers })).headers.get('content-encoding')).toBe('identity');
    expect((await app.request('/binary', { headers })).headers.get('content-encoding')).toBeNull();
    expect((await app.request('/no-transform', { headers })).headers.get('content-encoding')).toBeNull();
    const head = await app.request('/big', { method: 'HEAD', headers });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-encoding')).toBeNull();
    const empty = await app.request('/empty', { headers });
    expect(empty.status).toBe(204);
    expect(empty.headers.get('content-encoding')).toBeNull();
  });

  it('lets a live stream through untouched and whole', async () => {
    const response = await testApp().request('/live', { headers: { 'accept-encoding': 'br, gzip' } });
    expect(response.headers.get('content-encoding')).toBeNull();
    const lines = (await response.text()).trim().split('\n').map((line) => JSON.parse(line) as { part: number; filler: string });
    expect(lines.map((line) => line.part)).toEqual([0, 1, 2]);
    expect(lines.every((line) => line.filler === BIG_TEXT)).toBe(true);
  });

  it('refuses a bad threshold at build time, naming the option', () => {
    expect(() => compress({ thresholdBytes: -1 })).toThrow(/thresholdBytes/);
    expect(() => compress({ thresholdBytes: 0.5 })).toThrow(/thresholdBytes/);
  });
});

describe('compress on a real listener', () => {
  let close: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await close?.();
    close = undefined;
  });

  async function listen(): Promise<number> {
    const app = testApp();
    const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
      const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
    });
    close = () => new Promise((resolve) => server.close(() => resolve()));
    return (server.address() as AddressInfo).port;
  }

  function raw(port: number, path: string, headers: Record<string, string>): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }> {
    return new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, path, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      });
      req.on('error', reject);
      req.end();
    });
  }

  it('compresses a Hono-built answer on the wire with a matching Content-Length', async () => {
    const port = await listen();
    const br = await raw(port, '/big', { 'accept-encoding': 'br' });
    expect(br.headers['content-encoding']).toBe('br');
    expect(Number(br.headers['content-length'])).toBe(br.body.byteLength);
    expect(brotliDecompressSync(br.body).toString('utf8')).toBe(BIG_JSON);
    const gz = await raw(port, '/page', { 'accept-encoding': 'gzip' });
    expect(gz.headers['content-encoding']).toBe('gzip');
    expect(gunzipSync(gz.body).toString('utf8')).toBe(BIG_HTML);
    const small = await raw(port, '/small', { 'accept-encoding': 'br' });
    expect(small.headers['content-encoding']).toBeUndefined();
    expect(JSON.parse(small.body.toString('utf8'))).toEqual({ ok: true });
  });

  it('leaves a response written straight to the socket alone', async () => {
    const port = await listen();
    const response = await raw(port, '/direct', { 'accept-encoding': 'br, gzip' });
    expect(response.status).toBe(200);
    expect(response.headers['content-encoding']).toBeUndefined();
    expect(response.body.toString('utf8')).toBe(BIG_JSON);
  });

  it('lets a live stream through untouched on the wire', async () => {
    const port = await listen();
    const response = await raw(port, '/live', { 'accept-encoding': 'br, gzip' });
    expect(response.headers['content-encoding']).toBeUndefined();
    expect(response.body.toString('utf8').trim().split('\n')).toHaveLength(3);
  });
});
