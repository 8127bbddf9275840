/**
 * Cookie sessions on the admin listener and CSRF protection, on PGlite and PostgreSQL:
 * the session store (src/auth/sessions.ts), the login routes and `sessionAuth`
 * (src/http/routes/login.ts) and `csrfProtection` (src/security/csrf.ts), assembled the way the
 * admin listener assembles them: login routes → sessionAuth → authenticate → csrf → routes.
 *
 * Every key and session id is generated at run time; no secret-shaped literal lives here.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Hono, type MiddlewareHandler } from 'hono';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { AuditEventInput } from '../src/audit/log.js';
import { type Actor, KeyService } from '../src/auth/key-service.js';
import { createKeyHasher } from '../src/auth/keys.js';
import { DatabaseSessionStore, hashSessionId, keyStillValidInStore } from '../src/auth/sessions.js';
import { KeyVerifier, staticPrincipal } from '../src/auth/verify.js';
import { errorHandler, notFoundHandler } from '../src/http/errors.js';
import { type SessionEnv, loginRoutes, sessionAuth, sessionCsrfToken } from '../src/http/routes/login.js';
import { csrfProtection } from '../src/security/csrf.js';
import { KeyRepository, TenantRepository } from '../src/store/repositories.js';
import { ENGINES, type TestDatabase, openTestDatabase } from './helpers/database.js';

const OPERATOR: Actor = { principal: staticPrincipal('operator', 'op', 'test operator', ['admin']), via: 'cli' };
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;

interface ParsedCookie {
  name: string;
  value: string;
  attributes: Map<string, string>;
}

function setCookies(response: Response): ParsedCookie[] {
  return response.headers.getSetCookie().map((line) => {
    const [pair = '', ...rest] = line.split(';').map((part) => part.trim());
    const eq = pair.indexOf('=');
    const attributes = new Map(
      rest.map((attribute) => {
        const at = attribute.indexOf('=');
        return at < 0 ? [attribute.toLowerCase(), ''] : [attribute.slice(0, at).toLowerCase(), attribute.slice(at + 1)];
      }),
    );
    return { name: pair.slice(0, eq), value: decodeURIComponent(pair.slice(eq + 1)), attributes };
  });
}

function cookieNamed(response: Response, name: string): ParsedCookie {
  const cookie = setCookies(response).find((c) => c.name === name);
  if (!cookie) throw new Error(`no Set-Cookie for ${name}; got ${response.headers.getSetCookie().join(' | ')}`);
  return cookie;
}

async function errorCode(response: Response): Promise<string> {
  return ((await response.json()) as { error: { code: string } }).error.code;
}

describe.each(ENGINES)('admin sessions on %s', (engine) => {
  let t: TestDatabase;
  let keys: KeyRepository;
  let service: KeyService;
  let verifier: KeyVerifier;
  let clock: number;
  let sessions: DatabaseSessionStore;
  let audited: AuditEventInput[];
  let adminKey: { key: string; id: string };
  let readerKey: { key: string; id: string };
  let changes: number;
  const hasher = createKeyHasher(randomBytes(32).toString('hex'));
  const audit = (event: AuditEventInput) => audited.push(event);

  async function createKey(scopes: string[]) {
    const result = await service.createKey(OPERATOR, { name: 'session test', scopes });
    if (!result.ok) throw new Error(result.message);
    return { key: result.value.key, id: result.value.id };
  }

  /** Stands in for `authenticate` once it passes a principal that is already set through. */
  const authenticateStandIn: MiddlewareHandler<SessionEnv> = async (c, next) => {
    if (c.get('principal')) return next();
    const bearer = /^Bearer (\S+)$/.exec(c.req.header('authorization') ?? '')?.[1];
    const result = bearer ? await verifier.verify(bearer) : undefined;
    if (!result?.ok) return c.json({ error: { code: 'unauthorized', message: 'stand-in', requestId: '' } }, 401);
    c.set('principal', result.principal);
    c.set('authMethod', 'bearer');
    return next();
  };

  function adminApp(options: { secureCookies?: boolean } = {}) {
    const { secureCookies = false } = options;
    const keyStillValid = keyStillValidInStore({ keys });
    const app = new Hono<SessionEnv>();
    app.onError(
      errorHandler((err) => {
        throw err;
      }),
    );
    app.notFound(notFoundHandler);
    app.route('/', loginRoutes({ sessions, verifier, audit, secureCookies, keyStillValid }));
    app.use('*', sessionAuth({ sessions, keyStillValid, audit, secureCookies }));
    app.use('*', authenticateStandIn);
    app.use('*', csrfProtection({ getExpectedToken: sessionCsrfToken, audit }));
    app.get('/things', (c) => c.json({ changes, keyId: c.get('principal').keyId, via: c.get('authMethod') }));
    app.post('/things', async (c) => {
      const type = c.req.header('content-type') ?? '';
      const note = type.startsWith('application/x-www-form-urlencoded') ? (await c.req.parseBody()).note : undefined;
      changes += 1;
      return c.json({ changes, note });
    });
    return app;
  }

  interface SignedIn {
    id: string;
    csrfToken: string;
    cookie: string;
    response: Response;
  }

  async function login(app: Hono<SessionEnv>, key: string, extra: Record<string, string> = {}): Promise<SignedIn> {
    const response = await app.request('/login', { method: 'POST', headers: { 'content-type': 'application/json', ...extra }, body: JSON.stringify({ key }) });
    expect(response.status).toBe(200);
    const session = cookieNamed(response, 'bulwark_session');
    const body = (await response.clone().json()) as { csrfToken: string };
    return { id: session.value, csrfToken: body.csrfToken, cookie: `bulwark_session=${session.value}`, response };
  }

  beforeAll(async () => {
    t = await openTestDatabase(engine);
    keys = new KeyRepository(t.database.db);
    verifier = new KeyVerifier({ keys, hasher, cacheMs: 0 });
    service = new KeyService({
      keys,
      tenants: new TenantRepository(t.database.db),
      hasher,
      prefix: 'bwk_test_',
      audit: () => {},
      onKeyInvalidated: (id) => verifier.invalidate(id),
    });
    audited = [];
    adminKey = await createKey(['admin']);
    readerKey = await createKey(['read', 'write']);
  });
  afterAll(async () => {
    await t?.cleanup();
  });
  beforeEach(() => {
    clock = Date.now();
    sessions = new DatabaseSessionStore({ db: t.database.db, now: () => clock });
    audited = [];
    changes = 0;
  });

  describe('POST /login', () => {
    it('sets an HttpOnly, SameSite=Strict, Path=/ session cookie without Secure when secure cookies are off', async () => {
      const { response, csrfToken } = await login(adminApp(), adminKey.key);
      const session = cookieNamed(response, 'bulwark_session');
      expect(session.value).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(session.attributes.has('httponly')).toBe(true);
      expect(session.attributes.get('samesite')).toBe('Strict');
      expect(session.attributes.get('path')).toBe('/');
      expect(session.attributes.get('max-age')).toBe(String(12 * 3600));
      expect(session.attributes.has('secure')).toBe(false);
      expect(session.attributes.has('domain')).toBe(false);
      const xsrf = cookieNamed(response, 'XSRF-TOKEN');
      expect(xsrf.value).toBe(csrfToken);
      expect(xsrf.attributes.has('httponly')).toBe(false);
      expect(xsrf.attributes.get('samesite')).toBe('Strict');
      expect(xsrf.attributes.get('path')).toBe('/');
      expect(response.headers.get('cache-control')).toBe('no-store');
      const body = (await response.json()) as { csrfToken: string; expiresAt: string };
      expect(new Date(body.expiresAt).getTime()).toBe(clock + 12 * HOUR);
    });

    it('names the cookie __Host-bulwark_session and marks both cookies Secure when secure cookies are on', async () => {
      const app = adminApp({ secureCookies: true });
      const response = await app.request('/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: adminKey.key }) });
      expect(response.status).toBe(200);
      expect(setCookies(response).map((c) => c.name)).toEqual(['__Host-bulwark_session', 'XSRF-TOKEN']);
      const session = cookieNamed(response, '__Host-bulwark_session');
      expect(session.attributes.has('secure')).toBe(true);
      expect(session.attributes.has('httponly')).toBe(true);
      expect(session.attributes.get('samesite')).toBe('Strict');
      expect(session.attributes.get('path')).toBe('/');
      expect(session.attributes.has('domain')).toBe(false);
      expect(cookieNamed(response, 'XSRF-TOKEN').attributes.has('secure')).toBe(true);

      expect((await app.request('/things', { headers: { cookie: `__Host-bulwark_session=${session.value}` } })).status).toBe(200);
      // A secure server never reads the unprefixed name, which a sibling subdomain could plant.
      expect((await app.request('/things', { headers: { cookie: `bulwark_session=${session.value}` } })).status).toBe(401);
    });

    it('issues a new session id on every login and ends the session the browser already held', async () => {
      const app = adminApp();
      const first = await login(app, adminKey.key);
      const second = await login(app, adminKey.key, { cookie: first.cookie });
      expect(second.id).not.toBe(first.id);
      expect(second.csrfToken).not.toBe(first.csrfToken);
      expect((await app.request('/things', { headers: { cookie: first.cookie } })).status).toBe(401);
      expect((await app.request('/things', { headers: { cookie: second.cookie } })).status).toBe(200);
    });

    it('stores only a hash of the session id, and neither the id nor the CSRF token', async () => {
      const { id, csrfToken } = await login(adminApp(), adminKey.key);
      const rows = await t.database.db.selectFrom('admin_sessions').selectAll().execute();
      const mine = rows.filter((row) => row.id_hash === createHash('sha256').update(id).digest('hex'));
      expect(mine).toHaveLength(1);
      expect(mine[0]).toMatchObject({ key_id: adminKey.id, tenant_id: 'default', principal_kind: 'key', scopes: ['admin'] });
      expect(hashSessionId(id)).toBe(mine[0]?.id_hash);
      const dump = JSON.stringify(rows);
      expect(dump).not.toContain(id);
      expect(dump).not.toContain(csrfToken);
    });

    it('answers a form post with 303 to / and sets the cookies', async () => {
      const response = await adminApp().request('/login', {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ key: adminKey.key }).toString(),
      });
      expect(response.status).toBe(303);
      expect(response.headers.get('location')).toBe('/session');
      expect(cookieNamed(response, 'bulwark_session').value).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(cookieNamed(response, 'XSRF-TOKEN').value).toMatch(/^[A-Za-z0-9_-]{43}$/);
    });

    it('refuses a key without the admin scope with 403, sets no cookie and audits auth.login_failed', async () => {
      const response = await adminApp().request('/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: readerKey.key }) });
      expect(response.status).toBe(403);
      expect(await errorCode(response)).toBe('insufficient_scope');
      expect(response.headers.getSetCookie()).toEqual([]);
      expect(audited).toEqual([expect.objectContaining({ type: 'auth.login_failed', outcome: 'denied', keyId: readerKey.id, details: expect.objectContaining({ reason: 'insufficient_scope' }) })]);
      const rows = await t.database.db.selectFrom('admin_sessions').select('key_id').where('key_id', '=', readerKey.id).execute();
      expect(rows).toEqual([]);
    });

    it('refuses a wrong key with 401, sets no cookie, and audits auth.login_failed without the key', async () => {
      const wrong = `${adminKey.key.slice(0, -4)}${adminKey.key.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`;
      const response = await adminApp().request('/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: wrong }) });
      expect(response.status).toBe(401);
      expect(await errorCode(response)).toBe('unauthorized');
      expect(response.headers.getSetCookie()).toEqual([]);
      expect(audited).toEqual([expect.objectContaining({ type: 'auth.login_failed', outcome: 'failure', keyId: adminKey.id, details: expect.objectContaining({ reason: 'wrong_secret' }) })]);
      expect(JSON.stringify(audited)).not.toContain(wrong.slice(-43));
    });

    it('refuses a body without a key with 400', async () => {
      const app = adminApp();
      const json = await app.request('/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
      expect(json.status).toBe(400);
      const form = await app.request('/login', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'other=1' });
      expect(form.status).toBe(400);
      const twice = await app.request('/login', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `key=${adminKey.key}&key=${adminKey.key}` });
      expect(twice.status).toBe(400);
      const text = await app.request('/login', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: adminKey.key });
      expect(text.status).toBe(400);
      expect(audited).toEqual([]);
    });

    it('refuses a sign-in started by another site (login CSRF) with 403 csrf_failed', async () => {
      const app = adminApp();
      const body = JSON.stringify({ key: adminKey.key });
      const headers = { 'content-type': 'application/json' };
      const crossSite = await app.request('/login', { method: 'POST', headers: { ...headers, 'sec-fetch-site': 'cross-site' }, body });
      expect(crossSite.status).toBe(403);
      expect(await errorCode(crossSite)).toBe('csrf_failed');
      const otherOrigin = await app.request('/login', { method: 'POST', headers: { ...headers, origin: 'https://evil.example' }, body });
      expect(otherOrigin.status).toBe(403);
      expect(otherOrigin.headers.getSetCookie()).toEqual([]);
      expect(audited.map((e) => [e.type, e.details?.reason])).toEqual([
        ['auth.login_failed', 'cross_site'],
        ['auth.login_failed', 'cross_site'],
      ]);
      const sameOrigin = await app.request('/login', { method: 'POST', headers: { ...headers, 'sec-fetch-site': 'same-origin', origin: 'http://localhost' }, body });
      expect(sameOrigin.status).toBe(200);
    });

    it('signs in again over a stale cookie', async () => {
      const app = adminApp();
      const stale = await login(app, adminKey.key);
      clock += 13 * HOUR;
      const fresh = await login(app, adminKey.key, { cookie: stale.cookie });
      expect((await app.request('/things', { headers: { cookie: fresh.cookie } })).status).toBe(200);
    });

    it('audits a successful login as auth.login, never with the key or the session id', async () => {
      const { id, csrfToken } = await login(adminApp(), adminKey.key);
      expect(audited).toEqual([expect.objectContaining({ type: 'auth.login', outcome: 'success', keyId: adminKey.id, tenantId: 'default' })]);
      const dump = JSON.stringify(audited);
      for (const secret of [adminKey.key, id, csrfToken]) expect(dump).not.toContain(secret);
    });
  });

  describe('session cookie and CSRF', () => {
    it('authenticates a GET by the session cookie', async () => {
      const app = adminApp();
      const { cookie } = await login(app, adminKey.key);
      const response = await app.request('/things', { headers: { cookie } });
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({ changes: 0, keyId: adminKey.id, via: 'session' });
    });

    it('refuses a POST by cookie without a CSRF token with 403 csrf_failed, changes nothing and audits it', async () => {
      const app = adminApp();
      const { cookie } = await login(app, adminKey.key);
      audited = [];
      const response = await app.request('/things', { method: 'POST', headers: { cookie } });
      expect(response.status).toBe(403);
      expect(await errorCode(response)).toBe('csrf_failed');
      expect(changes).toBe(0);
      expect(audited).toEqual([expect.objectContaining({ type: 'http.csrf_failed', outcome: 'denied', keyId: adminKey.id, details: expect.objectContaining({ reason: 'missing' }) })]);
    });

    it('refuses a POST whose CSRF token belongs to another session with 403', async () => {
      const app = adminApp();
      const mine = await login(app, adminKey.key);
      const theirs = await login(app, adminKey.key);
      const response = await app.request('/things', { method: 'POST', headers: { cookie: mine.cookie, 'x-xsrf-token': theirs.csrfToken } });
      expect(response.status).toBe(403);
      expect(await errorCode(response)).toBe('csrf_failed');
      expect(audited.at(-1)).toMatchObject({ type: 'http.csrf_failed', details: { reason: 'mismatch' } });
      const truncated = await app.request('/things', { method: 'POST', headers: { cookie: mine.cookie, 'x-xsrf-token': mine.csrfToken.slice(0, -1) } });
      expect(truncated.status).toBe(403);
      expect(changes).toBe(0);
    });

    it('accepts a POST with the right token in X-XSRF-TOKEN', async () => {
      const app = adminApp();
      const { cookie, csrfToken } = await login(app, adminKey.key);
      const response = await app.request('/things', { method: 'POST', headers: { cookie, 'x-xsrf-token': csrfToken } });
      expect(response.status).toBe(200);
      expect(changes).toBe(1);
    });

    it('accepts a form post with the token in the _csrf field, and the route still reads the form', async () => {
      const app = adminApp();
      const { cookie, csrfToken } = await login(app, adminKey.key);
      const response = await app.request('/things', {
        method: 'POST',
        headers: { cookie, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ _csrf: csrfToken, note: 'hello' }).toString(),
      });
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({ changes: 1, note: 'hello' });
      const wrong = await app.request('/things', {
        method: 'POST',
        headers: { cookie, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ _csrf: 'x'.repeat(43) }).toString(),
      });
      expect(wrong.status).toBe(403);
    });

    it('lets a bearer-authenticated POST through without a CSRF token', async () => {
      const response = await adminApp().request('/things', { method: 'POST', headers: { authorization: `Bearer ${adminKey.key}` } });
      expect(response.status).toBe(200);
      expect(changes).toBe(1);
    });

    it('leaves a request with both a header and a cookie to the header, so a wrong key is not rescued by the cookie', async () => {
      const app = adminApp();
      const { cookie } = await login(app, adminKey.key);
      const response = await app.request('/things', { headers: { cookie, authorization: 'Bearer not-a-key' } });
      expect(response.status).toBe(401);
    });

    it('refuses an unknown session cookie with 401, clears both cookies and audits it', async () => {
      const response = await adminApp().request('/things', { headers: { cookie: `bulwark_session=${randomBytes(32).toString('base64url')}` } });
      expect(response.status).toBe(401);
      expect(await errorCode(response)).toBe('unauthorized');
      const cleared = setCookies(response);
      expect(cleared.map((c) => [c.name, c.value, c.attributes.get('max-age')])).toEqual([
        ['bulwark_session', '', '0'],
        ['XSRF-TOKEN', '', '0'],
      ]);
      expect(audited).toEqual([expect.objectContaining({ type: 'auth.failure', details: expect.objectContaining({ reason: 'session_unknown' }) })]);
    });
  });

  describe('GET /session and POST /logout', () => {
    it('describes the session and repeats its CSRF token', async () => {
      const app = adminApp();
      const { cookie, csrfToken } = await login(app, adminKey.key);
      const response = await app.request('/session', { headers: { cookie } });
      expect(response.status).toBe(200);
      expect(response.headers.get('cache-control')).toBe('no-store');
      const body = (await response.json()) as { principal: { keyId: string; scopes: string[] }; csrfToken: string; expiresAt: string };
      expect(body.principal).toMatchObject({ kind: 'key', keyId: adminKey.id, tenant: 'default', scopes: ['admin'] });
      expect(body.csrfToken).toBe(csrfToken);
      expect(new Date(body.expiresAt).getTime()).toBe(clock + 12 * HOUR);
    });

    it('answers GET /session with 401 without a session cookie, even with a valid bearer key', async () => {
      const app = adminApp();
      expect((await app.request('/session')).status).toBe(401);
      expect((await app.request('/session', { headers: { authorization: `Bearer ${adminKey.key}` } })).status).toBe(401);
    });

    it('requires the CSRF token to log out', async () => {
      const app = adminApp();
      const { cookie } = await login(app, adminKey.key);
      const response = await app.request('/logout', { method: 'POST', headers: { cookie } });
      expect(response.status).toBe(403);
      expect(await errorCode(response)).toBe('csrf_failed');
      expect((await app.request('/things', { headers: { cookie } })).status).toBe(200);
    });

    it('destroys the session, clears both cookies, audits auth.logout, and the cookie then gets 401', async () => {
      const app = adminApp();
      const { cookie, csrfToken, id } = await login(app, adminKey.key);
      const response = await app.request('/logout', { method: 'POST', headers: { cookie, 'x-xsrf-token': csrfToken } });
      expect(response.status).toBe(204);
      expect(setCookies(response).map((c) => [c.name, c.value, c.attributes.get('max-age')])).toEqual([
        ['bulwark_session', '', '0'],
        ['XSRF-TOKEN', '', '0'],
      ]);
      expect(audited.at(-1)).toMatchObject({ type: 'auth.logout', outcome: 'success', keyId: adminKey.id });
      expect(await t.database.db.selectFrom('admin_sessions').select('id_hash').where('id_hash', '=', hashSessionId(id)).execute()).toEqual([]);
      expect((await app.request('/things', { headers: { cookie } })).status).toBe(401);
    });
  });

  describe('limits and revocation', () => {
    it('ends a session idle for the idle timeout, writing last_seen_at at most once a minute', async () => {
      const app = adminApp();
      const { cookie, id } = await login(app, adminKey.key);
      const lastSeen = async () =>
        (await t.database.db.selectFrom('admin_sessions').select('last_seen_at').where('id_hash', '=', hashSessionId(id)).executeTakeFirstOrThrow()).last_seen_at.getTime();
      const signedInAt = clock;

      clock += 30_000;
      expect((await app.request('/things', { headers: { cookie } })).status).toBe(200);
      expect(await lastSeen()).toBe(signedInAt);

      clock += 59 * MINUTE;
      expect((await app.request('/things', { headers: { cookie } })).status).toBe(200);
      expect(await lastSeen()).toBe(clock);

      clock += 59 * MINUTE;
      expect((await app.request('/things', { headers: { cookie } })).status).toBe(200);

      clock += 60 * MINUTE;
      const response = await app.request('/things', { headers: { cookie } });
      expect(response.status).toBe(401);
      expect(setCookies(response).map((c) => c.name)).toEqual(['bulwark_session', 'XSRF-TOKEN']);
      expect(audited.at(-1)).toMatchObject({ type: 'auth.failure', details: { reason: 'session_idle_timeout' } });
    });

    it('ends an active session at its absolute limit', async () => {
      const app = adminApp();
      const { cookie } = await login(app, adminKey.key);
      const end = clock + 12 * HOUR;
      let served = 0;
      while (clock + 50 * MINUTE < end) {
        clock += 50 * MINUTE;
        expect((await app.request('/things', { headers: { cookie } })).status).toBe(200);
        served += 1;
      }
      expect(served).toBe(14);
      clock = end;
      expect((await app.request('/things', { headers: { cookie } })).status).toBe(401);
      expect(audited.at(-1)).toMatchObject({ details: { reason: 'session_expired' } });
    });

    it('stops a session whose key has been revoked since sign-in', async () => {
      const app = adminApp();
      const key = await createKey(['admin']);
      const { cookie, id } = await login(app, key.key);
      expect((await app.request('/things', { headers: { cookie } })).status).toBe(200);
      const revoked = await service.revokeKey(OPERATOR, key.id);
      expect(revoked.ok).toBe(true);
      const response = await app.request('/things', { headers: { cookie } });
      expect(response.status).toBe(401);
      expect(audited.at(-1)).toMatchObject({ type: 'auth.failure', keyId: key.id, details: { reason: 'session_key_invalid' } });
      expect(await t.database.db.selectFrom('admin_sessions').select('id_hash').where('id_hash', '=', hashSessionId(id)).execute()).toEqual([]);
    });

    it('counts a key as still valid only while it is in the store, unrevoked and unexpired, or a listed static credential', async () => {
      const check = keyStillValidInStore({ keys, staticKeyIds: ['admin-token'], now: () => Date.now() + HOUR });
      expect(await check(adminKey.id)).toEqual({ allowedCidrs: [] });
      expect(await check('admin-token')).toEqual({ allowedCidrs: [] });
      expect(await check('admin-key')).toBe(false);
      expect(await check('nosuchkey0000000')).toBe(false);
      const shortLived = await service.createKey(OPERATOR, { name: 'short', scopes: ['admin'], expiresIn: '30m' });
      if (!shortLived.ok) throw new Error(shortLived.message);
      expect(await keyStillValidInStore({ keys })(shortLived.value.id)).toEqual({ allowedCidrs: [] });
      expect(await check(shortLived.value.id)).toBe(false);
    });

    it('does not let a session outlive its key’s own expiry', async () => {
      const expiresAt = new Date(clock + 2 * HOUR);
      const created = await sessions.create({ ...staticPrincipal('operator', 'short', 'short-lived', ['admin']), expiresAt });
      expect(created.expiresAt).toEqual(expiresAt);
      expect(created.maxAgeSeconds).toBe(2 * 3600);
    });

    it('destroys every session of a key and no other', async () => {
      const key = await createKey(['admin']);
      const verified = await verifier.verify(key.key);
      const other = await verifier.verify(adminKey.key);
      if (!verified.ok || !other.ok) throw new Error('test keys must verify');
      const a = await sessions.create(verified.principal);
      const b = await sessions.create(verified.principal);
      const kept = await sessions.create(other.principal);
      expect(await sessions.destroyForKey(key.id)).toBe(2);
      expect((await sessions.get(a.id)).ok).toBe(false);
      expect((await sessions.get(b.id)).ok).toBe(false);
      expect((await sessions.get(kept.id)).ok).toBe(true);
    });

    it('purges sessions past their absolute limit or idle timeout and keeps live ones', async () => {
      const verified = await verifier.verify(adminKey.key);
      if (!verified.ok) throw new Error('test key must verify');
      const start = clock;
      const store = (idleTimeoutMs: number, absoluteTimeoutMs: number) => new DatabaseSessionStore({ db: t.database.db, idleTimeoutMs, absoluteTimeoutMs, now: () => clock });
      const expired = await store(HOUR, 2 * MINUTE).create(verified.principal);
      const idle = await sessions.create(verified.principal);
      clock = start + 50 * MINUTE;
      const live = await sessions.create(verified.principal);
      clock = start + 61 * MINUTE;
      const present = async () =>
        (await t.database.db.selectFrom('admin_sessions').select('id_hash').where('id_hash', 'in', [expired, idle, live].map((s) => hashSessionId(s.id))).execute()).map((r) => r.id_hash);
      expect(await present()).toHaveLength(3);
      expect(await sessions.purgeExpired()).toBeGreaterThanOrEqual(2);
      expect(await present()).toEqual([hashSessionId(live.id)]);
      expect((await sessions.get(live.id)).ok).toBe(true);
    });

    it('refuses ids that are not session-shaped without a lookup result', async () => {
      for (const id of ['', 'short', `${randomBytes(32).toString('base64url')}=`, randomBytes(32).toString('hex')]) {
        expect(await sessions.get(id)).toEqual({ ok: false, reason: 'unknown' });
        expect(await sessions.destroy(id)).toBe(false);
      }
    });
  });

  describe('options', () => {
    it('names the bad option when built with one', () => {
      expect(() => new DatabaseSessionStore({ db: t.database.db, idleTimeoutMs: 0 })).toThrow(/idleTimeoutMs/);
      expect(() => new DatabaseSessionStore({ db: t.database.db, absoluteTimeoutMs: 1.5 })).toThrow(/absoluteTimeoutMs/);
      expect(() => new DatabaseSessionStore({ db: t.database.db, idleTimeoutMs: MINUTE, touchIntervalMs: MINUTE })).toThrow(/touchIntervalMs/);
      expect(() => csrfProtection({ headerName: 'bad header', getExpectedToken: () => undefined, audit })).toThrow(/headerName/);
      expect(() => csrfProtection({ formField: '', getExpectedToken: () => undefined, audit })).toThrow(/formField/);
    });

    it('refuses to open a session for the anonymous principal', async () => {
      await expect(sessions.create({ kind: 'anonymous', tenant: 'default', keyId: 'anonymous', keyName: 'anonymous', scopes: ['admin'], expiresAt: null })).rejects.toThrow(/anonymous/);
    });
  });
});
