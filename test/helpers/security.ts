/**
 * The security cases every authenticated route must pass, run through one helper (STYLE.md 10):
 * no credential, a malformed one, a wrong key, a key without the route's scope, the protection
 * layers' headers, a foreign Host (DNS rebinding) and a foreign Origin.
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

    it(`${name}: answers with the security headers, even when it refuses`, async () => {
      const response = await ctx.app().request(route.path, request(route, {}));
      expect(response.headers.get('x-content-type-options')).toBe('nosniff');
      expect(response.headers.get('x-frame-options')).toBe('DENY');
      expect(response.headers.get('content-security-policy')).toContain("frame-ancestors 'none'");
      expect(response.headers.get('referrer-policy')).toBe('no-referrer');
      expect(response.headers.get('cache-control')).toBe('no-store');
      expect(response.headers.get('x-powered-by')).toBeNull();
    });

    it(`${name}: refuses a foreign Host with 421 before looking at the credential`, async () => {
      const good = await ctx.key(['admin']);
      const response = await ctx.app().request(route.path, request(route, { host: 'rebound.attacker.test', authorization: `Bearer ${good}` }));
      expect(response.status).toBe(421);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('host_not_allowed');
    });

    it(`${name}: refuses a valid key sent from a foreign Origin with 403 origin_not_allowed`, async () => {
      const good = await ctx.key(['admin']);
      const response = await ctx.app().request(route.path, request(route, { origin: 'https://attacker.test', authorization: `Bearer ${good}` }));
      expect(response.status).toBe(403);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('origin_not_allowed');
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
