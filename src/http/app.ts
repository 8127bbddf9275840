/**
 * Assembles Bulwark's two Hono apps. This file is where the request pipeline's order lives
 * (DESIGN.md): request id → client address → access log → compression → security headers →
 * IP allow-list → [health] → Host / Origin (DNS rebinding) → CORS → body limit → per-address
 * rate limit and lockout → authentication → per-key IP allow-list → per-key/tenant/route rate
 * limit → authorization → route. Public routes that need no credential are registered before
 * `authenticate`; every other route is behind it, so a route added later is authenticated
 * unless moved up here.
 */
import { type Context, Hono, type MiddlewareHandler } from 'hono';
import { authenticate, requireScope } from '../auth/middleware.js';
import { isLoopbackHost } from '../config/safety.js';
import { type ProxyOptions, anthropicErrors, proxyRoutes } from '../proxy/routes.js';
import type { CallModel, CallerFacts, ModelMessage } from '../agent/agent.js';
import { agentRoutes } from '../agent/routes.js';
import { ticketAuth } from '../agent/tickets.js';
import { agentCardRoutes } from '../agent/card.js';
import { openApiRoutes } from './openapi.js';
import { VERSION } from '../version.js';
import type { Principal } from '../auth/principal.js';
import { bodyLimit } from '../security/body-limit.js';
import { clientAddress } from '../security/client-ip.js';
import { compress } from '../security/compress.js';
import { cors } from '../security/cors.js';
import { csrfProtection } from '../security/csrf.js';
import { securityHeaders } from '../security/headers.js';
import { hostCheck } from '../security/host.js';
import { originCheck } from '../security/origin.js';
import { ipAllowlist } from '../security/ip-allowlist.js';
import { keyIpAllowlist } from '../security/key-ip-allowlist.js';
import { ipRateLimit } from '../security/ip-rate-limit.js';
import { type RequestClass, principalRateLimit } from '../security/principal-rate-limit.js';
import { accessLog } from './access-log.js';
import { clientIp, requestPath } from './client-info.js';
import type { BulwarkEnv } from './context.js';
import { errorHandler, notFoundHandler } from './errors.js';
import { requestId } from './request-id.js';
import { MCP_PATH, resourceMetadataRoutes, resourceMetadataUrl } from '../mcp/metadata.js';
import { adminApiRoutes } from './routes/admin-api.js';
import { authTokenRoutes, jwksRoutes } from './routes/auth-token.js';
import { healthRoutes, readinessRoutes } from './routes/health.js';
import { loginRoutes, sessionAuth, sessionCsrfToken } from './routes/login.js';
import { whoamiRoutes } from './routes/whoami.js';
import { type Runtime, mcpResourceAudience } from './runtime.js';

type Listener = 'public' | 'admin';

/** Everything before the listener's own public routes: identification, logging, headers, address checks. */
function baseApp(runtime: Runtime, listener: Listener): Hono<BulwarkEnv> {
  const { config } = runtime;
  const app = new Hono<BulwarkEnv>();
  app.onError(
    errorHandler((err, c) => {
      runtime.logger.error({ err, requestId: c.get('requestId'), path: requestPath(c) }, 'unhandled error');
    }),
  );
  app.notFound(notFoundHandler);
  app.use('*', requestId());
  // Anthropic-compatible routes answer every error, the protection layers' included, in Anthropic's shape.
  if (listener === 'public') app.use('/v1/*', anthropicErrors());
  app.use('*', clientAddress({ trustedProxies: config.http.trustedProxies, source: config.http.forwardedHeader }));
  // The admin listener's lines carry the auth-off warning too: the deployment as a whole runs with the public side open.
  app.use('*', accessLog({ logger: runtime.logger, listener, authDisabled: !config.auth.enabled }));
  app.use('*', compress({ thresholdBytes: config.http.compressionThresholdBytes }));
  const tls = listener === 'public' ? config.tls.cert !== undefined : config.tls.admin;
  app.use('*', securityHeaders({ hsts: config.http.hsts || tls }));
  app.use('*', ipAllowlist({ allow: listener === 'public' ? config.http.ipAllowlist : config.admin.ipAllowlist, audit: runtime.audit, listener }));
  return app;
}

/** Host and Origin checks, body limit, per-address limits: the layers every non-health route passes before authentication. */
function edge(app: Hono<BulwarkEnv>, runtime: Runtime, listener: Listener): void {
  const { config, audit } = runtime;
  // Loopback names in development, and on a listener bound to loopback (the CLI's way to the admin
  // listener, a reverse proxy on the same host); production answers only for its configured names.
  const bind = listener === 'public' ? config.server.host : config.admin.host;
  const allowLoopback = config.mode === 'development' || isLoopbackHost(bind);
  app.use('*', hostCheck({ allowedHosts: config.http.allowedHosts, allowLoopback, audit }));
  // The admin listener's pages are same-origin only; no other site may drive them.
  app.use('*', originCheck({ allowedOrigins: listener === 'public' ? config.http.corsOrigins : [], audit }));
  if (listener === 'public') app.use('*', cors({ origins: config.http.corsOrigins }));
  app.use(
    '*',
    bodyLimit({
      defaultBytes: config.http.bodyLimitBytes,
      ...(listener === 'public' ? { routes: [{ prefix: '/v1/messages', bytes: config.http.llmBodyLimitBytes }] } : {}),
    }),
  );
  app.use('*', ipRateLimit({ limiter: runtime.rateLimiter.limiter, perMinute: config.rateLimits.ipPerMinute, lockout: runtime.authFailures, audit, clientIp, onRefused: countRefusal(runtime) }));
}

/** After authentication: the key's own address list, then its request limits. */
function afterAuthentication(app: Hono<BulwarkEnv>, runtime: Runtime, listener: Listener): void {
  const { audit } = runtime;
  app.use('*', keyIpAllowlist({ audit }));
  // /v1 calls are `llm` (their token and budget limits live in the proxy); the admin listener is `admin`.
  app.use('*', principalLimits(runtime, (c) => (listener === 'admin' ? 'admin' : c.req.path.startsWith('/v1/') ? 'llm' : c.req.method === 'GET' || c.req.method === 'HEAD' ? 'read' : 'write')));
}

/** The per-key, per-tenant and per-route request limits, with requests sorted into classes by `classify`. */
function principalLimits(runtime: Runtime, classify: (c: Context<BulwarkEnv>) => RequestClass): MiddlewareHandler<BulwarkEnv> {
  const { config } = runtime;
  return principalRateLimit({
    limiter: runtime.rateLimiter.limiter,
    rules: { key: config.rateLimits.keyPerMinute, tenant: config.rateLimits.tenantPerMinute, routes: config.rateLimits.routes },
    classify,
    audit: (event) => runtime.audit(event),
    clientIp,
    onRefused: countRefusal(runtime),
  });
}

/** Every 429 counted by limit; only the first of each window is an audit event. */
function countRefusal(runtime: Runtime): (limit: string) => void {
  return (limit) => runtime.metrics.inc('bulwark_rate_limited_total', 'Requests refused with 429 by the rate limits and lockouts, by limit.', { limit });
}

/** The public listener: LLM proxy, MCP, agent API and health. */
export function createPublicApp(runtime: Runtime): Hono<BulwarkEnv> {
  const { config, audit } = runtime;
  const app = baseApp(runtime, 'public');

  // Public without a credential: exactly these. Health answers load balancers whatever Host they send.
  app.route('/', healthRoutes());
  edge(app, runtime, 'public');
  if (runtime.jwtIssuer) app.route('/', jwksRoutes(runtime.jwtIssuer));
  app.route(
    '/',
    resourceMetadataRoutes({
      publicUrl: config.server.publicUrl,
      // Only an authorization server whose tokens /mcp can check (it needs a fixed resource URL).
      authorizationServers: config.oidc && mcpResourceAudience(config) ? [config.oidc.issuer] : [],
      scopes: () => runtime.mcpRegistry.scopes(),
    }),
  );

  app.route('/', agentCardRoutes({ agent: config.agent, version: VERSION, publicUrl: config.server.publicUrl }));
  app.route('/', openApiRoutes({ version: VERSION, publicUrl: config.server.publicUrl, jwt: runtime.jwtIssuer !== undefined }));

  // Browsers' EventSource cannot send headers: /api/events alone takes a single-use ticket instead.
  app.use(
    '/api/events',
    ticketAuth({
      tickets: runtime.eventTickets,
      audit,
      keyStillValid: (id) => runtime.keyStillValid(id),
      onFailure: (ip, c) => runtime.authFailures.recordFailure(ip, c),
      publicUrl: config.server.publicUrl,
    }),
  );
  app.use(
    '*',
    authenticate({
      verifier: runtime.publicVerifier,
      tokenVerifiers: runtime.tokenVerifiers,
      tokenVerifiersFor: (path) => (path === MCP_PATH ? runtime.mcpTokenVerifiers : undefined),
      audit,
      required: config.auth.enabled,
      onFailure: (ip, c) => runtime.authFailures.recordFailure(ip, c),
      // RFC 9728 §5.1: an MCP client learns from the 401 where to get a token for this resource.
      challengeParams: (c) => (c.req.path === MCP_PATH ? `resource_metadata="${resourceMetadataUrl(c, config.server.publicUrl)}"` : undefined),
    }),
  );
  afterAuthentication(app, runtime, 'public');
  app.route('/', whoamiRoutes());
  if (runtime.jwtIssuer) app.route('/', authTokenRoutes({ issuer: runtime.jwtIssuer, audit }));
  app.route('/', runtime.mcp.routes());
  const proxyOptions: ProxyOptions = {
    ledger: runtime.ledger,
    subjectsFor: (principal) => runtime.subjectsFor(principal),
    prices: config.prices,
    upstream: runtime.upstream,
    credentials: runtime.credentials,
    oauth: runtime.oauth,
    requestLog: runtime.requestLog,
    audit,
    allowPaths: config.upstream.allowPaths,
    storeBodies: config.storage.bodies ? runtime.keyRing : undefined,
    metrics: runtime.metrics,
    stallTimeoutMs: config.upstream.idleTimeoutMs,
  };
  app.route(
    '/',
    agentRoutes({
      registry: runtime.mcpRegistry,
      callModel: internalModelCalls(runtime, proxyOptions),
      toolCallRefusal: (principal, tool) => runtime.mcp.toolCallRefusal(principal, tool),
      closeToolSession: (hash) => runtime.closeUpstreamSessions(hash),
      maxResultBytes: config.mcp.maxResultBytes,
      sessions: runtime.agentSessions,
      feed: runtime.agentFeed,
      tickets: runtime.eventTickets,
      model: config.agent.model,
      models: config.agent.models,
      systemPrompt: config.agent.systemPrompt,
      maxSteps: config.agent.maxSteps,
      maxTokens: config.agent.maxTokens,
      audit,
      logger: runtime.logger,
    }),
  );
  app.route('/', proxyRoutes(proxyOptions));
  return app;
}

/**
 * The agent's model calls: Bulwark's own `/v1/messages` route, run in-process as the caller, so
 * each call meets the same limits, budget, model list, upstream credential and `requests` row
 * as a client's. The caller rides in a WeakMap keyed by the internal request, which nothing
 * outside this function can build.
 */
function internalModelCalls(runtime: Runtime, proxyOptions: ProxyOptions): CallModel {
  const { config } = runtime;
  const callers = new WeakMap<Request, { principal: Principal; facts: CallerFacts }>();
  const internal = new Hono<BulwarkEnv>();
  internal.onError(errorHandler((err) => runtime.logger.error({ err }, 'agent model call failed')));
  internal.use('*', anthropicErrors());
  internal.use('*', async (c, next) => {
    const caller = callers.get(c.req.raw);
    if (!caller) throw new Error('an internal model call without its caller');
    // The row of the call carries the agent request's id, address and user agent.
    c.set('requestId', caller.facts.requestId);
    c.set('clientIp', caller.facts.ip);
    c.set('principal', caller.principal);
    await next();
  });
  // What a client's /v1/messages call meets after authentication: the LLM body limit and the `llm` request limits.
  internal.use('*', bodyLimit({ defaultBytes: config.http.llmBodyLimitBytes }));
  internal.use('*', principalLimits(runtime, () => 'llm'));
  internal.route('/', proxyRoutes(proxyOptions));
  return async (principal, body, signal, facts) => {
    const request = new Request('http://bulwark.internal/v1/messages', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'user-agent': facts.userAgent ?? 'bulwark-agent' },
      body: JSON.stringify(body),
      signal,
    });
    callers.set(request, { principal, facts });
    const response = await internal.fetch(request);
    const payload = (await response.json().catch(() => ({}))) as ModelMessage & { error?: { type?: string; message?: string } };
    if (response.ok) return { ok: true, message: payload };
    return {
      ok: false,
      status: response.status,
      type: payload.error?.type ?? 'api_error',
      message: payload.error?.message ?? `status ${response.status}`,
      headers: Object.fromEntries(response.headers),
    };
  };
}

/** The admin listener: browser sign-in, admin API, metrics and readiness. Always authenticated, even with BULWARK_AUTH=off. */
export function createAdminApp(runtime: Runtime): Hono<BulwarkEnv> {
  const { config, audit } = runtime;
  const app = baseApp(runtime, 'admin');

  app.route('/', readinessRoutes(runtime.database));
  edge(app, runtime, 'admin');

  // Browsers refuse `__Host-` cookies without Secure, and Secure cookies need HTTPS.
  const sessionOptions = { sessions: runtime.sessions, keyStillValid: (id: string) => runtime.keyStillValid(id), audit, secureCookies: config.tls.admin };
  // Sign-in comes before the session check, so a stale cookie cannot stand in the way of a new login.
  const onFailure = (ip: string | undefined, c: Context) => runtime.authFailures.recordFailure(ip, c);
  app.route('/', loginRoutes({ ...sessionOptions, verifier: runtime.adminVerifier, onFailure }));
  app.use('*', sessionAuth(sessionOptions));
  app.use('*', authenticate({ verifier: runtime.adminVerifier, audit, required: true, onFailure }));
  // Cookie-authenticated changes need the session's CSRF token; header credentials are not ambient and pass.
  app.use('*', csrfProtection({ getExpectedToken: sessionCsrfToken, audit }));
  afterAuthentication(app, runtime, 'admin');
  // Prometheus scrapers get a key with just the `metrics` scope; everything else needs `admin`.
  app.get('/metrics', requireScope(['metrics', 'admin'], { audit }), (c) =>
    c.text(runtime.metrics.render(), 200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }),
  );
  app.use('*', requireScope('admin', { audit }));
  app.route('/', adminApiRoutes({ mcp: runtime.mcp, keyRing: runtime.keyRing, keyService: runtime.keyService, proxyManagement: runtime.proxyManagement, auditReader: runtime.auditReader, audit }));
  return app;
}
