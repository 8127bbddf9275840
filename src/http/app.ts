/**
 * Assembles Bulwark's two Hono apps. This file is where the request pipeline's order lives
 * (DESIGN.md): request id → access log → [protection layers] → authentication → authorization
 * → route. Public routes that need no credential are registered before `authenticate`; every
 * other route is behind it, so a route added later is authenticated unless moved up here.
 */
import { Hono } from 'hono';
import { authenticate, requireScope } from '../auth/middleware.js';
import { anthropicErrors, proxyRoutes } from '../proxy/routes.js';
import { accessLog } from './access-log.js';
import type { BulwarkEnv } from './context.js';
import { errorHandler, notFoundHandler } from './errors.js';
import { requestId } from './request-id.js';
import { adminApiRoutes } from './routes/admin-api.js';
import { healthRoutes, readinessRoutes } from './routes/health.js';
import { whoamiRoutes } from './routes/whoami.js';
import type { Runtime } from './runtime.js';

function baseApp(runtime: Runtime, listener: 'public' | 'admin', authDisabled: boolean): Hono<BulwarkEnv> {
  const app = new Hono<BulwarkEnv>();
  app.onError(
    errorHandler((err, c) => {
      (c.get('logger') ?? runtime.logger).error({ err, path: new URL(c.req.url).pathname }, 'unhandled error');
    }),
  );
  app.notFound(notFoundHandler);
  app.use('*', requestId());
  app.use('*', accessLog({ logger: runtime.logger, listener, authDisabled }));
  return app;
}

/** The public listener: LLM proxy, MCP, agent API and health. */
export function createPublicApp(runtime: Runtime): Hono<BulwarkEnv> {
  const authRequired = runtime.config.auth.enabled;
  const app = baseApp(runtime, 'public', !authRequired);

  // Public without a credential: exactly these.
  app.route('/', healthRoutes());

  // Anthropic-compatible routes answer errors (including authentication's) in Anthropic's shape.
  app.use('/v1/*', anthropicErrors());
  app.use('*', authenticate({ verifier: runtime.publicVerifier, audit: runtime.audit, required: authRequired }));
  app.route('/', whoamiRoutes());
  app.route(
    '/',
    proxyRoutes({
      ledger: runtime.ledger,
      subjectsFor: (principal) => runtime.subjectsFor(principal),
      prices: runtime.config.prices,
      upstream: runtime.upstream,
      credentials: runtime.credentials,
      oauth: runtime.oauth,
      requestLog: runtime.requestLog,
      audit: runtime.audit,
      allowPaths: runtime.config.upstream.allowPaths,
      storeBodies: runtime.config.storage.bodies ? runtime.keyRing : undefined,
      metrics: runtime.metrics,
      stallTimeoutMs: runtime.config.upstream.idleTimeoutMs,
    }),
  );
  return app;
}

/** The admin listener: admin API and readiness. Always authenticated, even with BULWARK_AUTH=off. */
export function createAdminApp(runtime: Runtime): Hono<BulwarkEnv> {
  // The admin listener always authenticates, but its lines carry the warning too: the
  // deployment as a whole is running with the public side open.
  const app = baseApp(runtime, 'admin', !runtime.config.auth.enabled);

  app.route('/', readinessRoutes(runtime.database));

  app.use('*', authenticate({ verifier: runtime.adminVerifier, audit: runtime.audit, required: true }));
  // Prometheus scrapers get a key with just the `metrics` scope; everything else needs `admin`.
  app.get('/metrics', requireScope(['metrics', 'admin'], { audit: runtime.audit }), (c) =>
    c.text(runtime.metrics.render(), 200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }),
  );
  app.use('*', requireScope('admin', { audit: runtime.audit }));
  app.route('/', adminApiRoutes({ keyService: runtime.keyService, proxyManagement: runtime.proxyManagement, auditReader: runtime.auditReader, audit: runtime.audit }));
  return app;
}
