/**
 * The credential-free surface, over real HTTP: every route both Hono apps register (read from
 * the apps themselves, so a route added later is probed without anyone listing it) is sent a
 * request with no credential. Only the allow-list below may answer 2xx; every other route must
 * refuse with 400/401/403/404/405, and nothing may crash (5xx) for want of a credential.
 */
import type { Hono } from 'hono';
import { inspectRoutes } from 'hono/dev';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BulwarkEnv } from '../src/http/context.js';
import { type TestBulwark, startTestBulwark } from './helpers/runtime.js';

type Listener = 'public' | 'admin';

/**
 * The routes that answer without a credential: exactly these, nothing else. Adding a public route
 * means adding it here deliberately, in the same change that registers it before `authenticate`
 * in src/http/app.ts.
 */
const PUBLIC_ROUTES: Readonly<Record<Listener, readonly string[]>> = {
  public: ['GET /health', 'GET /.well-known/jwks.json', 'GET /.well-known/oauth-protected-resource', 'GET /.well-known/oauth-protected-resource/mcp', 'GET /.well-known/agent-card.json', 'GET /openapi.json'],
  admin: ['GET /health/ready'],
};

/** Below these the enumeration itself is broken (a filter that drops real routes), not the apps. */
const MIN_ROUTES: Readonly<Record<Listener, number>> = { public: 8, admin: 15 };

/** Refusals that leak nothing: malformed input, no credential, no scope, no such thing, wrong method. */
const REFUSALS: ReadonlySet<number> = new Set([400, 401, 403, 404, 405]);

/** `app.all(...)` routes accept any method; these three cover reads, writes and deletions. */
const METHODS_FOR_ALL = ['GET', 'POST', 'DELETE'] as const;

/** Well-formed values, so a route that forgot authentication would get past its own validation. */
const PARAM_VALUES: Readonly<Record<string, string>> = { id: 'k1a2b3c4d5', tenant: 'default', ref: '0123456789abcdef' };

interface Route {
  method: string;
  path: string;
}

interface Probe {
  listener: Listener;
  /** `METHOD /path` as registered (the allow-list's form). */
  route: string;
  method: string;
  url: string;
  status: number;
  excerpt: string;
}

/**
 * The routes an app registered, one per method and path. Hono 4 keeps every handler in
 * `app.routes`; `app.use(path, mw)` records method `ALL` with a handler of arity 2 (`c, next`),
 * which Hono's own `inspectRoutes` calls middleware (after unwrapping sub-app error handlers).
 * An `ALL` entry is middleware only if every handler at that path is; `app.all('/v1/*', mw, h)`
 * shares `ALL /v1/*` with `app.use('/v1/*', …)` and is still a route.
 */
function registeredRoutes(app: Hono<BulwarkEnv>): Route[] {
  const byKey = new Map<string, { route: Route; handler: boolean }>();
  for (const entry of inspectRoutes(app)) {
    const key = `${entry.method} ${entry.path}`;
    const seen = byKey.get(key) ?? { route: { method: entry.method, path: entry.path }, handler: false };
    seen.handler ||= !entry.isMiddleware || entry.method !== 'ALL';
    byKey.set(key, seen);
  }
  return [...byKey.values()].filter((r) => r.handler).map((r) => r.route);
}

/** `/api/keys/:id` → `/api/keys/k1a2b3c4d5`; `/v1/*` → `/v1/x` (also `:name{regex}` and `:name?`). */
function concretePath(path: string): string {
  const filled = path.replace(/:(\w+)(\{[^}]*\})?\??/g, (_match, name: string) => PARAM_VALUES[name] ?? 'x1').replace(/\*/g, 'x');
  return filled.startsWith('/') ? filled : `/${filled}`;
}

/** Sends one credential-free request; a body that never ends (an unexpected stream) is cut off, not awaited. */
async function probe(listener: Listener, baseUrl: string, route: Route, method: string): Promise<Probe> {
  const url = `${baseUrl}${concretePath(route.path)}`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 5_000);
  try {
    const response = await fetch(url, {
      method,
      redirect: 'manual',
      signal: controller.signal,
      ...(method === 'GET' ? {} : { headers: { 'content-type': 'application/json' }, body: '{}' }),
    });
    const excerpt = await response.text().then(
      (text) => text.slice(0, 200),
      () => '<body still streaming after 5 s>',
    );
    return { listener, route: `${route.method} ${route.path}`, method, url, status: response.status, excerpt };
  } finally {
    clearTimeout(timer);
  }
}

function describeProbe(p: Probe): string {
  return `${p.listener}: ${p.method} ${new URL(p.url).pathname} (route ${p.route}) answered ${p.status}: ${p.excerpt}`;
}

describe('routes without a credential (PostgreSQL, development mode, auth on)', () => {
  let b: TestBulwark;
  const routes: Record<Listener, Route[]> = { public: [], admin: [] };
  const probes: Probe[] = [];

  beforeAll(async () => {
    b = await startTestBulwark('postgres', {}, { listen: true });
    routes.public = registeredRoutes(b.publicApp);
    routes.admin = registeredRoutes(b.adminApp);
    for (const listener of ['public', 'admin'] as const) {
      const baseUrl = listener === 'public' ? b.publicUrl : b.adminUrl;
      for (const route of routes[listener]) {
        const methods = route.method === 'ALL' ? METHODS_FOR_ALL : [route.method];
        for (const method of methods) probes.push(await probe(listener, baseUrl, route, method));
      }
    }
  });

  afterAll(async () => {
    await b?.close();
  });

  it('enumerates enough routes on each listener that a broken enumeration cannot pass', () => {
    const counts = { public: routes.public.length, admin: routes.admin.length };
    expect(counts.public, `public routes: ${routes.public.map((r) => `${r.method} ${r.path}`).join(', ')}`).toBeGreaterThanOrEqual(MIN_ROUTES.public);
    expect(counts.admin, `admin routes: ${routes.admin.map((r) => `${r.method} ${r.path}`).join(', ')}`).toBeGreaterThanOrEqual(MIN_ROUTES.admin);
  });

  it('registers every allow-listed route and answers it with 200 without a credential', () => {
    const problems: string[] = [];
    for (const listener of ['public', 'admin'] as const) {
      for (const allowed of PUBLIC_ROUTES[listener]) {
        const answers = probes.filter((p) => p.listener === listener && p.route === allowed);
        if (answers.length === 0) problems.push(`${listener}: ${allowed} is allow-listed but not registered`);
        for (const p of answers) if (p.status !== 200) problems.push(describeProbe(p));
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('refuses every other route with 400/401/403/404/405, never 2xx and never 5xx', () => {
    const others = probes.filter((p) => !(p.method === 'GET' && PUBLIC_ROUTES[p.listener].includes(p.route)));
    expect(others.length).toBeGreaterThan(0);
    const leaks = others.filter((p) => !REFUSALS.has(p.status));
    expect(leaks.map(describeProbe), leaks.map(describeProbe).join('\n')).toEqual([]);
  });
});
