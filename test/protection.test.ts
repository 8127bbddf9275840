/**
 * The protection layers as assembled in src/http/app.ts, on real listeners: what a client on the
 * wire sees. Each module's own cases are in test/security-*.test.ts; these check the order and
 * the wiring, and the cross-process limits with the real Redis.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POSTGRES_URL, dropSchema } from './helpers/database.js';
import { type ServerProcess, runCli, startServe } from './helpers/process.js';
import { OPERATOR, type TestBulwark, startTestBulwark } from './helpers/runtime.js';
import { type StandIn, startAnthropicStandIn } from './stand-in/anthropic.js';

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** node:http, so Host and chunked bodies go on the wire exactly as written. */
function send(url: string, options: { method?: string; path: string; headers?: Record<string, string>; body?: Buffer; chunked?: boolean }): Promise<RawResponse> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    // A fresh connection each time: one the server closed after refusing a body is not reused.
    const req = httpRequest({ hostname, port, method: options.method ?? 'GET', path: options.path, headers: options.headers ?? {}, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    if (options.body && options.chunked) {
      // Two writes without Content-Length: Node sends Transfer-Encoding: chunked.
      const half = Math.floor(options.body.length / 2);
      req.write(options.body.subarray(0, half));
      req.end(options.body.subarray(half));
    } else {
      req.end(options.body);
    }
  });
}

const code = (response: RawResponse) => (JSON.parse(response.body) as { error: { code: string } }).error.code;

describe('the protection layers on a real listener', () => {
  let b: TestBulwark;
  let upstream: StandIn;
  let admin: string;
  let reader: string;

  beforeAll(async () => {
    upstream = await startAnthropicStandIn();
    b = await startTestBulwark('pglite', { BULWARK_UPSTREAM_URL: upstream.url, BULWARK_CORS_ORIGINS: 'https://app.example' }, { listen: true });
    const apiKey = `sk-ant-api03-${randomBytes(24).toString('base64url')}`;
    upstream.apiKeys.add(apiKey);
    await b.runtime.storedCredentials.set('default', { type: 'api_key', apiKey });
    admin = (await b.createKey(['admin'])).key;
    reader = (await b.createKey(['read'])).key;
  });

  afterAll(async () => {
    await b?.close();
    await upstream?.close();
  });

  it('puts the security headers on proxied answers too, and none of the upstream ones that would override them', async () => {
    const response = await fetch(`${b.publicUrl}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': admin, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
      body: JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get('x-content-type-options')).toBe('nosniff');
    expect(response.headers.get('content-security-policy')).toContain("default-src 'none'");
    expect(response.headers.get('cache-control')).toBe('no-store');
    expect(response.headers.get('server')).toBeNull();
    expect(response.headers.get('strict-transport-security')).toBeNull(); // plain HTTP, BULWARK_HSTS unset
  });

  it('refuses a DNS-rebound Host with 421 on both listeners, and still answers /health for load balancers', async () => {
    const rebound = { host: 'rebound.attacker.test', authorization: `Bearer ${admin}` };
    const publicAnswer = await send(b.publicUrl, { path: '/api/whoami', headers: rebound });
    expect(publicAnswer.status).toBe(421);
    expect(code(publicAnswer)).toBe('host_not_allowed');
    expect((await send(b.adminUrl, { path: '/api/keys', headers: rebound })).status).toBe(421);
    expect((await send(b.publicUrl, { path: '/health', headers: { host: '10.1.2.3:3000' } })).status).toBe(200);
  });

  it('refuses a foreign Origin on a credentialed request, and lets the listed one through with CORS headers', async () => {
    const foreign = await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${reader}`, origin: 'https://attacker.test' } });
    expect(foreign.status).toBe(403);
    expect((await foreign.json()) as unknown).toMatchObject({ error: { code: 'origin_not_allowed' } });
    const listed = await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${reader}`, origin: 'https://app.example' } });
    expect(listed.status).toBe(200);
    expect(listed.headers.get('access-control-allow-origin')).toBe('https://app.example');
    expect(listed.headers.get('vary')).toContain('Origin');
  });

  it('answers a preflight from the listed origin and refuses one from another', async () => {
    const preflight = (origin: string) =>
      fetch(`${b.publicUrl}/v1/messages`, {
        method: 'OPTIONS',
        headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'x-api-key, anthropic-version, content-type' },
      });
    const allowed = await preflight('https://app.example');
    expect(allowed.status).toBe(204);
    expect(allowed.headers.get('access-control-allow-origin')).toBe('https://app.example');
    expect(allowed.headers.get('access-control-allow-headers')?.toLowerCase()).toContain('x-api-key');
    const refused = await preflight('https://attacker.test');
    expect(refused.status).toBe(403);
    expect(refused.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('refuses a 3 MB body on a 2 MB route with 413, with and without Content-Length, and takes it on /v1/messages', async () => {
    const big = Buffer.alloc(3 * 1024 * 1024, 0x20);
    const headers = { authorization: `Bearer ${admin}`, 'content-type': 'application/json' };
    const declared = await send(b.publicUrl, { method: 'POST', path: '/auth/token', headers: { ...headers, 'content-length': String(big.length) }, body: big });
    expect(declared.status).toBe(413);
    expect(code(declared)).toBe('payload_too_large');
    const chunked = await send(b.publicUrl, { method: 'POST', path: '/auth/token', headers, body: big, chunked: true });
    expect(chunked.status).toBe(413);
    // The LLM route's own limit (32 MB) applies there: the body reaches JSON parsing, not the size check.
    const llm = await send(b.publicUrl, { method: 'POST', path: '/v1/messages', headers: { ...headers, 'anthropic-version': '2023-06-01' }, body: big, chunked: true });
    expect(llm.status).toBe(400);
    expect(JSON.parse(llm.body)).toMatchObject({ type: 'error', error: { type: 'invalid_request_error' } });
  });

  it('exchanges a key for a JWT that works on the next request, and refuses it once tampered with', async () => {
    const exchange = await fetch(`${b.publicUrl}/auth/token`, { method: 'POST', headers: { authorization: `Bearer ${reader}` } });
    expect(exchange.status).toBe(200);
    expect(exchange.headers.get('cache-control')).toBe('no-store');
    const { access_token: token } = (await exchange.json()) as { access_token: string };
    const me = await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${token}` } });
    expect(me.status).toBe(200);
    expect(await me.json()).toMatchObject({ kind: 'jwt', scopes: ['read'] });
    const [header, payload, signature] = token.split('.') as [string, string, string];
    const forged = `${header}.${payload}.${signature.slice(0, -4)}AAAA`;
    expect((await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${forged}` } })).status).toBe(401);
    const jwks = await fetch(`${b.publicUrl}/.well-known/jwks.json`);
    expect(jwks.status).toBe(200); // public, and empty for HS256: nothing secret in it
    expect(await jwks.json()).toEqual({ keys: [] });
  });

  it('signs an operator in with a cookie and refuses a cookie-authenticated change without the CSRF token', async () => {
    const login = await fetch(`${b.adminUrl}/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: admin }) });
    expect(login.status).toBe(200);
    const cookies = login.headers.getSetCookie();
    const session = cookies.find((c) => c.startsWith('bulwark_session='));
    expect(session).toMatch(/HttpOnly/i);
    expect(session).toMatch(/SameSite=Strict/i);
    const { csrfToken } = (await login.json()) as { csrfToken: string };
    const cookie = cookies.map((c) => c.split(';')[0]).join('; ');
    const create = (extra: Record<string, string>) =>
      fetch(`${b.adminUrl}/api/keys`, { method: 'POST', headers: { cookie, 'content-type': 'application/json', ...extra }, body: JSON.stringify({ name: 'via cookie', scopes: ['read'] }) });

    expect((await fetch(`${b.adminUrl}/api/keys`, { headers: { cookie } })).status).toBe(200);
    const refused = await create({});
    expect(refused.status).toBe(403);
    expect(await refused.json()).toMatchObject({ error: { code: 'csrf_failed' } });
    expect((await create({ 'x-xsrf-token': `${csrfToken}x` })).status).toBe(403);
    expect((await create({ 'x-xsrf-token': csrfToken })).status).toBe(201);
  });

  it('compresses a large JSON answer for a client that accepts it, keeping the security headers', async () => {
    const response = await send(b.adminUrl, { path: '/api/audit/events?limit=200', headers: { authorization: `Bearer ${admin}`, 'accept-encoding': 'gzip' } });
    expect(response.status).toBe(200);
    expect(response.headers['content-encoding']).toBe('gzip');
    expect(response.headers['x-content-type-options']).toBe('nosniff');
    expect(response.headers['cache-control']).toBe('no-store');
    expect(String(response.headers.vary)).toMatch(/accept-encoding/i);
  });

  it('answers the 101st read request of a key within a minute with 429, Retry-After and RateLimit headers', async () => {
    const key = (await b.createKey(['read'])).key;
    let last: Response | undefined;
    for (let i = 1; i <= 100; i++) {
      last = await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${key}` } });
      expect(last.status).toBe(200);
    }
    expect(last?.headers.get('ratelimit-limit')).toBe('100');
    expect(last?.headers.get('ratelimit-remaining')).toBe('0');
    const limited = await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${key}` } });
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(await limited.json()).toMatchObject({ error: { code: 'rate_limited' } });
    // The first refusal of the window is audited; every refusal is counted.
    expect((await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${key}` } })).status).toBe(429);
    expect(b.runtime.metrics.render()).toMatch(/^bulwark_rate_limited_total\{limit="key"\} 2$/m);
    await b.runtime.flush();
    const audited = await b.runtime.auditReader.tail({ limit: 100, type: 'rate_limit.exceeded' });
    expect(audited).toEqual([expect.objectContaining({ details: expect.objectContaining({ limit: 'key', perMinute: 100 }) })]);
    // Another key is counted on its own.
    expect((await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${reader}` } })).status).toBe(200);
  });
});

describe('client addresses and lockout', () => {
  it('ignores X-Forwarded-For from a peer that is not a trusted proxy, and believes it from one that is', async () => {
    const untrusted = await startTestBulwark('pglite', { BULWARK_IP_ALLOWLIST: '203.0.113.0/24' }, { listen: true });
    const trusted = await startTestBulwark('pglite', { BULWARK_IP_ALLOWLIST: '203.0.113.0/24', BULWARK_TRUSTED_PROXIES: '127.0.0.1' }, { listen: true });
    try {
      const spoofed = await send(untrusted.publicUrl, { path: '/api/whoami', headers: { 'x-forwarded-for': '203.0.113.7' } });
      expect(spoofed.status).toBe(403);
      expect(code(spoofed)).toBe('ip_not_allowed');
      const forwarded = await send(trusted.publicUrl, { path: '/api/whoami', headers: { 'x-forwarded-for': '198.51.100.1, 203.0.113.7' } });
      expect(forwarded.status).toBe(401); // through the allow-list, on to authentication
    } finally {
      await Promise.all([untrusted.close(), trusted.close()]);
    }
  });

  it('serves a key with its own address list only from those addresses, and refuses a bad list when creating it', async () => {
    const b = await startTestBulwark('pglite', {}, { listen: true });
    try {
      const create = (allowedIps: string[]) => b.runtime.keyService.createKey(OPERATOR, { name: 'pinned', scopes: ['read'], allowedIps });
      const elsewhere = await create(['10.0.0.0/8', 'fd00::/8']);
      const here = await create(['127.0.0.1']);
      if (!elsewhere.ok || !here.ok) throw new Error('key creation failed');
      expect(elsewhere.value.allowedIps).toEqual(['10.0.0.0/8', 'fd00::/8']);
      const refused = await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${elsewhere.value.key}` } });
      expect(refused.status).toBe(403);
      expect(await refused.json()).toMatchObject({ error: { code: 'ip_not_allowed', message: 'Requests from 127.0.0.1 are not allowed for this key.' } });
      expect((await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${here.value.key}` } })).status).toBe(200);
      expect(await create(['10.0.0.0/33'])).toMatchObject({ ok: false, code: 'validation_failed', message: "allowedIps: '10.0.0.0/33' has an invalid prefix length" });
      await b.runtime.flush();
      const events = await b.runtime.auditReader.tail({ limit: 50, type: 'http.ip_refused' });
      expect(events).toEqual([expect.objectContaining({ keyId: elsewhere.value.id, ip: '127.0.0.1', details: { listener: 'key' } })]);
    } finally {
      await b.close();
    }
  });

  it('holds a cookie session to its key\'s address list, and refuses sign-in from elsewhere', async () => {
    const b = await startTestBulwark('pglite', { BULWARK_TRUSTED_PROXIES: '127.0.0.1' }, { listen: true });
    try {
      const created = await b.runtime.keyService.createKey(OPERATOR, { name: 'office admin', scopes: ['admin'], allowedIps: ['10.0.0.0/8'] });
      if (!created.ok) throw new Error(created.message);
      const login = (from: string) =>
        fetch(`${b.adminUrl}/login`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-forwarded-for': from }, body: JSON.stringify({ key: created.value.key }) });
      const outside = await login('203.0.113.9');
      expect(outside.status).toBe(403);
      expect(await outside.json()).toMatchObject({ error: { code: 'ip_not_allowed' } });
      const inside = await login('10.1.2.3');
      expect(inside.status).toBe(200);
      const cookie = inside.headers.getSetCookie().map((c) => c.split(';')[0]).join('; ');
      expect((await fetch(`${b.adminUrl}/api/keys`, { headers: { cookie, 'x-forwarded-for': '10.1.2.3' } })).status).toBe(200);
      const moved = await fetch(`${b.adminUrl}/api/keys`, { headers: { cookie, 'x-forwarded-for': '203.0.113.9' } });
      expect(moved.status).toBe(403);
      expect(await moved.json()).toMatchObject({ error: { code: 'ip_not_allowed' } });
      // The session's own routes too, which answer before the general checks run.
      expect((await fetch(`${b.adminUrl}/session`, { headers: { cookie, 'x-forwarded-for': '203.0.113.9' } })).status).toBe(403);
      expect((await fetch(`${b.adminUrl}/session`, { headers: { cookie, 'x-forwarded-for': '10.1.2.3' } })).status).toBe(200);
    } finally {
      await b.close();
    }
  });

  it('locks an address out after the 10th bad key: the 11th request gets 429 even with a valid key', async () => {
    const b = await startTestBulwark('pglite', {}, { listen: true });
    try {
      const good = (await b.createKey(['read'])).key;
      for (let i = 0; i < 10; i++) {
        const response = await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${good.slice(0, -4)}${String(i).padStart(4, 'x')}` } });
        expect(response.status).toBe(401);
      }
      const locked = await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${good}` } });
      expect(locked.status).toBe(429);
      expect(await locked.json()).toMatchObject({ error: { code: 'locked_out' } });
      expect(Number(locked.headers.get('retry-after'))).toBeGreaterThan(200);
      await b.runtime.flush();
      const events = await b.runtime.auditReader.tail({ limit: 50, type: 'auth.lockout' });
      expect(events).toEqual([expect.objectContaining({ type: 'auth.lockout', ip: '127.0.0.1', details: expect.objectContaining({ failures: 10 }) })]);
    } finally {
      await b.close();
    }
  });
});

describe('limits shared through Redis by two server processes', () => {
  const schema = `bw_rl_${randomBytes(4).toString('hex')}`;
  let dataDirs: string[] = [];
  let servers: ServerProcess[] = [];
  let env: (dataDir: string) => Record<string, string>;

  beforeAll(async () => {
    dataDirs = [0, 1].map(() => mkdtempSync(path.join(tmpdir(), 'bulwark-redis-')));
    env = (dataDir) => ({
      BULWARK_DATA_DIR: dataDir,
      BULWARK_PORT: '0',
      BULWARK_ADMIN_PORT: '0',
      DATABASE_URL: POSTGRES_URL,
      BULWARK_DATABASE_SCHEMA: schema,
      REDIS_URL: 'redis://127.0.0.1:6379',
      BULWARK_RATE_LIMIT_READ: '10',
      BULWARK_LOG_LEVEL: 'warn',
    });
    // One at a time: the first creates the schema and migrates it.
    for (const dir of dataDirs) servers.push(await startServe(env(dir), dir));
  });

  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
    await dropSchema(schema);
  });

  it('refuses the 11th read of a key limited to 10 a minute, wherever the requests land', async () => {
    const created = await runCli(['keys', 'create', '--scopes', 'read', '--json'], env(dataDirs[0] as string));
    expect(created.code, created.stderr).toBe(0);
    const { key } = JSON.parse(created.stdout) as { key: string };
    const statuses: number[] = [];
    for (let i = 0; i < 11; i++) {
      const server = servers[i % 2] as ServerProcess;
      statuses.push((await fetch(`${server.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${key}` } })).status);
    }
    expect(statuses).toEqual([...Array(10).fill(200), 429]);
  });
});
