/**
 * The public and admin listeners in process (app.request), on PGlite and on PostgreSQL:
 * health, whoami, every authentication failure, scopes, the error envelope, request ids and
 * the audit events they leave.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tailEvents } from '../src/audit/log.js';
import { ENGINES } from './helpers/database.js';
import { OPERATOR, type TestBulwark, startTestBulwark } from './helpers/runtime.js';
import { runCommonRouteTests } from './helpers/security.js';

async function json(response: Response): Promise<any> {
  return response.json();
}

function expectEnvelope(body: any, code: string, response: Response) {
  expect(body).toEqual({ error: { code, message: expect.any(String), requestId: expect.any(String) } });
  expect(body.error.requestId).toBe(response.headers.get('x-request-id'));
}

describe.each(ENGINES)('HTTP on %s', (engine) => {
  let b: TestBulwark;
  beforeAll(async () => {
    b = await startTestBulwark(engine);
  });
  afterAll(async () => {
    await b?.close();
  });

  async function auditTypes(type: string) {
    await b.runtime.auditLog.flush();
    return tailEvents(b.runtime.database.db, { type, limit: 1000 });
  }

  describe('GET /health', () => {
    it('answers without a credential with only status and version', async () => {
      const response = await b.publicApp.request('/health');
      expect(response.status).toBe(200);
      const body = await json(response);
      expect(Object.keys(body).sort()).toEqual(['status', 'version']);
      expect(body.status).toBe('ok');
    });
  });

  describe('GET /api/whoami', () => {
    it('returns the principal for a key sent as Authorization: Bearer, never the key', async () => {
      const { key, id } = await b.createKey(['read'], { name: 'reader' });
      const response = await b.publicApp.request('/api/whoami', { headers: { authorization: `Bearer ${key}` } });
      expect(response.status).toBe(200);
      const text = await response.text();
      expect(text).not.toContain(key);
      expect(JSON.parse(text)).toEqual({ kind: 'key', tenant: 'default', keyId: id, keyName: 'reader', scopes: ['read'], expiresAt: null });
    });

    it('accepts the key in X-API-Key, as the Anthropic SDK sends it', async () => {
      const { key, id } = await b.createKey(['write']);
      const response = await b.publicApp.request('/api/whoami', { headers: { 'x-api-key': key } });
      expect(response.status).toBe(200);
      expect((await json(response)).keyId).toBe(id);
    });

    it('refuses a request with no key with 401, WWW-Authenticate: Bearer, and audits it', async () => {
      const response = await b.publicApp.request('/api/whoami', { headers: { 'user-agent': 'probe/1.0' } });
      expect(response.status).toBe(401);
      expect(response.headers.get('www-authenticate')).toMatch(/^Bearer realm="bulwark"$/);
      expectEnvelope(await json(response), 'unauthorized', response);
      const events = await auditTypes('auth.failure');
      const event = events.find((e) => e.requestId === response.headers.get('x-request-id'));
      expect(event).toMatchObject({ outcome: 'failure', path: '/api/whoami', method: 'GET', userAgent: 'probe/1.0' });
      expect(event?.details).toMatchObject({ reason: 'missing', credentialPresented: false });
    });

    it('refuses a malformed Authorization header with 400', async () => {
      for (const authorization of ['Basic dXNlcjpwYXNz', 'Bearer', 'Bearer two words', 'bwk_test_x']) {
        const response = await b.publicApp.request('/api/whoami', { headers: { authorization } });
        expect(response.status, authorization).toBe(400);
        expect(response.headers.get('www-authenticate')).toContain('error="invalid_request"');
        expectEnvelope(await json(response), 'malformed_credential', response);
      }
    });

    it('refuses two different credentials in Authorization and X-API-Key with 400', async () => {
      const one = await b.createKey(['read']);
      const two = await b.createKey(['read']);
      const response = await b.publicApp.request('/api/whoami', { headers: { authorization: `Bearer ${one.key}`, 'x-api-key': two.key } });
      expect(response.status).toBe(400);
    });

    it('refuses unknown, wrong-secret, expired and revoked keys with the same 401', async () => {
      const good = await b.createKey(['read']);
      const wrongSecret = `${good.key.slice(0, -4)}AAAA`;
      const unknown = good.key.replace(good.id, 'A'.repeat(16));
      const expired = await b.createKey(['read'], { expiresIn: '1s' });
      const revoked = await b.createKey(['read']);
      expect((await b.runtime.keyService.revokeKey({ principal: { kind: 'operator', tenant: 'default', keyId: 't', keyName: 't', scopes: ['admin'], expiresAt: null }, via: 'cli' }, revoked.id)).ok).toBe(true);
      await new Promise((r) => setTimeout(r, 1_100));

      const messages = new Set<string>();
      for (const key of [wrongSecret, unknown, expired.key, revoked.key, 'not-a-bulwark-key']) {
        const response = await b.publicApp.request('/api/whoami', { headers: { authorization: `Bearer ${key}` } });
        expect(response.status, key.slice(0, 12)).toBe(401);
        expect(response.headers.get('www-authenticate')).toContain('error="invalid_token"');
        const body = await json(response);
        expectEnvelope(body, 'unauthorized', response);
        messages.add(body.error.message);
      }
      expect(messages.size).toBe(1);
      const reasons = (await auditTypes('auth.failure')).map((e) => e.details.reason);
      expect(reasons).toEqual(expect.arrayContaining(['wrong_secret', 'unknown_key', 'expired', 'revoked', 'not_a_key']));
    });

    it('refuses a key revoked by this instance on the very next request', async () => {
      const { key, id } = await b.createKey(['read']);
      expect((await b.publicApp.request('/api/whoami', { headers: { authorization: `Bearer ${key}` } })).status).toBe(200);
      const revoke = await b.adminApp.request(`/api/keys/${id}/revoke`, { method: 'POST', headers: { authorization: `Bearer ${b.runtime.adminToken}` } });
      expect(revoke.status).toBe(200);
      expect((await b.publicApp.request('/api/whoami', { headers: { authorization: `Bearer ${key}` } })).status).toBe(401);
    });

    it('records last use of a key off the request path', async () => {
      const { key, id } = await b.createKey(['read']);
      await b.publicApp.request('/api/whoami', { headers: { authorization: `Bearer ${key}` } });
      await b.runtime.flush();
      const row = await b.runtime.keys.findById(id);
      expect(row?.last_used_at).toBeInstanceOf(Date);
    });
  });

  describe('request ids', () => {
    it('puts an X-Request-Id on every response and keeps a well-formed inbound one', async () => {
      const generated = await b.publicApp.request('/health');
      expect(generated.headers.get('x-request-id')).toMatch(/^req_[0-9a-f]{32}$/);
      const kept = await b.publicApp.request('/health', { headers: { 'x-request-id': 'client-trace_01' } });
      expect(kept.headers.get('x-request-id')).toBe('client-trace_01');
    });

    it('replaces an inbound id that is too long or has other characters', async () => {
      for (const bad of ['x'.repeat(65), 'a b', 'id;drop', '../etc']) {
        const response = await b.publicApp.request('/health', { headers: { 'x-request-id': bad } });
        expect(response.headers.get('x-request-id')).toMatch(/^req_/);
      }
    });
  });

  describe('unknown routes', () => {
    it('answers 404 in the envelope once authenticated', async () => {
      const { key } = await b.createKey(['read']);
      const response = await b.publicApp.request('/nope', { headers: { authorization: `Bearer ${key}` } });
      expect(response.status).toBe(404);
      expectEnvelope(await json(response), 'not_found', response);
    });

    it('does not reveal which routes exist to a caller without a key', async () => {
      const response = await b.publicApp.request('/nope');
      expect(response.status).toBe(401);
    });
  });

  describe('admin listener', () => {
    it('refuses a read key on the admin API with 403 insufficient_scope and audits it', async () => {
      const { key, id } = await b.createKey(['read']);
      const response = await b.adminApp.request('/api/keys', { headers: { authorization: `Bearer ${key}` } });
      expect(response.status).toBe(403);
      expect(response.headers.get('www-authenticate')).toBe('Bearer error="insufficient_scope", scope="admin"');
      expectEnvelope(await json(response), 'insufficient_scope', response);
      const denied = (await auditTypes('authz.denied')).find((e) => e.keyId === id);
      expect(denied?.details).toMatchObject({ required: 'admin', granted: ['read'] });
    });

    it('requires a login even for the readiness-free pages', async () => {
      expect((await b.adminApp.request('/')).status).toBe(401);
      expect((await b.adminApp.request('/api/keys')).status).toBe(401);
    });

    it('answers readiness with the database state without a credential', async () => {
      const response = await b.adminApp.request('/health/ready');
      expect(response.status).toBe(200);
      expect(await json(response)).toMatchObject({ status: 'ready', database: { kind: engine } });
    });

    it('lets an admin key create a key whose secret is shown once and never listed', async () => {
      const admin = await b.createKey(['admin']);
      const created = await b.adminApp.request('/api/keys', {
        method: 'POST',
        headers: { authorization: `Bearer ${admin.key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'ci', scopes: ['read', 'write'] }),
      });
      expect(created.status).toBe(201);
      const body = await json(created);
      expect(body.key).toMatch(/^bwk_test_[0-9A-Za-z]{16}_[0-9A-Za-z]{43}$/);
      const list = await b.adminApp.request('/api/keys', { headers: { authorization: `Bearer ${admin.key}` } });
      const text = await list.text();
      expect(text).toContain(body.id);
      expect(text).not.toContain(body.key);
    });

    it('keeps a tenant admin inside its tenant', async () => {
      const op = { principal: { kind: 'operator' as const, tenant: 'default', keyId: 't', keyName: 't', scopes: ['admin'], expiresAt: null }, via: 'cli' as const };
      expect((await b.runtime.keyService.createTenant(op, `acme-${engine}`)).ok).toBe(true);
      const acmeAdmin = await b.createKey(['admin'], { tenant: `acme-${engine}` });
      const otherKey = await b.createKey(['read']);
      const headers = { authorization: `Bearer ${acmeAdmin.key}` };
      expect((await b.adminApp.request(`/api/keys/${otherKey.id}`, { headers })).status).toBe(404);
      expect((await b.adminApp.request(`/api/keys/${otherKey.id}/revoke`, { method: 'POST', headers })).status).toBe(404);
      const list = await json(await b.adminApp.request('/api/keys', { headers }));
      expect(list.keys.every((k: { tenant: string }) => k.tenant === `acme-${engine}`)).toBe(true);
    });

    it('answers bad admin input with 400 naming the field, and bad JSON with invalid_json', async () => {
      const headers = { authorization: `Bearer ${b.runtime.adminToken}`, 'content-type': 'application/json' };
      const badScope = await b.adminApp.request('/api/keys', { method: 'POST', headers, body: JSON.stringify({ name: 'x', scopes: ['NOT A SCOPE'] }) });
      expect(badScope.status).toBe(400);
      expect((await json(badScope)).error.message).toContain('scopes');
      const badJson = await b.adminApp.request('/api/keys', { method: 'POST', headers, body: '{"name":' });
      expect(badJson.status).toBe(400);
      expect((await json(badJson)).error.code).toBe('invalid_json');
      const missing = await b.adminApp.request('/api/keys/doesnotexist00000', { headers });
      expect(missing.status).toBe(404);
    });
  });

  describe('logs', () => {
    it('never contain a key, on success or failure', async () => {
      const { key } = await b.createKey(['read']);
      await b.publicApp.request('/api/whoami', { headers: { authorization: `Bearer ${key}` } });
      await b.publicApp.request('/api/whoami', { headers: { authorization: `Bearer ${key}x` } });
      await b.publicApp.request(`/api/whoami?api_key=${key}`);
      expect(b.logs.length).toBeGreaterThan(0);
      expect(b.logs.join('\n')).not.toContain(key.slice(26));
    });
  });
});

describe('security cases of every authenticated route', () => {
  let b: TestBulwark;
  beforeAll(async () => {
    b = await startTestBulwark('pglite');
  });
  afterAll(async () => {
    await b?.close();
  });
  const key = async (scopes: string[]) => (await b.createKey(scopes)).key;

  describe('public listener', () => {
    runCommonRouteTests([{ method: 'GET', path: '/api/whoami', scope: 'any' }], { app: () => b.publicApp, key });
  });

  describe('admin listener', () => {
    runCommonRouteTests(
      [
        { method: 'GET', path: '/', scope: 'admin' },
        { method: 'GET', path: '/api/keys', scope: 'admin' },
        { method: 'POST', path: '/api/keys', scope: 'admin', body: { name: 'x', scopes: ['read'] } },
        { method: 'GET', path: '/api/keys/AAAAAAAAAAAAAAAA', scope: 'admin' },
        { method: 'PATCH', path: '/api/keys/AAAAAAAAAAAAAAAA', scope: 'admin', body: { name: 'y' } },
        { method: 'POST', path: '/api/keys/AAAAAAAAAAAAAAAA/revoke', scope: 'admin' },
        { method: 'POST', path: '/api/keys/AAAAAAAAAAAAAAAA/rotate', scope: 'admin' },
        { method: 'GET', path: '/api/tenants', scope: 'admin' },
        { method: 'POST', path: '/api/tenants', scope: 'admin', body: { id: 'zz' } },
        { method: 'GET', path: '/api/audit/events', scope: 'admin' },
        { method: 'GET', path: '/api/audit/verify', scope: 'admin' },
        { method: 'GET', path: '/metrics', scope: 'admin' },
      ],
      { app: () => b.adminApp, key },
    );
  });
});

describe('tenant isolation in key management', () => {
  let b: TestBulwark;
  let acmeAdmin: string;
  let otherKeyId: string;
  beforeAll(async () => {
    b = await startTestBulwark('pglite');
    await b.runtime.keyService.createTenant(OPERATOR, 'acme');
    acmeAdmin = (await b.createKey(['admin'], { tenant: 'acme' })).key;
    otherKeyId = (await b.createKey(['read'])).id;
  });
  afterAll(async () => {
    await b?.close();
  });

  async function deniedEvents() {
    await b.runtime.auditLog.flush();
    return tailEvents(b.runtime.database.db, { type: 'authz.denied', limit: 1000 });
  }

  it('answers another tenant\'s key id with 404 and audits the attempt as a denial', async () => {
    const response = await b.adminApp.request(`/api/keys/${otherKeyId}`, { headers: { authorization: `Bearer ${acmeAdmin}` } });
    expect(response.status).toBe(404);
    const event = (await deniedEvents()).find((e) => e.requestId === response.headers.get('x-request-id'));
    expect(event).toMatchObject({ tenantId: 'acme', method: 'GET', path: `/api/keys/${otherKeyId}` });
    expect(event?.details).toMatchObject({ action: 'key.access', reason: 'cross_tenant', targetKeyId: otherKeyId, targetTenant: 'default' });
  });

  it('refuses a tenant admin creating a key in another tenant with 403, audited', async () => {
    const response = await b.adminApp.request('/api/keys', {
      method: 'POST',
      headers: { authorization: `Bearer ${acmeAdmin}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'sneaky', scopes: ['admin'], tenant: 'default' }),
    });
    expect(response.status).toBe(403);
    const event = (await deniedEvents()).find((e) => e.requestId === response.headers.get('x-request-id'));
    expect(event?.details).toMatchObject({ action: 'key.create', reason: 'cross_tenant', targetTenant: 'default' });
  });

  it('refuses a tenant admin creating a tenant or verifying the whole chain with 403, audited', async () => {
    const headers = { authorization: `Bearer ${acmeAdmin}`, 'content-type': 'application/json' };
    const tenant = await b.adminApp.request('/api/tenants', { method: 'POST', headers, body: JSON.stringify({ id: 'evil' }) });
    expect(tenant.status).toBe(403);
    const verify = await b.adminApp.request('/api/audit/verify', { headers });
    expect(verify.status).toBe(403);
    const actions = (await deniedEvents()).map((e) => e.details.action);
    expect(actions).toEqual(expect.arrayContaining(['tenant.create', 'audit.verify']));
  });

  it('records key changes made with the admin token as coming from the CLI, with method and path', async () => {
    const response = await b.adminApp.request('/api/keys', {
      method: 'POST',
      headers: { authorization: `Bearer ${b.runtime.adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'via cli', scopes: ['read'] }),
    });
    expect(response.status).toBe(201);
    await b.runtime.auditLog.flush();
    const created = (await tailEvents(b.runtime.database.db, { type: 'key.created', limit: 1000 })).find((e) => e.requestId === response.headers.get('x-request-id'));
    expect(created).toMatchObject({ method: 'POST', path: '/api/keys' });
    expect(created?.details).toMatchObject({ via: 'cli', by: { kind: 'operator', keyId: 'admin-token' } });
  });
});

describe('authentication off (development on loopback)', () => {
  let b: TestBulwark;
  beforeAll(async () => {
    b = await startTestBulwark('pglite', { BULWARK_AUTH: 'off' });
  });
  afterAll(async () => {
    await b?.close();
  });

  it('serves the public listener as an anonymous principal and warns on every request line', async () => {
    const response = await b.publicApp.request('/api/whoami');
    expect(response.status).toBe(200);
    expect((await json(response)).kind).toBe('anonymous');
    const line = b.logs.map((l) => JSON.parse(l)).find((l) => l.path === '/api/whoami');
    expect(line.warning).toMatch(/AUTHENTICATION IS OFF/);
  });

  it('still requires a login on the admin listener, whose lines carry the warning too', async () => {
    expect((await b.adminApp.request('/api/keys')).status).toBe(401);
    const line = b.logs.map((l) => JSON.parse(l)).find((l) => l.listener === 'admin' && l.path === '/api/keys');
    expect(line.warning).toMatch(/AUTHENTICATION IS OFF/);
  });
});
