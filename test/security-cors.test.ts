/**
 * CORS: the allow-list, credentials, exposed headers, Vary: Origin, preflights (204 / 403),
 * never `*` — in process and on a real listener where the route writes straight to the socket.
 */
import { type IncomingHttpHeaders, request as httpRequest, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { Hono } from 'hono';
import { afterEach, describe, expect, it } from 'vitest';
import type { BulwarkEnv } from '../src/http/context.js';
import { ApiError, errorHandler, notFoundHandler } from '../src/http/errors.js';
import { requestId } from '../src/http/request-id.js';
import { compress } from '../src/security/compress.js';
import { type CorsOptions, cors } from '../src/security/cors.js';
import { securityHeaders } from '../src/security/headers.js';
import { hostCheck } from '../src/security/host.js';
import { originCheck } from '../src/security/origin.js';

const APP = 'https://app.example.com';
const EXPOSED = ['Mcp-Session-Id', 'X-Request-Id', 'Request-Id', 'Retry-After', 'RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset'];
const REQUIRED_ALLOW_HEADERS = [
  'authorization',
  'x-api-key',
  'content-type',
  'mcp-session-id',
  'mcp-protocol-version',
  'last-event-id',
  'x-xsrf-token',
  'x-request-id',
  'anthropic-version',
  'anthropic-beta',
];

function testApp(options: Partial<CorsOptions> = {}): Hono<BulwarkEnv> {
  const app = new Hono<BulwarkEnv>();
  app.onError(errorHandler(() => {}));
  app.notFound(notFoundHandler);
  app.use('*', requestId());
  app.use('*', cors({ origins: [APP, 'http://localhost:5173'], ...options }));
  app.get('/data', (c) => c.json({ ok: true }));
  app.post('/data', (c) => c.json({ created: true }, 201));
  app.get('/compressible', (c) => c.json({ ok: true }, 200, { Vary: 'Accept-Encoding' }));
  app.get('/denied', () => {
    throw new ApiError('unauthorized', 'Authentication required.');
  });
  app.get('/direct', (c) => {
    const outgoing = (c.env as { outgoing: ServerResponse }).outgoing;
    outgoing.writeHead(200, { 'content-type': 'text/event-stream' });
    outgoing.end('data: {}\n\n');
    return RESPONSE_ALREADY_SENT;
  });
  return app;
}

function listOf(value: string | null | undefined): string[] {
  return (value ?? '').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
}

function preflight(origin: string, method = 'POST', requestHeaders?: string): RequestInit {
  return {
    method: 'OPTIONS',
    headers: { origin, 'access-control-request-method': method, ...(requestHeaders ? { 'access-control-request-headers': requestHeaders } : {}) },
  };
}

describe('cors in process', () => {
  it('echoes an allowed origin with credentials, the exposed headers and Vary: Origin', async () => {
    const response = await testApp().request('/data', { headers: { origin: APP } });
    expect(response.status).toBe(200);
    expect(response.headers.get('access-control-allow-origin')).toBe(APP);
    expect(response.headers.get('access-control-allow-credentials')).toBe('true');
    expect(listOf(response.headers.get('access-control-expose-headers'))).toEqual(expect.arrayContaining(EXPOSED.map((h) => h.toLowerCase())));
    expect(listOf(response.headers.get('vary'))).toContain('origin');
  });

  it('matches the allowed origin in its normal form and echoes that form', async () => {
    const response = await testApp().request('/data', { headers: { origin: 'https://APP.example.com:443' } });
    expect(response.headers.get('access-control-allow-origin')).toBe(APP);
  });

  it('gives another origin, a null origin and no origin no CORS headers but still Vary: Origin', async () => {
    for (const headers of [{ origin: 'https://attacker.test' }, { origin: 'null' }, {} as Record<string, string>]) {
      const response = await testApp().request('/data', { headers });
      expect(response.status).toBe(200);
      expect(response.headers.get('access-control-allow-origin')).toBeNull();
      expect(response.headers.get('access-control-allow-credentials')).toBeNull();
      expect(listOf(response.headers.get('vary'))).toEqual(['origin']);
    }
  });

  it('appends Origin to a Vary the route already set', async () => {
    const response = await testApp().request('/compressible', { headers: { origin: APP } });
    expect(listOf(response.headers.get('vary'))).toEqual(['accept-encoding', 'origin']);
  });

  it('lets an allowed origin read error envelopes', async () => {
    const response = await testApp().request('/denied', { headers: { origin: APP } });
    expect(response.status).toBe(401);
    expect(response.headers.get('access-control-allow-origin')).toBe(APP);
  });

  it('answers a preflight from a listed origin with 204 and the methods, headers and max-age', async () => {
    const response = await testApp().request('/data', preflight(APP, 'POST', 'authorization,content-type,anthropic-dangerous-direct-browser-access,x-stainless-os,x-custom'));
    expect(response.status).toBe(204);
    expect(await response.text()).toBe('');
    expect(response.headers.get('access-control-allow-origin')).toBe(APP);
    expect(response.headers.get('access-control-allow-credentials')).toBe('true');
    expect(listOf(response.headers.get('access-control-allow-methods'))).toEqual(['get', 'post', 'put', 'patch', 'delete', 'options']);
    const allowHeaders = listOf(response.headers.get('access-control-allow-headers'));
    expect(allowHeaders).toEqual(expect.arrayContaining([...REQUIRED_ALLOW_HEADERS, 'anthropic-dangerous-direct-browser-access', 'x-stainless-os']));
    expect(allowHeaders).not.toContain('x-custom');
    expect(response.headers.get('access-control-max-age')).toBe('600');
    expect(listOf(response.headers.get('vary'))).toContain('origin');
  });

  it('uses the configured preflight max-age', async () => {
    const response = await testApp({ maxAgeSeconds: 7200 }).request('/data', preflight('http://localhost:5173'));
    expect(response.status).toBe(204);
    expect(response.headers.get('access-control-max-age')).toBe('7200');
  });

  it('refuses a preflight from another origin with 403 origin_not_allowed and no CORS header', async () => {
    for (const origin of ['https://attacker.test', 'null', 'https://app.example.com.attacker.test']) {
      const response = await testApp().request('/data', preflight(origin));
      expect(response.status, origin).toBe(403);
      const body = (await response.json()) as { error: { code: string; requestId: string } };
      expect(body.error.code).toBe('origin_not_allowed');
      expect(body.error.requestId).toBe(response.headers.get('x-request-id'));
      expect([...response.headers.keys()].filter((name) => name.startsWith('access-control-')), origin).toEqual([]);
    }
  });

  it('never answers with a wildcard origin', async () => {
    const app = testApp();
    const requests: RequestInit[] = [{ headers: { origin: APP } }, { headers: { origin: 'https://attacker.test' } }, preflight(APP), preflight('https://x.test')];
    for (const init of requests) {
      const response = await app.request('/data', init);
      expect(response.headers.get('access-control-allow-origin')).not.toBe('*');
    }
    expect(() => cors({ origins: ['*'] })).toThrow(/origins/);
    expect(() => cors({ origins: ['null'] })).toThrow(/origins/);
  });

  it('refuses bad options at build time, naming the option', () => {
    expect(() => cors({ origins: ['app.example.com'] })).toThrow(/origins/);
    expect(() => cors({ origins: ['https://app.example.com/path'] })).toThrow(/origins/);
    expect(() => cors({ origins: [APP], maxAgeSeconds: -1 })).toThrow(/maxAgeSeconds/);
    expect(() => cors({ origins: [APP], maxAgeSeconds: 100_000 })).toThrow(/maxAgeSeconds/);
  });
});

describe('cors on a real listener', () => {
  let close: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await close?.();
    close = undefined;
  });

  async function listen(app: Hono<BulwarkEnv> = testApp()): Promise<number> {
    const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
      const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
    });
    close = () => new Promise((resolve) => server.close(() => resolve()));
    return (server.address() as AddressInfo).port;
  }

  function raw(port: number, path: string, headers: Record<string, string>, method = 'GET'): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
    return new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, path, method, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      });
      req.on('error', reject);
      req.end();
    });
  }

  it('puts the CORS headers on a response written straight to the socket for an allowed origin', async () => {
    const port = await listen();
    const response = await raw(port, '/direct', { origin: APP });
    expect(response.body).toBe('data: {}\n\n');
    expect(response.headers['access-control-allow-origin']).toBe(APP);
    expect(response.headers['access-control-allow-credentials']).toBe('true');
    expect(listOf(response.headers['access-control-expose-headers'])).toEqual(expect.arrayContaining(EXPOSED.map((h) => h.toLowerCase())));
    expect(listOf(response.headers.vary)).toEqual(['origin']);
  });

  it('leaves them off a direct response for another origin, keeping Vary: Origin', async () => {
    const port = await listen();
    const response = await raw(port, '/direct', { origin: 'https://attacker.test' });
    expect(response.headers['access-control-allow-origin']).toBeUndefined();
    expect(listOf(response.headers.vary)).toEqual(['origin']);
  });

  it("keeps both a Hono route's Vary and Origin when Node merges the headers", async () => {
    const port = await listen();
    const response = await raw(port, '/compressible', { origin: APP });
    expect(response.headers['access-control-allow-origin']).toBe(APP);
    expect(listOf(response.headers.vary)).toEqual(['accept-encoding', 'origin']);
  });

  it('answers preflights on the wire: 204 for a listed origin, 403 without CORS headers for another', async () => {
    const port = await listen();
    const allowed = await raw(port, '/data', { origin: APP, 'access-control-request-method': 'POST' }, 'OPTIONS');
    expect(allowed.status).toBe(204);
    expect(allowed.headers['access-control-allow-origin']).toBe(APP);
    const refused = await raw(port, '/data', { origin: 'https://attacker.test', 'access-control-request-method': 'POST' }, 'OPTIONS');
    expect(refused.status).toBe(403);
    expect(Object.keys(refused.headers).filter((name) => name.startsWith('access-control-'))).toEqual([]);
  });

  it('works in the pipeline order of app.ts: a direct response gets security and CORS headers, a preflight its 204', async () => {
    const app = new Hono<BulwarkEnv>();
    app.onError(errorHandler(() => {}));
    app.notFound(notFoundHandler);
    app.use('*', requestId());
    app.use('*', compress());
    app.use('*', securityHeaders({ hsts: true }));
    app.use('*', hostCheck({ allowedHosts: [], allowLoopback: true, audit: () => {} }));
    app.use('*', originCheck({ allowedOrigins: [APP], audit: () => {} }));
    app.use('*', cors({ origins: [APP] }));
    app.post('/v1/messages', (c) => {
      const outgoing = (c.env as { outgoing: ServerResponse }).outgoing;
      outgoing.writeHead(200, { 'content-type': 'text/event-stream', 'request-id': 'req_up' });
      outgoing.end('event: message_stop\ndata: {}\n\n');
      return RESPONSE_ALREADY_SENT;
    });
    const port = await listen(app);
    const host = `localhost:${port}`;
    const streamed = await raw(port, '/v1/messages', { host, origin: APP, authorization: 'Bearer bwk_x', 'accept-encoding': 'br' }, 'POST');
    expect(streamed.status).toBe(200);
    expect(streamed.body).toBe('event: message_stop\ndata: {}\n\n');
    expect(streamed.headers['access-control-allow-origin']).toBe(APP);
    expect(streamed.headers['strict-transport-security']).toBe('max-age=31536000; includeSubDomains');
    expect(streamed.headers['x-content-type-options']).toBe('nosniff');
    expect(streamed.headers['content-encoding']).toBeUndefined();
    const preflighted = await raw(port, '/v1/messages', { host, origin: APP, 'access-control-request-method': 'POST' }, 'OPTIONS');
    expect(preflighted.status).toBe(204);
    expect(preflighted.headers['access-control-allow-origin']).toBe(APP);
    expect(preflighted.headers['x-frame-options']).toBe('DENY');
    const foreign = await raw(port, '/v1/messages', { host, origin: 'https://attacker.test', authorization: 'Bearer bwk_x' }, 'POST');
    expect(foreign.status).toBe(403);
    expect(foreign.headers['access-control-allow-origin']).toBeUndefined();
  });
});
