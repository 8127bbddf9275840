/**
 * The error envelope and the one error handler: precise statuses for client errors, and a 500
 * that never carries an internal message or stack.
 */
import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import type { BulwarkEnv } from '../src/http/context.js';
import { ApiError, ERROR_STATUS, errorHandler, notFoundHandler } from '../src/http/errors.js';
import { requestId } from '../src/http/request-id.js';

function appThatThrows(error: unknown) {
  const logged: unknown[] = [];
  const app = new Hono<BulwarkEnv>();
  app.onError(errorHandler((err) => logged.push(err)));
  app.notFound(notFoundHandler);
  app.use('*', requestId());
  app.get('/boom', () => {
    throw error;
  });
  return { app, logged };
}

describe('error handler', () => {
  it('answers an unexpected error with a bare 500 and logs it, leaking neither message nor stack', async () => {
    const internal = new Error('connection to postgres://bulwark:hunter2@db.internal/prod failed at Pool.connect');
    const { app, logged } = appThatThrows(internal);
    const response = await app.request('/boom');
    expect(response.status).toBe(500);
    const text = await response.text();
    expect(JSON.parse(text)).toEqual({ error: { code: 'internal_error', message: 'Internal server error.', requestId: response.headers.get('x-request-id') } });
    for (const leak of ['hunter2', 'db.internal', 'Pool.connect', 'at ']) expect(text).not.toContain(leak);
    expect(logged).toEqual([internal]);
  });

  it('answers an ApiError with its status, message and headers, without logging it', async () => {
    const { app, logged } = appThatThrows(new ApiError('rate_limited', 'Slow down.', { 'Retry-After': '7' }));
    const response = await app.request('/boom');
    expect(response.status).toBe(429);
    expect(response.headers.get('retry-after')).toBe('7');
    expect(((await response.json()) as { error: Record<string, unknown> }).error).toMatchObject({ code: 'rate_limited', message: 'Slow down.' });
    expect(logged).toEqual([]);
  });

  it('answers an unknown route with 404 in the envelope', async () => {
    const { app } = appThatThrows(new Error('unused'));
    const response = await app.request('/missing');
    expect(response.status).toBe(404);
    expect(((await response.json()) as { error: Record<string, unknown> }).error.code).toBe('not_found');
  });

  it('maps every code in the closed list to a client or server error status', () => {
    for (const [code, status] of Object.entries(ERROR_STATUS)) {
      expect(status, code).toBeGreaterThanOrEqual(400);
      expect(status, code).toBeLessThan(600);
    }
    expect(ERROR_STATUS).toMatchObject({ malformed_credential: 400, unauthorized: 401, insufficient_scope: 403, not_found: 404, payload_too_large: 413, rate_limited: 429, upstream_error: 502, upstream_timeout: 504 });
  });
});
