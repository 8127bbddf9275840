/**
 * Client addresses and IP allow-lists: CIDR parsing (IPv4, IPv6, IPv4-mapped), the trusted-proxy
 * walk over X-Forwarded-For and RFC 7239 Forwarded, the listener allow-list (in process and
 * through a real socket) and the per-key helper.
 */
import type { AddressInfo } from 'node:net';
import { type ServerType, serve } from '@hono/node-server';
import { Hono, type MiddlewareHandler } from 'hono';
import { afterEach, describe, expect, it } from 'vitest';
import type { AuditEventInput } from '../src/audit/log.js';
import type { BulwarkEnv, BulwarkVariables } from '../src/http/context.js';
import { errorHandler } from '../src/http/errors.js';
import { requestId } from '../src/http/request-id.js';
import { matchesAny, normalizeIp, parseCidrList } from '../src/security/cidr.js';
import { type ClientIpVariables, clientAddress, forwardedForChain, resolveClientIp } from '../src/security/client-ip.js';
import { ipAllowlist } from '../src/security/ip-allowlist.js';
import { keyIpAllowed } from '../src/security/key-ip-allowlist.js';

type TestEnv = { Variables: BulwarkVariables & ClientIpVariables };

const list = (...values: string[]) => parseCidrList(values, 'test');

describe('parseCidrList and matchesAny', () => {
  it('matches IPv4 CIDRs and treats a bare IPv4 address as /32', () => {
    const l = list('10.0.0.0/8', '192.0.2.7');
    expect(l.entries).toEqual(['10.0.0.0/8', '192.0.2.7/32']);
    expect(matchesAny(l, '10.255.1.2')).toBe(true);
    expect(matchesAny(l, '11.0.0.1')).toBe(false);
    expect(matchesAny(l, '192.0.2.7')).toBe(true);
    expect(matchesAny(l, '192.0.2.8')).toBe(false);
  });

  it('matches IPv6 CIDRs and treats a bare IPv6 address as /128', () => {
    const l = list('2001:db8::/32', '2001:DB8:FFFF::1');
    expect(l.entries).toEqual(['2001:db8::/32', '2001:db8:ffff::1/128']);
    expect(matchesAny(l, '2001:db8:1234::9')).toBe(true);
    expect(matchesAny(l, '2001:db9::1')).toBe(false);
    const host = list('2001:db9::1');
    expect(matchesAny(host, '2001:db9::1')).toBe(true);
    expect(matchesAny(host, '2001:db9::2')).toBe(false);
  });

  it('treats an IPv4-mapped IPv6 address as the IPv4 address, in lists and in lookups', () => {
    expect(matchesAny(list('10.0.0.0/8'), '::ffff:10.1.2.3')).toBe(true);
    expect(matchesAny(list('10.0.0.0/8'), '::ffff:a01:203')).toBe(true);
    expect(matchesAny(list('10.0.0.0/8'), '::ffff:11.1.2.3')).toBe(false);
    const mapped = list('::ffff:10.0.0.0/104', '::ffff:192.0.2.1');
    expect(mapped.entries).toEqual(['10.0.0.0/8', '192.0.2.1/32']);
    expect(matchesAny(mapped, '10.9.9.9')).toBe(true);
    expect(matchesAny(mapped, '192.0.2.1')).toBe(true);
    expect(matchesAny(mapped, '192.0.2.2')).toBe(false);
  });

  it('normalises addresses: mapped IPv4 to IPv4, IPv6 compressed and lower-cased, zone ids dropped', () => {
    expect(normalizeIp('::ffff:127.0.0.1')).toBe('127.0.0.1');
    expect(normalizeIp('::FFFF:7f00:1')).toBe('127.0.0.1');
    expect(normalizeIp('2001:DB8:0:0:0:0:0:1')).toBe('2001:db8::1');
    expect(normalizeIp('fe80::1%eth0')).toBe('fe80::1');
    expect(normalizeIp('203.0.113.5')).toBe('203.0.113.5');
    expect(normalizeIp('localhost')).toBeUndefined();
    expect(normalizeIp('01.2.3.4')).toBeUndefined();
    expect(normalizeIp('1.2.3.4:80')).toBeUndefined();
  });

  it('matches nothing for an empty list, a missing address or something that is not an address', () => {
    expect(matchesAny(list(), '10.0.0.1')).toBe(false);
    expect(matchesAny(list('0.0.0.0/0'), undefined)).toBe(false);
    expect(matchesAny(list('0.0.0.0/0'), 'garbage')).toBe(false);
    expect(matchesAny(list('0.0.0.0/0'), '8.8.8.8')).toBe(true);
    expect(matchesAny(list('::/0'), '2001:db8::1')).toBe(true);
  });

  it.each([
    ['10.0.0.0/33', 'prefix length must be 0–32'],
    ['2001:db8::/129', 'prefix length must be 0–128'],
    ['10.0.0.0/-1', 'prefix'],
    ['10.0.0.0/8/8', 'prefix'],
    ['10.0.0.0/', 'prefix'],
    ['not-an-ip', 'not an IPv4 or IPv6 address'],
    ['10.0.0', 'not an IPv4 or IPv6 address'],
    ['01.2.3.4', 'not an IPv4 or IPv6 address'],
    ['', 'empty entry'],
    ['fe80::1%eth0', 'zone id'],
    ['::ffff:10.0.0.0/80', 'at least /96'],
  ])('refuses %j, naming the option and the entry', (entry, reason) => {
    let error: unknown;
    try {
      parseCidrList(['10.0.0.0/8', entry], 'BULWARK_IP_ALLOWLIST');
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(Error);
    const message = (error as Error).message;
    expect(message).toContain('BULWARK_IP_ALLOWLIST');
    expect(message).toContain(JSON.stringify(entry));
    expect(message).toContain(reason);
  });
});

describe('resolveClientIp', () => {
  const trusted = list('10.0.0.0/8', '2001:db8:ffff::/48');

  it('answers the socket address when the peer is not a trusted proxy, whatever the headers claim', () => {
    const spoofed = { xForwardedFor: '203.0.113.9', forwarded: 'for=198.51.100.1' };
    expect(resolveClientIp('198.51.100.77', spoofed, trusted)).toBe('198.51.100.77');
    expect(resolveClientIp('198.51.100.77', spoofed, list())).toBe('198.51.100.77');
  });

  it('never reads headers without a trusted proxy configured, even from loopback', () => {
    expect(resolveClientIp('127.0.0.1', { xForwardedFor: '203.0.113.9' }, list())).toBe('127.0.0.1');
  });

  it('takes the address a trusted proxy appended to X-Forwarded-For', () => {
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '203.0.113.9' }, trusted)).toBe('203.0.113.9');
  });

  it('skips several trusted hops from the right', () => {
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '203.0.113.9, 10.1.1.1, 10.2.2.2' }, trusted)).toBe('203.0.113.9');
  });

  it('ignores what the client wrote left of the right-most untrusted address', () => {
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '1.1.1.1, 127.0.0.1, 203.0.113.9, 10.1.1.1' }, trusted)).toBe('203.0.113.9');
  });

  it('answers the left-most hop when every hop is a trusted proxy', () => {
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '10.9.9.9, 10.1.1.1' }, trusted)).toBe('10.9.9.9');
  });

  it('answers the peer when a trusted proxy sends no forwarding header', () => {
    expect(resolveClientIp('10.0.0.2', {}, trusted)).toBe('10.0.0.2');
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '  ' }, trusted)).toBe('10.0.0.2');
  });

  it('stops at the last good address on a malformed hop and never believes it', () => {
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '203.0.113.9, garbage' }, trusted)).toBe('10.0.0.2');
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '203.0.113.9, not-an-ip, 10.1.1.1' }, trusted)).toBe('10.1.1.1');
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '203.0.113.9,,10.1.1.1' }, trusted)).toBe('10.1.1.1');
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '203.0.113.9, 1.2.3.4:80:90' }, trusted)).toBe('10.0.0.2');
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '203.0.113.9, [2001:db8::1' }, trusted)).toBe('10.0.0.2');
  });

  it('strips ports and brackets from hops', () => {
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '203.0.113.9:4711' }, trusted)).toBe('203.0.113.9');
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '[2001:db8::5]:443' }, trusted)).toBe('2001:db8::5');
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '[2001:db8::5]' }, trusted)).toBe('2001:db8::5');
    expect(resolveClientIp('10.0.0.2', { xForwardedFor: '2001:DB8::5' }, trusted)).toBe('2001:db8::5');
  });

  it('normalises a mapped socket address and mapped hops to IPv4', () => {
    expect(resolveClientIp('::ffff:10.0.0.2', { xForwardedFor: '::ffff:203.0.113.9' }, trusted)).toBe('203.0.113.9');
    expect(resolveClientIp('::ffff:198.51.100.1', { xForwardedFor: '203.0.113.9' }, trusted)).toBe('198.51.100.1');
  });

  it('walks IPv6 trusted proxies', () => {
    expect(resolveClientIp('2001:db8:ffff::1', { xForwardedFor: '2001:db8:1::7, 2001:db8:ffff::2' }, trusted)).toBe('2001:db8:1::7');
  });

  it('answers undefined without a usable socket address', () => {
    expect(resolveClientIp(undefined, { xForwardedFor: '203.0.113.9' }, trusted)).toBeUndefined();
    expect(resolveClientIp('', { xForwardedFor: '203.0.113.9' }, trusted)).toBeUndefined();
  });

  describe('RFC 7239 Forwarded', () => {
    it('reads for= among other parameters, case-insensitively', () => {
      expect(resolveClientIp('10.0.0.2', { forwarded: 'for=192.0.2.60;proto=http;by=203.0.113.43' }, trusted)).toBe('192.0.2.60');
      expect(resolveClientIp('10.0.0.2', { forwarded: 'proto=https; For=192.0.2.61' }, trusted)).toBe('192.0.2.61');
    });

    it('reads a quoted IPv6 node with a port', () => {
      expect(resolveClientIp('10.0.0.2', { forwarded: 'for="[2001:db8:cafe::17]:4711"' }, trusted)).toBe('2001:db8:cafe::17');
      expect(resolveClientIp('10.0.0.2', { forwarded: 'for="192.0.2.43:47011"' }, trusted)).toBe('192.0.2.43');
    });

    it('walks several elements, skipping trusted proxies', () => {
      expect(resolveClientIp('10.0.0.2', { forwarded: 'for=192.0.2.43, for=198.51.100.17;by=10.0.0.3, for=10.4.4.4' }, trusted)).toBe('198.51.100.17');
    });

    it('keeps a comma inside a quoted value within its element', () => {
      expect(forwardedForChain('for=192.0.2.1;ext="a,b", for=192.0.2.2')).toEqual(['192.0.2.1', '192.0.2.2']);
    });

    it('stops at "unknown", an obfuscated node, an element without for=, or for= given twice', () => {
      for (const hop of ['for=unknown', 'for=_hidden', 'proto=https', 'for=192.0.2.9;for=192.0.2.10', 'for="192.0.2.9', 'for']) {
        expect(resolveClientIp('10.0.0.2', { forwarded: `for=203.0.113.9, ${hop}` }, trusted), hop).toBe('10.0.0.2');
      }
    });

    it('is preferred over X-Forwarded-For when both are present', () => {
      const headers = { forwarded: 'for=192.0.2.60', xForwardedFor: '203.0.113.9' };
      expect(resolveClientIp('10.0.0.2', headers, trusted)).toBe('192.0.2.60');
      expect(resolveClientIp('10.0.0.2', { forwarded: '', xForwardedFor: '203.0.113.9' }, trusted)).toBe('203.0.113.9');
    });

    it('is ignored when the source is set to x-forwarded-for, and the other way round', () => {
      const headers = { forwarded: 'for=192.0.2.60', xForwardedFor: '203.0.113.9' };
      expect(resolveClientIp('10.0.0.2', headers, trusted, 'x-forwarded-for')).toBe('203.0.113.9');
      expect(resolveClientIp('10.0.0.2', { xForwardedFor: '203.0.113.9' }, trusted, 'forwarded')).toBe('10.0.0.2');
    });
  });
});

describe('keyIpAllowed', () => {
  it('allows every address when the key has no list', () => {
    expect(keyIpAllowed([], '203.0.113.9')).toBe(true);
    expect(keyIpAllowed(null, '203.0.113.9')).toBe(true);
    expect(keyIpAllowed(undefined, undefined)).toBe(true);
  });

  it('allows addresses inside the key’s CIDRs and refuses the rest', () => {
    const cidrs = ['203.0.113.0/24', '2001:db8::/32'];
    expect(keyIpAllowed(cidrs, '203.0.113.9')).toBe(true);
    expect(keyIpAllowed(cidrs, '::ffff:203.0.113.9')).toBe(true);
    expect(keyIpAllowed(cidrs, '2001:db8::42')).toBe(true);
    expect(keyIpAllowed(cidrs, '198.51.100.1')).toBe(false);
    expect(keyIpAllowed(cidrs, undefined)).toBe(false);
  });

  it('fails closed on a corrupt entry instead of throwing', () => {
    expect(keyIpAllowed(['garbage'], '203.0.113.9')).toBe(false);
    expect(keyIpAllowed(['garbage', '203.0.113.0/24'], '203.0.113.9')).toBe(true);
  });
});

function recorder() {
  const events: AuditEventInput[] = [];
  return { events, audit: (event: AuditEventInput) => void events.push(event) };
}

/** A stand-in for `clientAddress` in process, where there is no socket. */
function asClient(ip: string | undefined): MiddlewareHandler<TestEnv> {
  return async (c, next) => {
    c.set('clientIp', ip);
    await next();
  };
}

// `any`: each middleware declares only the variables it uses, as app.use allows.
function testApp(...middleware: MiddlewareHandler<any>[]): Hono<TestEnv> {
  const app = new Hono<TestEnv>();
  app.onError(errorHandler(() => {}));
  app.use('*', requestId());
  for (const m of middleware) app.use('*', m);
  app.all('*', (c) => c.json({ ip: c.get('clientIp') ?? null }));
  return app;
}

describe('ipAllowlist in process', () => {
  it('lets everyone in with an empty list, even without an address', async () => {
    const { events, audit } = recorder();
    const app = testApp(ipAllowlist({ allow: [], audit, listener: 'public' }));
    expect((await app.request('/anything')).status).toBe(200);
    expect(events).toEqual([]);
  });

  it('lets in an address inside the list', async () => {
    const { events, audit } = recorder();
    const app = testApp(asClient('203.0.113.9'), ipAllowlist({ allow: ['203.0.113.0/24'], audit, listener: 'public' }));
    expect((await app.request('/v1/models')).status).toBe(200);
    expect(events).toEqual([]);
  });

  it('refuses an address outside the list with 403 ip_not_allowed in the envelope and audits it', async () => {
    const { events, audit } = recorder();
    const app = testApp(asClient('198.51.100.1'), ipAllowlist({ allow: ['203.0.113.0/24'], audit, listener: 'admin' }));
    const response = await app.request('/admin/keys?x=1', { method: 'POST', headers: { 'user-agent': 'curl/8' } });
    expect(response.status).toBe(403);
    const body = (await response.json()) as { error: { code: string; message: string; requestId: string } };
    expect(body.error.code).toBe('ip_not_allowed');
    expect(body.error.message).toBe('Requests from 198.51.100.1 are not allowed on this listener.');
    expect(body.error.requestId).toBe(response.headers.get('x-request-id'));
    expect(events).toEqual([
      {
        type: 'http.ip_refused',
        outcome: 'denied',
        ip: '198.51.100.1',
        userAgent: 'curl/8',
        method: 'POST',
        path: '/admin/keys',
        requestId: body.error.requestId,
        details: { listener: 'admin' },
      },
    ]);
  });

  it('refuses a request with no address at all when the list is not empty', async () => {
    const { events, audit } = recorder();
    const app = testApp(ipAllowlist({ allow: ['0.0.0.0/0', '::/0'], audit, listener: 'public' }));
    const response = await app.request('/');
    expect(response.status).toBe(403);
    expect(((await response.json()) as { error: { message: string } }).error.message).toBe('Requests from an unknown address are not allowed on this listener.');
    expect(events).toHaveLength(1);
    expect(events[0]?.ip).toBeNull();
  });

  it('refuses to build with an invalid CIDR, naming the option and the value', () => {
    expect(() => ipAllowlist({ allow: ['10.0.0.0/8', '10.0.0.300'], audit: () => {}, listener: 'public' })).toThrow(/allow: "10\.0\.0\.300"/);
  });

  it('refuses to build with an unknown listener or without audit', () => {
    expect(() => ipAllowlist({ allow: [], audit: () => {}, listener: 'both' as 'public' })).toThrow(/listener/);
    expect(() => ipAllowlist({ allow: [], audit: undefined as never, listener: 'public' })).toThrow(/audit/);
  });
});

describe('clientAddress', () => {
  it('refuses to build with an invalid trusted proxy, naming the option and the value', () => {
    expect(() => clientAddress({ trustedProxies: ['10.0.0.0/8', '10.0.0.0/40'] })).toThrow(/trustedProxies: "10\.0\.0\.0\/40"/);
    expect(() => clientAddress({ source: 'x-real-ip' as 'forwarded' })).toThrow(/source/);
  });

  it('fits the app’s own environment', () => {
    // Compile-time check: both middleware go on the app's Hono<BulwarkEnv> as they are.
    const app = new Hono<BulwarkEnv>();
    app.use('*', clientAddress({ trustedProxies: ['127.0.0.1'] }));
    app.use('*', ipAllowlist({ allow: [], audit: () => {}, listener: 'public' }));
    expect(app.routes.length).toBe(2);
  });
});

describe('through a real listener', () => {
  let server: ServerType | undefined;
  afterEach(async () => {
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    server = undefined;
  });

  async function listen(app: Hono<TestEnv>): Promise<string> {
    server = await new Promise<ServerType>((resolve) => {
      const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
    });
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  it('takes the socket address and ignores a spoofed X-Forwarded-For from an untrusted peer', async () => {
    const base = await listen(testApp(clientAddress({ trustedProxies: [] })));
    const response = await fetch(`${base}/`, { headers: { 'x-forwarded-for': '203.0.113.9', forwarded: 'for=203.0.113.10' } });
    expect(await response.json()).toEqual({ ip: '127.0.0.1' });
  });

  it('believes X-Forwarded-For from a trusted proxy', async () => {
    const base = await listen(testApp(clientAddress({ trustedProxies: ['127.0.0.0/8'] })));
    const response = await fetch(`${base}/`, { headers: { 'x-forwarded-for': '198.51.100.1, 203.0.113.9' } });
    expect(await response.json()).toEqual({ ip: '203.0.113.9' });
  });

  it('refuses a client outside the allow-list by its socket address, spoofed headers notwithstanding', async () => {
    const { events, audit } = recorder();
    const base = await listen(testApp(clientAddress({ trustedProxies: [] }), ipAllowlist({ allow: ['203.0.113.0/24'], audit, listener: 'public' })));
    const response = await fetch(`${base}/mcp`, { headers: { 'x-forwarded-for': '203.0.113.9' } });
    expect(response.status).toBe(403);
    expect(((await response.json()) as { error: { message: string } }).error.message).toBe('Requests from 127.0.0.1 are not allowed on this listener.');
    expect(events.map((e) => [e.type, e.ip, e.path, e.details])).toEqual([['http.ip_refused', '127.0.0.1', '/mcp', { listener: 'public' }]]);
  });

  it('lets in a client behind a trusted proxy by its forwarded address, and refuses another', async () => {
    const { events, audit } = recorder();
    const base = await listen(
      testApp(clientAddress({ trustedProxies: ['127.0.0.1'], source: 'forwarded' }), ipAllowlist({ allow: ['203.0.113.0/24'], audit, listener: 'public' })),
    );
    const inside = await fetch(`${base}/`, { headers: { forwarded: 'for=203.0.113.9;proto=https' } });
    expect(inside.status).toBe(200);
    const outside = await fetch(`${base}/`, { headers: { forwarded: 'for=198.51.100.1' } });
    expect(outside.status).toBe(403);
    expect(events.map((e) => e.ip)).toEqual(['198.51.100.1']);
  });

  it('falls back to the socket address when clientAddress did not run', async () => {
    const { audit } = recorder();
    const allowed = await listen(testApp(ipAllowlist({ allow: ['127.0.0.1'], audit, listener: 'admin' })));
    expect((await fetch(`${allowed}/`)).status).toBe(200);
  });
});
