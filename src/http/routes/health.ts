/**
 * Liveness and readiness. `/health` (public, no auth) says only that the process answers and
 * its version; `/health/ready` (admin listener) checks the database.
 */
import { Hono } from 'hono';
import { VERSION } from '../../version.js';
import type { BulwarkEnv } from '../context.js';
import type { Database } from '../../store/database.js';

export function healthRoutes(): Hono<BulwarkEnv> {
  return new Hono<BulwarkEnv>().get('/health', (c) => c.json({ status: 'ok', version: VERSION }));
}

export function readinessRoutes(database: Database): Hono<BulwarkEnv> {
  return new Hono<BulwarkEnv>().get('/health/ready', async (c) => {
    const started = performance.now();
    try {
      await Promise.race([database.ping(), new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), 2_000).unref())]);
      return c.json({ status: 'ready', database: { kind: database.kind, ms: Math.round(performance.now() - started) } });
    } catch {
      return c.json({ status: 'unavailable', database: { kind: database.kind, error: 'database did not answer' } }, 503);
    }
  });
}
