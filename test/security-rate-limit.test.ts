/**
 * Rate limiting and brute-force lockout (src/security/lockout.ts, ip-rate-limit.ts, principal-rate-limit.ts) on both back ends
 * (src/security/rate-limiter.ts): per key, per tenant, per route and per address, the
 * RateLimit headers, the lockout and its doubling, audit events, and — against the real Redis
 * on loopback — shared counts across instances, the in-memory fallback and a clean close.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { ServerResponse } from 'node:http';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { serve } from '@hono/node-server';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { Hono, type Context, type MiddlewareHandler } from 'hono';
import { createClient } from 'redis';
import { afterAll, describe, expect, it } from 'vitest';
import type { AuditEventInput } from '../src/audit/log.js';
import type { Principal } from '../src/auth/principal.js';
import type { BulwarkEnv } from '../src/http/context.js';
import { ApiError, errorHandler } from '../src/http/errors.js';
import { ROOT } from './helpers/process.js';
import { freePort } from './helpers/private-postgres.js';
import { ipRateLimit } from '../src/security/ip-rate-limit.js';
import { type AuthFailureTracker, type LockoutOptions, authFailureTracker, lockSecondsFor } from '../src/security/lockout.js';
import { type PrincipalRateLimitOptions, principalRateLimit } from '../src/security/principal-rate-limit.js';
import { addressKey } from '../src/security/rate-limit.js';
import { MemoryRateLimiter, type RateLimiter, createRateLimiter } from '../src/security/rate-limiter.js';

const REDIS_URL = process.env.BULWARK_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
/** Every Redis key this run writes starts with this; removed in afterAll. */
const RUN_PREFIX = `bulwark-test:${randomUUID()}`;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function recorder() {
  const events: AuditEventInput[] = [];
  return { events, audit: (event: AuditEventInput) => void events.push(event), of: (type: string) => events.filter((e) => e.type === type) };
}

function principalFor(keyId: string, tenant: string): Principal {
  return { kind: 'key', tenant, keyId, keyName: keyId, scopes: ['read', 'write'], expiresAt: null };
}

/** Stands in for `authenticate`: the principal is named by test headers. */
const fakePrincipal: MiddlewareHandler<BulwarkEnv> = async (c, next) => {
  c.set('principal', principalFor(c.req.header('x-key') ?? 'key-1', c.req.header('x-tenant') ?? 'tenant-1'));
  await next();
};

function baseApp(): Hono<BulwarkEnv> {
  const app = new Hono<BulwarkEnv>();
  app.onError(errorHandler((err) => console.error(err)));
  return app;
}

function postAuthApp(options: Partial<PrincipalRateLimitOptions> & { limiter: RateLimiter }) {
  const { events, audit, of } = recorder();
  const app = baseApp();
  app.use('*', fakePrincipal);
  app.use('*', principalRateLimit({ audit, ...options }));
  app.all('*', (c) => c.text('ok'));
  return { app, events, of };
}

const as = (key: string, tenant = 'tenant-1', method = 'GET') => ({ method, headers: { 'x-key': key, 'x-tenant': tenant } });

async function errorCode(response: Response): Promise<string> {
  return ((await response.json()) as { error: { code: string } }).error.code;
}

async function repeat(times: number, send: () => Response | Promise<Response>): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < times; i++) statuses.push((await send()).status);
  return statuses;
}

describe('principalRateLimit', () => {
  it('refuses the 101st read request in a minute for one key with 429, Retry-After and RateLimit headers', async () => {
    const { app } = postAuthApp({ limiter: new MemoryRateLimiter() });
    expect(new Set(await repeat(100, () => app.request('/api/things', as('key-1'))))).toEqual(new Set([200]));
    const refused = await app.request('/api/things', as('key-1'));
    expect(refused.status).toBe(429);
    expect(await errorCode(refused)).toBe('rate_limited');
    const retryAfter = Number(refused.headers.get('retry-after'));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(refused.headers.get('ratelimit-limit')).toBe('100');
    expect(refused.headers.get('ratelimit-remaining')).toBe('0');
    expect(refused.headers.get('ratelimit-reset')).toBe(String(retryAfter));
    // Another key is counted apart.
    expect((await app.request('/api/things', as('key-2'))).status).toBe(200);
  });

  it('limits writes to 50 a minute per key, counted apart from reads', async () => {
    const { app } = postAuthApp({ limiter: new MemoryRateLimiter() });
    expect(new Set(await repeat(50, () => app.request('/api/things', as('key-1', 'tenant-1', 'POST'))))).toEqual(new Set([200]));
    const refused = await app.request('/api/things', as('key-1', 'tenant-1', 'POST'));
    expect(refused.status).toBe(429);
    expect(refused.headers.get('ratelimit-limit')).toBe('50');
    expect((await app.request('/api/things', as('key-1'))).status).toBe(200);
  });

  it('puts the RateLimit headers of the tightest limit on allowed responses', async () => {
    const { app } = postAuthApp({ limiter: new MemoryRateLimiter(), rules: { key: {}, tenant: { read: 5 } } });
    const first = await app.request('/api/things', as('key-1'));
    expect(first.status).toBe(200);
    expect(first.headers.get('ratelimit-limit')).toBe('5');
    expect(first.headers.get('ratelimit-remaining')).toBe('4');
    const reset = Number(first.headers.get('ratelimit-reset'));
    expect(reset).toBeGreaterThanOrEqual(1);
    expect(reset).toBeLessThanOrEqual(60);

    const { app: keyOnly } = postAuthApp({ limiter: new MemoryRateLimiter() });
    const response = await keyOnly.request('/api/things', as('key-1'));
    expect(response.headers.get('ratelimit-limit')).toBe('100');
    expect(response.headers.get('ratelimit-remaining')).toBe('99');
  });

  it('limits a tenant across all of its keys, and no other tenant', async () => {
    const { app } = postAuthApp({ limiter: new MemoryRateLimiter(), rules: { tenant: { read: 3 } } });
    expect(await repeat(2, () => app.request('/x', as('key-a', 'acme')))).toEqual([200, 200]);
    expect((await app.request('/x', as('key-b', 'acme'))).status).toBe(200);
    const refused = await app.request('/x', as('key-b', 'acme'));
    expect(refused.status).toBe(429);
    expect(refused.headers.get('ratelimit-limit')).toBe('3');
    expect(((await refused.json()) as { error: { message: string } }).error.message).toMatch(/tenant/);
    expect((await app.request('/x', as('key-c', 'globex'))).status).toBe(200);
  });

  it('limits a route prefix per key, matching whole path segments only', async () => {
    const { app } = postAuthApp({ limiter: new MemoryRateLimiter(), rules: { routes: [{ prefix: '/api/message/', perMinute: 2 }] } });
    expect(await repeat(2, () => app.request('/api/message', as('key-1', 'tenant-1', 'POST')))).toEqual([200, 200]);
    const refused = await app.request('/api/message/stream', as('key-1', 'tenant-1', 'POST'));
    expect(refused.status).toBe(429);
    expect(refused.headers.get('ratelimit-limit')).toBe('2');
    // Not the same route: only the key's write limit applies.
    const other = await app.request('/api/messages', as('key-1', 'tenant-1', 'POST'));
    expect(other.status).toBe(200);
    expect(other.headers.get('ratelimit-limit')).toBe('50');
    expect((await app.request('/api/message', as('key-2', 'tenant-1', 'POST'))).status).toBe(200);
  });

  it('leaves the llm class and unknown classes unlimited by default, without headers', async () => {
    const classify = (c: Context<BulwarkEnv>) => (c.req.path.startsWith('/v1/') ? 'llm' : 'custom');
    const { app } = postAuthApp({ limiter: new MemoryRateLimiter(), classify });
    expect(new Set(await repeat(120, () => app.request('/v1/messages', as('key-1', 'tenant-1', 'POST'))))).toEqual(new Set([200]));
    const response = await app.request('/other', as('key-1'));
    expect(response.status).toBe(200);
    expect(response.headers.get('ratelimit-limit')).toBeNull();
  });

  it('audits the request that crossed the limit, once per window, with the limit and the key', async () => {
    const { app, of } = postAuthApp({ limiter: new MemoryRateLimiter(), rules: { key: { read: 2 } }, clientIp: () => '203.0.113.9' });
    expect(await repeat(4, () => app.request('/api/things', as('key-1')))).toEqual([200, 200, 429, 429]);
    const events = of('rate_limit.exceeded');
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({
      outcome: 'denied',
      keyId: 'key-1',
      tenantId: 'tenant-1',
      ip: '203.0.113.9',
      path: '/api/things',
      details: { limit: 'key', rule: 'key:read', class: 'read', perMinute: 2 },
    });
  });

  it('sets the headers on the Node response before the handler, for responses written straight to the socket', async () => {
    const app = baseApp();
    app.use('*', fakePrincipal);
    app.use('*', principalRateLimit({ limiter: new MemoryRateLimiter(), audit: () => {}, rules: { key: { write: 7 } } }));
    // As the LLM proxy does: writeHead on the ServerResponse, then tell Hono it is sent.
    app.post('/v1/messages', (c) => {
      const outgoing = (c.env as { outgoing: ServerResponse }).outgoing;
      outgoing.writeHead(200, { 'content-type': 'text/plain' });
      outgoing.end('streamed');
      return RESPONSE_ALREADY_SENT;
    });
    const server = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0 });
    try {
      await new Promise<void>((resolve) => (server.listening ? resolve() : server.once('listening', () => resolve())));
      const { port } = server.address() as AddressInfo;
      const response = await fetch(`http://127.0.0.1:${port}/v1/messages`, { method: 'POST' });
      expect(await response.text()).toBe('streamed');
      expect(response.headers.get('ratelimit-limit')).toBe('7');
      expect(response.headers.get('ratelimit-remaining')).toBe('6');
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('takes an undefined class limit as the default for keys and as unlimited for tenants (the config shape)', async () => {
    const { app } = postAuthApp({ limiter: new MemoryRateLimiter(), rules: { key: { read: undefined, llm: undefined }, tenant: { read: undefined } } });
    expect((await app.request('/x', as('key-1'))).headers.get('ratelimit-limit')).toBe('100');
  });

  it('refuses to build with a bad rule, naming the option', () => {
    const limiter = new MemoryRateLimiter();
    expect(() => principalRateLimit({ limiter, audit: () => {}, rules: { key: { read: 0 } } })).toThrow(/rules\.key\.read/);
    expect(() => principalRateLimit({ limiter, audit: () => {}, rules: { routes: [{ prefix: 'api', perMinute: 1 }] } })).toThrow(/rules\.routes\[0\]\.prefix/);
  });
});

const VALID_KEY = 'valid-key';

/** Stands in for `authenticate`: one valid key; every other credential is a failure reported to the tracker. */
function fakeAuthenticate(tracker: AuthFailureTracker, clientIp: (c: Context) => string | undefined): MiddlewareHandler<BulwarkEnv> {
  return async (c, next) => {
    if (c.req.header('authorization') !== `Bearer ${VALID_KEY}`) {
      await tracker.recordFailure(clientIp(c), c);
      throw new ApiError('unauthorized', 'Invalid API key.');
    }
    c.set('principal', principalFor('key-1', 'tenant-1'));
    await next();
  };
}

function preAuthApp(options: { limiter?: RateLimiter; perMinute?: number; lockout?: LockoutOptions } = {}) {
  const { limiter = new MemoryRateLimiter(), perMinute, lockout } = options;
  const { events, audit, of } = recorder();
  const clientIp = (c: Context) => c.req.header('x-test-ip');
  const tracker = authFailureTracker({ limiter, audit, ...lockout });
  const app = baseApp();
  app.use('*', ipRateLimit({ limiter, audit, clientIp, lockout: tracker, ...(perMinute ? { perMinute } : {}) }));
  app.use('*', fakeAuthenticate(tracker, clientIp));
  app.all('*', (c) => c.text('ok'));
  return { app, events, of };
}

const from = (ip: string, key = 'wrong-key') => ({ headers: { 'x-test-ip': ip, authorization: `Bearer ${key}` } });

describe('ipRateLimit and the brute-force lockout', () => {
  it('locks an address out after 10 failed keys: the 11th gets 429 locked_out, even with a valid key; other addresses are unaffected', async () => {
    const { app, of } = preAuthApp();
    expect(new Set(await repeat(10, () => app.request('/', from('198.51.100.1'))))).toEqual(new Set([401]));
    const eleventh = await app.request('/', from('198.51.100.1'));
    expect(eleventh.status).toBe(429);
    expect(await errorCode(eleventh)).toBe('locked_out');
    expect(Number(eleventh.headers.get('retry-after'))).toBe(300);

    const valid = await app.request('/', from('198.51.100.1', VALID_KEY));
    expect(valid.status).toBe(429);
    expect(await errorCode(valid)).toBe('locked_out');
    expect((await app.request('/', from('198.51.100.2', VALID_KEY))).status).toBe(200);
    expect((await app.request('/', from('198.51.100.2'))).status).toBe(401);

    const lockouts = of('auth.lockout');
    expect(lockouts).toHaveLength(1);
    expect(lockouts[0]).toMatchObject({ outcome: 'denied', ip: '198.51.100.1', path: '/', details: { failures: 10, lockSeconds: 300, repeat: 1 } });
  });

  it('does not forget failures when a valid key succeeds in between', async () => {
    const { app } = preAuthApp();
    await repeat(9, () => app.request('/', from('198.51.100.3')));
    expect((await app.request('/', from('198.51.100.3', VALID_KEY))).status).toBe(200);
    expect((await app.request('/', from('198.51.100.3'))).status).toBe(401);
    expect(await errorCode(await app.request('/', from('198.51.100.3', VALID_KEY)))).toBe('locked_out');
  });

  it('doubles the lockout when an address is locked out again', async () => {
    const { app, of } = preAuthApp({ lockout: { failures: 2, windowSeconds: 60, lockSeconds: 1, maxLockSeconds: 60 } });
    await repeat(2, () => app.request('/', from('198.51.100.4')));
    const first = await app.request('/', from('198.51.100.4', VALID_KEY));
    expect(first.status).toBe(429);
    expect(first.headers.get('retry-after')).toBe('1');

    await sleep(1_100);
    // Lock over; the count started afresh, so one failure does not lock again.
    expect((await app.request('/', from('198.51.100.4'))).status).toBe(401);
    expect((await app.request('/', from('198.51.100.4', VALID_KEY))).status).toBe(200);
    expect((await app.request('/', from('198.51.100.4'))).status).toBe(401);
    const second = await app.request('/', from('198.51.100.4', VALID_KEY));
    expect(await errorCode(second)).toBe('locked_out');
    expect(second.headers.get('retry-after')).toBe('2');

    expect(of('auth.lockout').map((e) => e.details)).toEqual([
      { failures: 2, windowSeconds: 60, lockSeconds: 1, repeat: 1 },
      { failures: 2, windowSeconds: 60, lockSeconds: 2, repeat: 2 },
    ]);
  });

  it('counts an IPv6 /64 as one address, so rotating through a subscriber network gains nothing', async () => {
    const { app, of } = preAuthApp({ lockout: { failures: 3 } });
    for (const ip of ['2001:db8:1:2::1', '2001:db8:1:2:aaaa::9', '2001:0DB8:1:2:ffff:ffff:ffff:ffff']) {
      expect((await app.request('/', from(ip))).status).toBe(401);
    }
    expect(await errorCode(await app.request('/', from('2001:db8:1:2::77', VALID_KEY)))).toBe('locked_out');
    expect((await app.request('/', from('2001:db8:1:3::1', VALID_KEY))).status).toBe(200);
    expect(of('auth.lockout')[0]?.details).toMatchObject({ network: '2001:db8:1:2::/64' });
  });

  it('keys IPv4 addresses as they are and IPv6 addresses by their /64', () => {
    expect(addressKey('203.0.113.5')).toBe('203.0.113.5');
    expect(addressKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressKey('2001:DB8:0001:0002:3:4:5:6')).toBe('2001:db8:1:2::/64');
    expect(addressKey('::1')).toBe('0:0:0:0::/64');
    expect(addressKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(addressKey('2001:db8:1::192.0.2.1')).toBe('2001:db8:1:0::/64');
    expect(addressKey('not-an-address')).toBe('not-an-address');
  });

  it('computes lockouts as lockSeconds doubled per repeat, capped at maxLockSeconds', () => {
    expect([1, 2, 3, 4].map((n) => lockSecondsFor(n, 300, 86_400))).toEqual([300, 600, 1_200, 2_400]);
    expect(lockSecondsFor(10, 300, 86_400)).toBe(86_400);
    expect(lockSecondsFor(5_000, 300, 86_400)).toBe(86_400);
  });

  it('limits requests per address before authentication, and audits the first refusal', async () => {
    const { app, of } = preAuthApp({ perMinute: 3 });
    expect(await repeat(3, () => app.request('/', from('198.51.100.5', VALID_KEY)))).toEqual([200, 200, 200]);
    const refused = await app.request('/', from('198.51.100.5', VALID_KEY));
    expect(refused.status).toBe(429);
    expect(await errorCode(refused)).toBe('rate_limited');
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(refused.headers.get('ratelimit-limit')).toBe('3');
    expect((await app.request('/', from('198.51.100.5', VALID_KEY))).status).toBe(429);
    expect((await app.request('/', from('198.51.100.6', VALID_KEY))).status).toBe(200);
    expect(of('rate_limit.exceeded')).toEqual([expect.objectContaining({ ip: '198.51.100.5', details: { limit: 'ip', rule: 'ip', perMinute: 3 } })]);
  });

  it('refuses to build without a lockout or with a bad threshold, naming the option', () => {
    const limiter = new MemoryRateLimiter();
    const audit = () => {};
    expect(() => ipRateLimit({ limiter, audit, clientIp: () => undefined } as never)).toThrow(/lockout/);
    expect(() => authFailureTracker({ limiter, audit, failures: 0 })).toThrow(/failures/);
    expect(() => authFailureTracker({ limiter, audit, lockSeconds: 600, maxLockSeconds: 300 })).toThrow(/maxLockSeconds/);
  });
});

/**
 * Runs `script` in a fresh Node process and resolves with its exit code and output. A process
 * exits by itself only when nothing (socket, timer) is left open; the kill is a safety net.
 */
function runIsolated(script: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    child.on('error', reject);
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

/**
 * A client connected to the Redis at `url` once it accepts connections (a server just spawned
 * takes a moment to listen). Fails as soon as `exit` resolves: a server that has gone (its port
 * taken, say) will never answer, and whatever holds its port may never answer either.
 */
async function connectedClient(url: string, exit: Promise<void>) {
  const exitedError = () => new Error(`the Redis for ${url} exited before it answered`);
  let exited = false;
  const gone = exit.then(() => {
    exited = true;
    throw exitedError();
  });
  gone.catch(() => {});
  for (let attempt = 0; attempt < 50 && !exited; attempt++) {
    const client = createClient({ url, socket: { connectTimeout: 500, reconnectStrategy: false } });
    client.on('error', () => {});
    try {
      await Promise.race([client.connect().then(() => client.ping()), gone]);
      return client;
    } catch {
      if (client.isOpen) client.destroy();
      await sleep(100);
    }
  }
  throw exited ? exitedError() : new Error(`the Redis for ${url} did not answer within 5 s`);
}

describe('Redis back end (real Redis on loopback)', () => {
  afterAll(async () => {
    const client = createClient({ url: REDIS_URL });
    await client.connect();
    for await (const keys of client.scanIterator({ MATCH: `${RUN_PREFIX}*`, COUNT: 100 })) if (keys.length) await client.del(keys);
    await client.close();
  });

  it('shares counts across two instances with their own connections, so a limit holds across them', async () => {
    const prefix = `${RUN_PREFIX}:shared`;
    const fallbacks: unknown[] = [];
    const a = await createRateLimiter({ redisUrl: REDIS_URL, prefix, onFallback: (err) => fallbacks.push(err) });
    const b = await createRateLimiter({ redisUrl: REDIS_URL, prefix, onFallback: (err) => fallbacks.push(err) });
    try {
      expect([a.backend, b.backend]).toEqual(['redis', 'redis']);
      const rules = { key: { read: 3 } };
      const first = postAuthApp({ limiter: a.limiter, rules });
      const second = postAuthApp({ limiter: b.limiter, rules });
      expect(await repeat(2, () => first.app.request('/x', as('key-1')))).toEqual([200, 200]);
      const third = await second.app.request('/x', as('key-1'));
      expect(third.status).toBe(200);
      expect(third.headers.get('ratelimit-remaining')).toBe('0');
      expect((await second.app.request('/x', as('key-1'))).status).toBe(429);
      expect((await first.app.request('/x', as('key-1'))).status).toBe(429);
      // Exactly one of the two instances saw the crossing, so one audit event in all.
      expect([...first.of('rate_limit.exceeded'), ...second.of('rate_limit.exceeded')]).toHaveLength(1);

      // A lockout begun on one instance is enforced by the other.
      const lockout = { failures: 2, windowSeconds: 60, lockSeconds: 60, maxLockSeconds: 60 };
      const one = preAuthApp({ limiter: a.limiter, lockout });
      const other = preAuthApp({ limiter: b.limiter, lockout });
      expect((await one.app.request('/', from('192.0.2.7'))).status).toBe(401);
      expect((await other.app.request('/', from('192.0.2.7'))).status).toBe(401);
      expect(await errorCode(await one.app.request('/', from('192.0.2.7', VALID_KEY)))).toBe('locked_out');
      expect(fallbacks).toEqual([]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('keeps limiting in memory and reports the fallback while Redis is unreachable', async () => {
    const fallbacks: unknown[] = [];
    const runtime = await createRateLimiter({ redisUrl: 'redis://127.0.0.1:1', prefix: `${RUN_PREFIX}:down`, connectTimeoutMs: 200, onFallback: (err) => fallbacks.push(err) });
    try {
      const { app } = postAuthApp({ limiter: runtime.limiter, rules: { key: { read: 2 } } });
      expect(await repeat(3, () => app.request('/x', as('key-1')))).toEqual([200, 200, 429]);
      expect(fallbacks.length).toBeGreaterThanOrEqual(3);
      expect(fallbacks[0]).toBeInstanceOf(Error);
    } finally {
      await runtime.close();
    }
  });

  it('keeps enforcing a lockout it has seen when its Redis goes away', async () => {
    // A Redis of this test's own, so it can really be stopped.
    const port = await freePort();
    const url = `redis://127.0.0.1:${port}`;
    const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    // Listening at once: a server that cannot bind (its port taken since) exits within milliseconds.
    let exited = false;
    const exit = new Promise<void>((resolve) => {
      const done = () => {
        exited = true;
        resolve();
      };
      server.once('exit', done);
      server.once('error', done);
    });
    const prefix = `${RUN_PREFIX}:outage`;
    let probe: Awaited<ReturnType<typeof connectedClient>> | undefined;
    try {
      probe = await connectedClient(url, exit);
      const fallbacks: unknown[] = [];
      const runtime = await createRateLimiter({ redisUrl: url, prefix, connectTimeoutMs: 500, commandTimeoutMs: 300, onFallback: (err) => fallbacks.push(err) });
      try {
        const tracker = authFailureTracker({ limiter: runtime.limiter, audit: () => {}, failures: 2 });
        await tracker.recordFailure('198.51.100.7');
        await tracker.recordFailure('198.51.100.7');
        expect(await tracker.lockedForMs('198.51.100.7')).toBeGreaterThan(200_000);
        // The lock is in this Redis, not in the fallback: otherwise the outage below tests nothing.
        expect(fallbacks).toEqual([]);
        expect((await probe.keys(`${prefix}:*`)).length).toBeGreaterThan(0);
        await probe.close();
        server.kill('SIGKILL');
        await exit;
        // The shared store is gone and the in-memory fallback never saw this lock; it still holds.
        expect(await tracker.lockedForMs('198.51.100.7')).toBeGreaterThan(200_000);
        expect(await tracker.lockedForMs('198.51.100.8')).toBe(0);
        expect(fallbacks.length).toBeGreaterThan(0);
      } finally {
        await runtime.close();
      }
    } finally {
      if (probe?.isOpen) probe.destroy();
      if (!exited) server.kill('SIGKILL');
    }
  });

  it('leaves nothing open once closed, connected or still reconnecting', async () => {
    const module = pathToFileURL(path.join(ROOT, 'src/security/rate-limiter.ts')).href;
    const rule = JSON.stringify({ name: 'close-test', points: 5, durationSeconds: 2 });
    const { code, output } = await runIsolated(`
      const { createRateLimiter } = await import(${JSON.stringify(module)});
      const up = await createRateLimiter({ redisUrl: ${JSON.stringify(REDIS_URL)}, prefix: ${JSON.stringify(`${RUN_PREFIX}:close`)} });
      const down = await createRateLimiter({ redisUrl: 'redis://127.0.0.1:1', prefix: 'unused', connectTimeoutMs: 100 });
      for (const { limiter } of [up, down]) await limiter.consume('k', ${rule});
      await up.close();
      await down.close();
      console.log('closed');
    `);
    // Without close() the reconnecting client keeps the process alive until it is killed.
    expect({ code, output: output.trim() }).toEqual({ code: 0, output: 'closed' });
  });
});
