/**
 * DNS-rebinding and cross-site defences: the Host allow-list (421) and the Origin check (403),
 * in process and on a real listener, with the audit events they leave.
 */
import { type IncomingHttpHeaders, request as httpRequest, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { Hono } from 'hono';
import { afterEach, describe, expect, it } from 'vitest';
import type { AuditEventInput } from '../src/audit/log.js';
import type { BulwarkEnv } from '../src/http/context.js';
import { errorHandler, notFoundHandler } from '../src/http/errors.js';
import { requestId } from '../src/http/request-id.js';
import { hostCheck, isLoopbackHost, parseHost } from '../src/security/host.js';
import { normalizeOrigin, originCheck } from '../src/security/origin.js';

interface Setup {
  allowedHosts?: string[];
  allowLoopback?: boolean;
  allowedOrigins?: string[];
}

function testApp(setup: Setup = {}) {
  const events: AuditEventInput[] = [];
  const audit = (event: AuditEventInput) => events.push(event);
  const app = new Hono<BulwarkEnv>();
  app.onError(errorHandler(() => {}));
  app.notFound(notFoundHandler);
  app.use('*', requestId());
  app.use('*', hostCheck({ allowedHosts: setup.allowedHosts ?? ['api.example.com'], allowLoopback: setup.allowLoopback ?? false, audit }));
  app.use('*', originCheck({ allowedOrigins: setup.allowedOrigins ?? ['https://app.example.com'], audit }));
  app.get('/thing', (c) => c.json({ ok: true }));
  app.post('/thing', (c) => c.json({ ok: true }));
  app.options('/thing', (c) => c.body(null, 204));
  app.get('/direct', (c) => {
    const outgoing = (c.env as { outgoing: ServerResponse }).outgoing;
    outgoing.writeHead(200, { 'content-type': 'text/plain' });
    outgoing.end('direct');
    return RESPONSE_ALREADY_SENT;
  });
  return { app, events };
}

async function errorCode(response: Response): Promise<string> {
  const body = (await response.json()) as { error: { code: string; message: string; requestId: string } };
  expect(body.error.requestId).toBe(response.headers.get('x-request-id'));
  return body.error.code;
}

describe('hostCheck', () => {
  it('refuses a foreign Host with 421 host_not_allowed in the envelope, naming the host, and audits it', async () => {
    const { app, events } = testApp();
    const response = await app.request('/thing', { headers: { host: 'rebind.attacker.test', 'user-agent': 'probe/1' } });
    expect(response.status).toBe(421);
    const body = (await response.clone().json()) as { error: { message: string } };
    expect(body.error.message).toContain('rebind.attacker.test');
    expect(body.error.message).toContain('BULWARK_ALLOWED_HOSTS');
    expect(await errorCode(response)).toBe('host_not_allowed');
    expect(events).toEqual([
      expect.objectContaining({
        type: 'http.host_refused',
        outcome: 'denied',
        path: '/thing',
        method: 'GET',
        requestId: response.headers.get('x-request-id'),
        details: { host: 'rebind.attacker.test' },
      }),
    ]);
  });

  it('judges a request without a Host header (in process) by the host of its URL', async () => {
    const { app, events } = testApp({ allowLoopback: true });
    const foreign = await app.request('http://rebind.attacker.test/thing');
    expect(foreign.status).toBe(421);
    expect(await errorCode(foreign)).toBe('host_not_allowed');
    expect(events[0]?.details).toEqual({ host: 'rebind.attacker.test' });
    expect((await app.request('/thing')).status).toBe(200); // http://localhost/thing
  });

  it('serves a listed host on any port when listed without one, case- and trailing-dot-insensitively', async () => {
    const { app, events } = testApp();
    for (const host of ['api.example.com', 'api.example.com:8443', 'API.Example.COM:443', 'api.example.com.']) {
      expect((await app.request('/thing', { headers: { host } })).status, host).toBe(200);
    }
    expect(events).toEqual([]);
  });

  it('serves a host listed with its scheme\'s default port when the client leaves the port out', async () => {
    const { app } = testApp({ allowedHosts: ['api.example.com:443'] });
    expect((await app.request('/thing', { headers: { host: 'api.example.com' } })).status).toBe(200);
    expect((await app.request('/thing', { headers: { host: 'api.example.com:443' } })).status).toBe(200);
    expect((await app.request('/thing', { headers: { host: 'api.example.com:8443' } })).status).toBe(421);
  });

  it('serves a host listed with a port only on that port', async () => {
    const { app } = testApp({ allowedHosts: ['admin.example.com:8443'] });
    expect((await app.request('/thing', { headers: { host: 'admin.example.com:8443' } })).status).toBe(200);
    for (const host of ['admin.example.com', 'admin.example.com:9443', 'example.com:8443', 'evil.admin.example.com:8443']) {
      expect((await app.request('/thing', { headers: { host } })).status, host).toBe(421);
    }
  });

  it('matches IPv6 literals in brackets, in any spelling of the address', async () => {
    const { app } = testApp({ allowedHosts: ['[2001:db8::1]', '2001:db8::2'] });
    for (const host of ['[2001:db8::1]', '[2001:db8::1]:3000', '[2001:DB8:0:0::1]', '[2001:db8::2]:8080']) {
      expect((await app.request('/thing', { headers: { host } })).status, host).toBe(200);
    }
    for (const host of ['[2001:db8::3]', '2001:db8::1', '[2001:db8::1']) {
      expect((await app.request('/thing', { headers: { host } })).status, host).toBe(421);
    }
  });

  it('serves loopback names only when allowLoopback is set', async () => {
    const loopbackHosts = ['localhost', 'localhost:3000', '127.0.0.1:3000', '127.8.9.10', '[::1]:3000'];
    const open = testApp({ allowLoopback: true });
    for (const host of loopbackHosts) expect((await open.app.request('/thing', { headers: { host } })).status, host).toBe(200);
    const closed = testApp({ allowLoopback: false });
    for (const host of loopbackHosts) expect((await closed.app.request('/thing', { headers: { host } })).status, host).toBe(421);
    // Names that merely start like loopback are someone else's.
    for (const host of ['localhost.attacker.test', '127.0.0.1.attacker.test', '127.0.0.256', '[::2]']) {
      expect((await open.app.request('/thing', { headers: { host } })).status, host).toBe(421);
    }
  });

  it('parses Host values strictly', () => {
    expect(parseHost('Example.COM:80')).toEqual({ hostname: 'example.com', port: 80 });
    expect(parseHost('[::1]:3000')).toEqual({ hostname: '[::1]', port: 3000 });
    for (const bad of ['', 'a b', 'example.com:0', 'example.com:65536', 'example.com:', 'example.com:80:80', 'user@example.com', '[::1]x', 'exa_mple.com/x']) {
      expect(parseHost(bad), bad).toBeUndefined();
    }
    expect(isLoopbackHost('127.255.255.255')).toBe(true);
    expect(isLoopbackHost('128.0.0.1')).toBe(false);
  });

  it('refuses bad options at build time, naming the option', () => {
    const audit = () => {};
    expect(() => hostCheck({ allowedHosts: ['https://example.com'], allowLoopback: false, audit })).toThrow(/allowedHosts/);
    expect(() => hostCheck({ allowedHosts: ['*.example.com'], allowLoopback: false, audit })).toThrow(/allowedHosts/);
    expect(() => hostCheck({ allowedHosts: [], allowLoopback: false, audit })).toThrow(/allowedHosts/);
    expect(() => hostCheck({ allowedHosts: ['example.com'], allowLoopback: 'yes' as unknown as boolean, audit })).toThrow(/allowLoopback/);
    expect(() => hostCheck({ allowedHosts: [], allowLoopback: true, audit })).not.toThrow();
  });
});

describe('originCheck', () => {
  const host = 'api.example.com';

  it('refuses a POST from a foreign origin with 403 origin_not_allowed and audits it', async () => {
    const { app, events } = testApp();
    const response = await app.request('/thing', { method: 'POST', headers: { host, origin: 'https://attacker.test' } });
    expect(response.status).toBe(403);
    expect(await errorCode(response)).toBe('origin_not_allowed');
    expect(events).toEqual([
      expect.objectContaining({
        type: 'http.origin_refused',
        outcome: 'denied',
        method: 'POST',
        path: '/thing',
        requestId: response.headers.get('x-request-id'),
        details: { origin: 'https://attacker.test', reason: 'state_changing' },
      }),
    ]);
  });

  it('refuses a credentialed GET from a foreign origin, whichever credential it carries', async () => {
    const { app, events } = testApp();
    const credentials: Array<Record<string, string>> = [{ authorization: 'Bearer bwk_x' }, { 'x-api-key': 'bwk_x' }, { cookie: 'session=1' }];
    for (const credential of credentials) {
      const response = await app.request('/thing', { headers: { host, origin: 'https://attacker.test', ...credential } });
      expect(response.status, Object.keys(credential)[0]).toBe(403);
      expect(await errorCode(response)).toBe('origin_not_allowed');
    }
    expect(events.map((e) => e.details?.reason)).toEqual(['credentialed', 'credentialed', 'credentialed']);
  });

  it('lets an uncredentialed GET from a foreign origin through (CORS keeps the answer from the page)', async () => {
    const { app } = testApp();
    expect((await app.request('/thing', { headers: { host, origin: 'https://attacker.test' } })).status).toBe(200);
  });

  it('lets a listed origin through, compared in its normal form', async () => {
    const { app, events } = testApp();
    for (const origin of ['https://app.example.com', 'HTTPS://App.Example.com:443']) {
      const response = await app.request('/thing', { method: 'POST', headers: { host, origin, authorization: 'Bearer bwk_x' } });
      expect(response.status, origin).toBe(200);
    }
    expect(events).toEqual([]);
  });

  it('lets a same-origin request through and tells ports apart', async () => {
    const { app } = testApp();
    const post = (origin: string, hostHeader: string) => app.request('/thing', { method: 'POST', headers: { host: hostHeader, origin } });
    expect((await post('https://api.example.com', 'api.example.com')).status).toBe(200);
    expect((await post('https://api.example.com', 'api.example.com:443')).status).toBe(200);
    expect((await post('http://api.example.com:8443', 'api.example.com:8443')).status).toBe(200);
    expect((await post('https://api.example.com:9443', 'api.example.com:8443')).status).toBe(403);
    expect((await post('https://evil.example.com', 'api.example.com')).status).toBe(403);
  });

  it('lets requests without an Origin through, as CLIs and SDKs send none', async () => {
    const { app } = testApp();
    const response = await app.request('/thing', { method: 'POST', headers: { host, authorization: 'Bearer bwk_x' } });
    expect(response.status).toBe(200);
  });

  it('never allows Origin: null on a state-changing or credentialed request', async () => {
    const { app, events } = testApp();
    const post = await app.request('/thing', { method: 'POST', headers: { host, origin: 'null' } });
    expect(post.status).toBe(403);
    const get = await app.request('/thing', { headers: { host, origin: 'null', authorization: 'Bearer bwk_x' } });
    expect(get.status).toBe(403);
    expect(events.map((e) => e.details?.origin)).toEqual(['null', 'null']);
  });

  it('refuses a malformed Origin like a foreign one', async () => {
    const { app } = testApp();
    for (const origin of ['https://app.example.com/path', 'app.example.com', 'https://app.example.com https://x.test']) {
      expect((await app.request('/thing', { method: 'POST', headers: { host, origin } })).status, origin).toBe(403);
    }
  });

  it('leaves OPTIONS preflights to CORS', async () => {
    const { app } = testApp();
    const response = await app.request('/thing', { method: 'OPTIONS', headers: { host, origin: 'https://attacker.test', 'access-control-request-method': 'POST' } });
    expect(response.status).toBe(204);
  });

  it('normalises origins and refuses bad allowedOrigins at build time', () => {
    expect(normalizeOrigin('HTTPS://Example.COM:443/')).toBe('https://example.com');
    expect(normalizeOrigin('http://[::1]:3000')).toBe('http://[::1]:3000');
    expect(normalizeOrigin('null')).toBeUndefined();
    expect(() => originCheck({ allowedOrigins: ['app.example.com'], audit: () => {} })).toThrow(/allowedOrigins/);
    expect(() => originCheck({ allowedOrigins: ['https://app.example.com/app'], audit: () => {} })).toThrow(/allowedOrigins/);
  });
});

describe('hostCheck and originCheck on a real listener', () => {
  let close: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await close?.();
    close = undefined;
  });

  async function listen(setup: Setup) {
    const { app, events } = testApp(setup);
    const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
      const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
    });
    close = () => new Promise((resolve) => server.close(() => resolve()));
    return { port: (server.address() as AddressInfo).port, events };
  }

  function raw(port: number, path: string, method: string, headers: Record<string, string>): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
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

  it('refuses a rebound Host before the direct-write route runs, and serves loopback when allowed', async () => {
    const { port, events } = await listen({ allowLoopback: true });
    const refused = await raw(port, '/direct', 'GET', { host: `rebind.attacker.test:${port}` });
    expect(refused.status).toBe(421);
    expect(JSON.parse(refused.body).error.code).toBe('host_not_allowed');
    expect(events[0]).toMatchObject({ type: 'http.host_refused', ip: '127.0.0.1', details: { host: `rebind.attacker.test:${port}` } });
    const served = await raw(port, '/direct', 'GET', { host: `127.0.0.1:${port}` });
    expect(served.status).toBe(200);
    expect(served.body).toBe('direct');
  });

  it('refuses a foreign-origin POST on the wire with 403', async () => {
    const { port } = await listen({ allowLoopback: true });
    const response = await raw(port, '/thing', 'POST', { host: `localhost:${port}`, origin: 'https://attacker.test' });
    expect(response.status).toBe(403);
    expect(JSON.parse(response.body).error.code).toBe('origin_not_allowed');
  });
});
