/**
 * The security cases every authenticated route must pass, run through one helper (STYLE.md 10):
 * no credential, a malformed one, a wrong key, and a key without the route's scope.
 */
import type { Hono } from 'hono';
import { expect, it } from 'vitest';

export interface RouteUnderTest {
  method: string;
  path: string;
  /** The scope the route needs; a key with only `read` is refused unless it is `read`. */
  scope: 'read' | 'write' | 'admin' | 'any';
  body?: unknown;
}

export interface CommonRouteContext {
  app(): Hono<any>;
  /** A valid key with exactly these scopes. */
  key(scopes: string[]): Promise<string>;
}

function request(route: RouteUnderTest, headers: Record<string, string>): RequestInit {
  return {
    method: route.method,
    headers: { ...headers, ...(route.body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(route.body !== undefined ? { body: JSON.stringify(route.body) } : {}),
  };
}

export function runCommonRouteTests(routes: readonly RouteUnderTest[], ctx: CommonRouteContext): void {
  for (const route of routes) {
    const name = `${route.method} ${route.path}`;

    it(`${name}: refuses a request without a credential with 401 and WWW-Authenticate`, async () => {
      const response = await ctx.app().request(route.path, request(route, {}));
      expect(response.status).toBe(401);
      expect(response.headers.get('www-authenticate')).toMatch(/^Bearer /);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
    });

    it(`${name}: refuses a malformed Authorization header with 400`, async () => {
      const response = await ctx.app().request(route.path, request(route, { authorization: 'Token abc' }));
      expect(response.status).toBe(400);
    });

    it(`${name}: refuses a wrong key with 401 invalid_token`, async () => {
      const good = await ctx.key(['admin']);
      const response = await ctx.app().request(route.path, request(route, { authorization: `Bearer ${good.slice(0, -3)}xyz` }));
      expect(response.status).toBe(401);
      expect(response.headers.get('www-authenticate')).toContain('error="invalid_token"');
    });

    if (route.scope !== 'any' && route.scope !== 'read') {
      it(`${name}: refuses a read-only key with 403 insufficient_scope`, async () => {
        const reader = await ctx.key(['read']);
        const response = await ctx.app().request(route.path, request(route, { 'x-api-key': reader }));
        expect(response.status).toBe(403);
        expect(((await response.json()) as { error: { code: string } }).error.code).toBe('insufficient_scope');
      });
    }
  }
}
