/** `GET /api/whoami`: the caller's principal as Bulwark sees it — never the key itself. */
import { Hono } from 'hono';
import { describePrincipal } from '../../auth/principal.js';
import type { BulwarkEnv } from '../context.js';

export function whoamiRoutes(): Hono<BulwarkEnv> {
  return new Hono<BulwarkEnv>().get('/api/whoami', (c) => c.json(describePrincipal(c.get('principal'))));
}
