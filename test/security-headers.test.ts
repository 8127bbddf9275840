/**
 * Security response headers: every header on Hono-built responses (in process) and on
 * responses written straight to Node's ServerResponse (a real listener), HSTS only when asked,
 * a route's own header winning, and the per-response HTML nonce.
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
import { API_CSP, PERMISSIONS_POLICY, type SecurityHeadersOptions, htmlNonce, securityHeaders } from '../src/security/headers.js';

const EXPECTED: Record<string, string> = {
  'content-security-policy': "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'x-xss-protection': '0',
  'cache-control': 'no-store',
};

function testApp(options?: SecurityHeadersOptions): Hono<BulwarkEnv> {
  const app = new Hono<BulwarkEnv>();
  app.onError(errorHandler(() => {}));
  app.notFound(notFoundHandler);
  app.use('*', requestId());
  app.use('*', securityHeaders(options));
  app.get('/json', (c) => c.json({ ok: true }));
  app.get('/public-doc', (c) => c.json({ openapi: '3.1.0' }, 200, { 'Cache-Control': 'public, max-age=300' }));
  app.get('/forbidden', () => {
    throw new ApiError('forbidden', 'Not for you.');
  });
  app.get('/page', (c) => {
    const nonce = htmlNonce(c);
    return c.html(`<!doctype html><script nonce="${nonce}">1</script>`);
  });
  // The proxy's fast path: straight to the socket, Hono gets the marker.
  app.get('/direct', (c) => {
    const outgoing = (c.env as { outgoing: ServerResponse }).outgoing;
    outgoing.writeHead(200, { 'content-type': 'application/json' });
    outgoing.end('{"direct":true}');
    return RESPONSE_ALREADY_SENT;
  });
  app.get('/direct-cacheable', (c) => {
    const outgoing = (c.env as { outgoing: ServerResponse }).outgoing;
    outgoing.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'public, max-age=60' });
    outgoing.end('cacheable');
    return RESPONSE_ALREADY_SENT;
  });
  return app;
}

function expectSecurityHeaders(get: (name: string) => string | null | undefined) {
  for (const [name, value] of Object.entries(EXPECTED)) expect(get(name), name).toBe(value);
  const permissions = get('permissions-policy') ?? '';
  for (const feature of ['camera', 'microphone', 'geolocation', 'payment', 'usb', 'bluetooth', 'serial', 'hid', 'display-capture']) {
    expect(permissions).toContain(`${feature}=()`);
  }
  for (const absent of ['expect-ct', 'x-powered-by', 'server']) expect(get(absent) ?? null, absent).toBeNull();
}

interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

function rawGet(port: number, path: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('securityHeaders in process', () => {
  it('puts every security header on a JSON response and no HSTS by default', async () => {
    const response = await testApp().request('/json');
    expect(response.status).toBe(200);
    expectSecurityHeaders((name) => response.headers.get(name));
    expect(response.headers.get('strict-transport-security')).toBeNull();
  });

  it('exports the same strict API policy and a deny-all permissions policy it sends', async () => {
    const response = await testApp().request('/json');
    expect(response.headers.get('content-security-policy')).toBe(API_CSP);
    expect(response.headers.get('permissions-policy')).toBe(PERMISSIONS_POLICY);
    expect(PERMISSIONS_POLICY.split(', ').every((entry) => /^[a-z-]+=\(\)$/.test(entry))).toBe(true);
  });

  it('sends HSTS with includeSubDomains only when asked, with the configured max-age', async () => {
    const yearly = await testApp({ hsts: true }).request('/json');
    expect(yearly.headers.get('strict-transport-security')).toBe('max-age=31536000; includeSubDomains');
    const short = await testApp({ hsts: true, hstsMaxAgeSeconds: 600 }).request('/json');
    expect(short.headers.get('strict-transport-security')).toBe('max-age=600; includeSubDomains');
    const off = await testApp({ hsts: false, hstsMaxAgeSeconds: 600 }).request('/json');
    expect(off.headers.get('strict-transport-security')).toBeNull();
  });

  it('puts the headers on error envelopes and on 404s too', async () => {
    const forbidden = await testApp().request('/forbidden');
    expect(forbidden.status).toBe(403);
    expect(((await forbidden.json()) as { error: { code: string } }).error.code).toBe('forbidden');
    expectSecurityHeaders((name) => forbidden.headers.get(name));
    const missing = await testApp().request('/nowhere');
    expect(missing.status).toBe(404);
    expectSecurityHeaders((name) => missing.headers.get(name));
  });

  it("lets a route's own Cache-Control win over no-store", async () => {
    const response = await testApp().request('/public-doc');
    expect(response.headers.get('cache-control')).toBe('public, max-age=300');
    expect(response.headers.get('x-frame-options')).toBe('DENY');
  });

  it('gives an HTML page a fresh nonce per response, used in a strict HTML CSP', async () => {
    const app = testApp();
    const nonces: string[] = [];
    for (let i = 0; i < 2; i++) {
      const response = await app.request('/page');
      const nonce = /nonce="([^"]+)"/.exec(await response.text())?.[1] ?? '';
      expect(Buffer.from(nonce, 'base64')).toHaveLength(16);
      expect(response.headers.get('content-security-policy')).toBe(
        `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; img-src 'self' data:; ` +
          `connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'`,
      );
      expect(response.headers.get('x-content-type-options')).toBe('nosniff');
      nonces.push(nonce);
    }
    expect(nonces[0]).not.toBe(nonces[1]);
  });

  it('refuses bad options at build time, naming the option', () => {
    expect(() => securityHeaders({ hstsMaxAgeSeconds: -1 })).toThrow(/hstsMaxAgeSeconds/);
    expect(() => securityHeaders({ hstsMaxAgeSeconds: 1.5 })).toThrow(/hstsMaxAgeSeconds/);
    expect(() => securityHeaders({ hsts: 'yes' as unknown as boolean })).toThrow(/hsts/);
  });
});

describe('securityHeaders on a real listener', () => {
  let close: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await close?.();
    close = undefined;
  });

  async function listen(options?: SecurityHeadersOptions): Promise<number> {
    const app = testApp(options);
    const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
      const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
    });
    close = () => new Promise((resolve) => server.close(() => resolve()));
    return (server.address() as AddressInfo).port;
  }

  it('reaches a response written straight to the socket with writeHead, as the proxy does', async () => {
    const port = await listen({ hsts: true });
    const response = await rawGet(port, '/direct');
    expect(response.status).toBe(200);
    expect(JSON.parse(response.body)).toEqual({ direct: true });
    expectSecurityHeaders((name) => response.headers[name] as string | undefined);
    expect(response.headers['strict-transport-security']).toBe('max-age=31536000; includeSubDomains');
  });

  it('lets the headers a route passes to writeHead win', async () => {
    const port = await listen();
    const response = await rawGet(port, '/direct-cacheable');
    expect(response.headers['cache-control']).toBe('public, max-age=60');
    expect(response.headers['x-frame-options']).toBe('DENY');
  });

  it('puts them on Hono-built responses too, with a route override and the HTML nonce winning', async () => {
    const port = await listen();
    const json = await rawGet(port, '/json');
    expectSecurityHeaders((name) => json.headers[name] as string | undefined);
    expect(json.headers['strict-transport-security']).toBeUndefined();
    const doc = await rawGet(port, '/public-doc');
    expect(doc.headers['cache-control']).toBe('public, max-age=300');
    const page = await rawGet(port, '/page');
    const nonce = /nonce="([^"]+)"/.exec(page.body)?.[1];
    expect(nonce).toBeTruthy();
    expect(page.headers['content-security-policy']).toContain(`script-src 'nonce-${nonce}'`);
  });
});
