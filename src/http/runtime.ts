/**
 * Builds the services a running Bulwark needs from a config and an open database, wired
 * together once: repositories, the key verifiers of both listeners, key management, the audit
 * log and the last-used writer. The CLI builds the same runtime when it works on the store
 * directly, so both paths run the same code.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { AuditLog, type AuditEventInput, type AuditReader, createAuditReader } from '../audit/log.js';
import { KeyService } from '../auth/key-service.js';
import { type KeyPrefix, createKeyHasher } from '../auth/keys.js';
import { DEFAULT_TENANT } from '../auth/principal.js';
import { KeyVerifier, type StaticCredential, staticPrincipal } from '../auth/verify.js';
import type { Principal } from '../auth/principal.js';
import type { Config } from '../config/load.js';
import { LimitSetSchema } from '../config/schema.js';
import { sql } from 'kysely';
import type { Database } from '../store/database.js';
import { KeyRepository, TenantRepository } from '../store/repositories.js';
import { WriteBehind, type WriteBehindReport, isDataError } from '../store/write-behind.js';
import { FileCredentials, StoredCredentials } from '../proxy/credentials.js';
import { ProxyManagement } from '../proxy/management.js';
import { BudgetLedger, type Subject } from '../proxy/limits.js';
import { OAuthRefresher } from '../proxy/oauth.js';
import { type Alerter, createAlerter, slackSink, webhookSink } from '../monitor/alerts.js';
import { Metrics } from '../monitor/metrics.js';
import { type RequestLog, createRequestLog } from '../proxy/request-log.js';
import type { CredentialResolver } from '../proxy/routes.js';
import { Upstream } from '../proxy/upstream.js';
import { KeyRing } from '../store/crypto.js';
import { prepareDataDir, writePrivateFile } from '../store/data-dir.js';
import { type JwtAlgorithm, type JwtIssuer, type TokenVerifier, bulwarkTokenVerifier, createBulwarkJwt, generateJwtSigningMaterial, oidcVerifier } from '../auth/jwt.js';
import { DatabaseSessionStore, type SessionStore, keyStillValidInStore } from '../auth/sessions.js';
import { type AuthFailureTracker, authFailureTracker } from '../security/lockout.js';
import { MemoryRateLimiter, type RateLimiterRuntime } from '../security/rate-limiter.js';
import type { Logger } from './logger.js';
import { maskedConfig } from '../config/print.js';
import { VERSION } from '../version.js';
import { builtinSource } from '../mcp/builtin.js';
import { databaseEventHistory } from '../mcp/event-store.js';
import { McpGateway } from '../mcp/gateway.js';
import { MCP_PATH, resourceMetadataUrl } from '../mcp/metadata.js';
import { McpRegistry } from '../mcp/registry.js';
import { McpSessionStore } from '../mcp/sessions.js';
import { sealToolPayload } from '../mcp/payloads.js';
import { UpstreamSource } from '../mcp/upstream.js';
import { AgentSessionStore } from '../agent/sessions.js';
import { EventFeed } from '../agent/events.js';
import { TicketStore } from '../agent/tickets.js';

export interface Runtime {
  readonly config: Config;
  /** Field encryption (credentials, bodies). */
  readonly keyRing: KeyRing;
  readonly fileCredentials: FileCredentials;
  readonly storedCredentials: StoredCredentials;
  readonly credentials: CredentialResolver;
  readonly upstream: Upstream;
  readonly oauth: OAuthRefresher;
  readonly alerter: Alerter;
  readonly metrics: Metrics;
  readonly ledger: BudgetLedger;
  /** A caller's limit subjects: its key (own limits, or the configured key default) and its tenant. */
  subjectsFor(principal: Principal): Subject[];
  readonly requestLog: RequestLog;
  readonly proxyManagement: ProxyManagement;
  readonly logger: Logger;
  readonly database: Database;
  readonly keys: KeyRepository;
  readonly tenants: TenantRepository;
  readonly keyService: KeyService;
  readonly auditLog: AuditLog;
  readonly auditReader: AuditReader;
  /** Verifies callers of the public listener: store keys and the bootstrap key. */
  readonly publicVerifier: KeyVerifier;
  /** Verifies callers of the admin listener: the above plus the admin token and admin key. */
  readonly adminVerifier: KeyVerifier;
  /** The running server's admin token (random per start), written to the data dir for the CLI. */
  readonly adminToken: string;
  /** Counters for rate limits and lockouts: in process, or shared through Redis. */
  readonly rateLimiter: RateLimiterRuntime;
  /** Authentication failures per address, and the lockouts they lead to. */
  readonly authFailures: AuthFailureTracker;
  /** Signs the JWTs of POST /auth/token; absent in production without BULWARK_JWT_SECRET / a key file. */
  readonly jwtIssuer: JwtIssuer | undefined;
  /** Bearer tokens the public listener accepts besides keys: Bulwark JWTs, then OIDC tokens. */
  readonly tokenVerifiers: readonly TokenVerifier[];
  /** The same for `/mcp`: OIDC tokens must name the MCP resource as their audience (RFC 8707). */
  readonly mcpTokenVerifiers: readonly TokenVerifier[];
  /** The admin listener's cookie sessions. */
  readonly sessions: SessionStore;
  /** Whether the key behind a session may still be used (checked on every session request). */
  keyStillValid(keyId: string): Promise<false | { allowedCidrs: readonly string[] }>;
  readonly startedAt: Date;
  /** What `/mcp` serves, and the endpoint itself with its sessions. */
  readonly mcpRegistry: McpRegistry;
  readonly mcp: McpGateway;
  /** Conversations with Bulwark's agent, encrypted. */
  readonly agentSessions: AgentSessionStore;
  /** The agent's event feed (/api/events) and the tickets browsers use to open it. */
  readonly agentFeed: EventFeed;
  readonly eventTickets: TicketStore;
  /** Ends the upstream MCP sessions opened under a session hash (an MCP session's, or an agent message's). */
  closeUpstreamSessions(sessionHash: string): void;
  /** Connects to the configured upstream MCP servers (in the background; a down one is retried). */
  startUpstreams(): Promise<void>;
  audit(event: AuditEventInput): void;
  /** Writes everything queued now (audit events, last-used times); rejects while the database is away. */
  flush(): Promise<void>;
  /** Re-queues what earlier runs spooled (audit events, last-use times). Call once at start. */
  replaySpools(): number;
  /** Spools queued writes synchronously for an immediate exit; they are replayed at the next start. */
  abandon(): number;
  /** Stops background work (file watching, upstream connections); call after draining. */
  stop(): Promise<void>;
  /** Drains queued writes (audit, last-used) within the deadline; returns how many could not be written. */
  drain(deadlineMs?: number): Promise<number>;
}

export interface RuntimeOptions {
  config: Config;
  logger: Logger;
  database: Database;
  adminToken?: string;
  /** Write-behind flush interval; tests shorten it. */
  flushIntervalMs?: number;
  /** The shared limiter (Redis); without it, counts stay in this process. */
  rateLimiter?: RateLimiterRuntime;
  /** Passed in when something built before the runtime (the Redis limiter) reports into it. */
  metrics?: Metrics;
}

export function keyPrefixFor(config: Config): KeyPrefix {
  return config.mode === 'production' ? 'bwk_live_' : 'bwk_test_';
}

export function createRuntime(options: RuntimeOptions): Runtime {
  const { config, logger, database } = options;
  const spoolDir = path.join(config.dataDir, 'spool');
  const report = (event: WriteBehindReport) => reportWriteBehind(logger, event);
  const keys = new KeyRepository(database.db);
  const tenants = new TenantRepository(database.db);
  const hasher = createKeyHasher(config.secrets.keyHashSecret);
  const anchorFile = path.join(config.dataDir, 'audit-head.json');
  const auditLog = new AuditLog(database.db, { spoolDir, anchorFile, report, ...(options.flushIntervalMs ? { flushIntervalMs: options.flushIntervalMs } : {}) });
  const metrics = options.metrics ?? new Metrics();
  const audit = (event: AuditEventInput) => {
    auditLog.record(event);
    metrics.inc('bulwark_audit_events_total', 'Audit events recorded, by type and outcome (auth failures, denials, refused limits, …).', { type: event.type, outcome: event.outcome });
  };

  // last_used_at: at most one queued item per key however busy it is; the write takes the
  // latest time seen, so the queue stays as small as the number of active keys. The latest
  // time is kept as epoch ms and formatted only when written.
  const latestUse = new Map<string, number>();
  const latestUseIso = (id: string) => {
    const at = latestUse.get(id);
    return at === undefined ? undefined : new Date(at).toISOString();
  };
  const lastUsed: WriteBehind<{ id: string; at: string }> = new WriteBehind<{ id: string; at: string }>({
    name: 'last-used',
    spoolDir,
    report,
    isPermanent: isDataError,
    flushIntervalMs: options.flushIntervalMs ?? 1_000,
    write: async (batch) => {
      const written = new Map<string, string>();
      for (const item of batch) {
        // The item's own time matters when it was replayed from the spool of an earlier run.
        const at = latestUseIso(item.id) ?? item.at;
        if (at > (written.get(item.id) ?? '')) written.set(item.id, at);
      }
      await keys.touchLastUsed(new Map([...written].map(([id, at]) => [id, new Date(at)])));
      for (const [id, at] of written) {
        const newer = latestUseIso(id);
        if (newer === at) latestUse.delete(id);
        else if (newer) lastUsed.push({ id, at: newer }); // used again while we wrote: write the newer time next
      }
    },
  });
  const onKeyUsed = (id: string, atMs: number) => {
    if (!latestUse.has(id)) lastUsed.push({ id, at: new Date(atMs).toISOString() });
    latestUse.set(id, atMs);
  };

  const bootstrap: StaticCredential[] = config.bootstrapKey.key
    ? [{ secret: config.bootstrapKey.key, principal: staticPrincipal('bootstrap', 'bootstrap', 'bootstrap key (BULWARK_API_KEY)', config.bootstrapKey.scopes) }]
    : [];
  const adminToken = options.adminToken ?? randomBytes(32).toString('base64url');
  const operators: StaticCredential[] = [
    { secret: adminToken, principal: staticPrincipal('operator', 'admin-token', 'admin token (data dir)', ['admin']) },
    ...(config.secrets.adminKey
      ? [{ secret: config.secrets.adminKey, principal: staticPrincipal('operator', 'admin-key', 'admin key (BULWARK_ADMIN_KEY)', ['admin']) }]
      : []),
  ];
  const cacheMs = config.auth.keyCacheMs;
  const prefix = keyPrefixFor(config);
  const publicVerifier = new KeyVerifier({ keys, hasher, cacheMs, prefix, staticCredentials: bootstrap, onKeyUsed });
  const adminVerifier = new KeyVerifier({ keys, hasher, cacheMs, prefix, staticCredentials: [...bootstrap, ...operators], onKeyUsed });

  const keyRing = keyRingFor(config, logger);
  const fileCredentials = new FileCredentials({
    dir: config.credentialsDir,
    strictPermissions: config.mode === 'production',
    audit,
    warn: (message, fields) => logger.warn(fields ?? {}, message),
  });
  const storedCredentials = new StoredCredentials({ db: database.db, keyRing });
  const credentials: CredentialResolver = {
    async resolve(tenant) {
      return fileCredentials.get(tenant) ?? (await storedCredentials.get(tenant));
    },
  };
  const upstream = new Upstream({
    baseUrl: config.upstream.url,
    connectTimeoutMs: config.upstream.connectTimeoutMs,
    firstByteTimeoutMs: config.upstream.firstByteTimeoutMs,
    idleTimeoutMs: config.upstream.idleTimeoutMs,
    connections: config.upstream.connections,
  });
  const alerter = createAlerter(
    [
      ...(config.alerts.webhookUrl ? [webhookSink(config.alerts.webhookUrl)] : []),
      ...(config.alerts.slackWebhookUrl ? [slackSink(config.alerts.slackWebhookUrl)] : []),
    ],
    (sink, error) => logger.error({ sink, error }, 'an alert could not be delivered'),
  );
  const oauth = new OAuthRefresher({
    alert: (a) => alerter.alert(a),
    tokenUrl: config.upstream.oauthTokenUrl,
    clientId: config.upstream.oauthClientId,
    refreshBeforeMs: config.upstream.oauthRefreshBeforeSeconds * 1000,
    persist: async (record, credential, expectedRefreshTokens) =>
      record.source === 'file'
        ? fileCredentials.persistIfUnchanged(record.tenant, credential, expectedRefreshTokens)
        : storedCredentials.setIfUnchanged(record.tenant, credential, expectedRefreshTokens),
    audit,
    logError: (message, fields) => logger.error(fields, message),
  });
  const ledger = new BudgetLedger({
    // Day and month totals start from what is stored, so a restart does not reset a budget.
    baseline: async (subject, metric, since) => {
      const column = subject.kind === 'key' ? 'key_id' : 'tenant_id';
      const total =
        metric === 'usd'
          ? sql<string>`coalesce(sum(cost_usd), 0)`
          : sql<string>`coalesce(sum(input_tokens + output_tokens + cache_creation_input_tokens + cache_read_input_tokens), 0)`;
      const row = await database.db.selectFrom('requests').select(total.as('total')).where(column, '=', subject.id).where('time', '>=', since).executeTakeFirst();
      return Number(row?.total ?? 0);
    },
  });
  const subjectsFor = (principal: Principal): Subject[] => {
    const subjects: Subject[] = [];
    const own = principal.limits ? LimitSetSchema.safeParse(principal.limits) : undefined;
    // Limits that cannot be read are not ignored: the key gets a zero-request budget.
    const keyLimits = own ? (own.success ? own.data : { requestsPerMinute: 0 }) : config.limits.keys;
    if (keyLimits) subjects.push({ kind: 'key', id: principal.keyId, limits: keyLimits });
    const tenantLimits = Object.hasOwn(config.limits.tenants, principal.tenant) ? config.limits.tenants[principal.tenant] : undefined;
    if (tenantLimits) subjects.push({ kind: 'tenant', id: principal.tenant, limits: tenantLimits });
    return subjects;
  };
  const requestLog = createRequestLog(database.db, { spoolDir, report, bulkCopy: database.kind === 'pglite', ...(options.flushIntervalMs ? { flushIntervalMs: options.flushIntervalMs } : {}) });

  metrics.collect(() => {
    const queues = { audit: auditLog.stats, 'last-used': lastUsed.stats, requests: requestLog.stats };
    for (const [queue, stats] of Object.entries(queues)) {
      metrics.set('bulwark_write_queue_pending', 'Items waiting to be written to the database.', { queue }, stats.pending);
      metrics.set('bulwark_write_queue_written_total', 'Items written to the database.', { queue }, stats.written, 'counter');
      metrics.set('bulwark_write_queue_spooled_total', 'Items that could not be written in time and went to the spool file (replayed at start).', { queue }, stats.spooled, 'counter');
      metrics.set('bulwark_write_queue_failed_writes_total', 'Database writes that failed and were retried.', { queue }, stats.failedAttempts, 'counter');
    }
    metrics.set('process_resident_memory_bytes', 'Resident memory of the Bulwark process.', {}, process.memoryUsage().rss);
    metrics.set('bulwark_uptime_seconds', 'Seconds since this process started serving.', {}, Math.round(process.uptime()));
  });

  const sessions = new DatabaseSessionStore({
    db: database.db,
    idleTimeoutMs: config.sessions.idleMinutes * 60_000,
    absoluteTimeoutMs: config.sessions.absoluteHours * 3_600_000,
  });
  const keyService = new KeyService({
    keys,
    tenants,
    hasher,
    prefix,
    audit,
    onKeyInvalidated: (id) => {
      publicVerifier.invalidate(id);
      adminVerifier.invalidate(id);
      // Other instances stop a revoked key's sessions through keyStillValid; this ends them here and now.
      sessions.destroyForKey(id).catch((err: unknown) => logger.warn({ keyId: id, error: (err as Error).message }, 'could not end the sessions of an invalidated key'));
      mcp.endForKey(id).catch((err: unknown) => logger.warn({ keyId: id, error: (err as Error).message }, 'could not end the MCP sessions of an invalidated key'));
      // Event streams on this instance end now; other instances' at the key's next request there.
      agentFeed.endForKey(id);
    },
  });

  const rateLimiter = options.rateLimiter ?? { limiter: new MemoryRateLimiter('bulwark:rl'), backend: 'memory' as const, close: async () => {} };
  const authFailures = authFailureTracker({ limiter: rateLimiter.limiter, audit, ...config.rateLimits.lockout });
  const jwt = jwtFor(config, logger);
  const bulwarkTokens = jwt ? [bulwarkTokenVerifier({ jwt: jwt.verifier, keys: publicVerifier })] : [];
  const tokenVerifiers: TokenVerifier[] = [...bulwarkTokens, ...(config.oidc ? [oidcVerifier({ ...config.oidc })] : [])];
  // A token the identity provider issued for the MCP resource (RFC 8707 `resource`, which MCP
  // clients send) names its URL as audience; one issued for anything else is refused there.
  // Without server.publicUrl there is no fixed resource URL to check, so /mcp takes none.
  const mcpAudience = mcpResourceAudience(config);
  const mcpTokenVerifiers: TokenVerifier[] = [...bulwarkTokens, ...(config.oidc && mcpAudience ? [oidcVerifier({ ...config.oidc, audience: mcpAudience })] : [])];
  const staticKeyIds = ['admin-token', ...(config.secrets.adminKey ? ['admin-key'] : []), ...(config.bootstrapKey.key ? ['bootstrap'] : [])];

  const startedAt = new Date();
  const agentFeed = new EventFeed();
  const mcpRegistry = new McpRegistry(config.mcp.scopes);
  const closeUpstreamSessions = (hash: string) => {
    for (const upstream of upstreams) upstream.closeSession(hash);
  };
  const upstreams: UpstreamSource[] = config.mcp.upstreams.map(
    (upstream) =>
      new UpstreamSource({
        config: upstream,
        logger,
        onListsChanged: () => mcpRegistry.refresh(),
        notifySession: (hash, notification) => mcp.notify(hash, notification),
      }),
  );
  const mcpSessions = new McpSessionStore(database.db, { idleMs: config.mcp.sessions.idleMinutes * 60_000, maxMs: config.mcp.sessions.maxHours * 3_600_000 });
  const mcp = new McpGateway({
    registry: mcpRegistry,
    sessions: mcpSessions,
    history: databaseEventHistory(database.db, {
      keyRing,
      maxAgeMs: config.mcp.events.maxAgeSeconds * 1000,
      maxEvents: config.mcp.events.maxEvents,
      onTampered: (event) =>
        audit({ type: 'mcp.event_tampered', outcome: 'failure', details: { ref: event.sessionHash.slice(0, 16), streamId: event.streamId, eventId: event.eventId, reason: event.reason } }),
    }),
    limiter: rateLimiter.limiter,
    rateLimits: config.mcp.rateLimits,
    maxResultBytes: config.mcp.maxResultBytes,
    maxPerKey: config.mcp.sessions.maxPerKey,
    sealPayload: config.storage.bodies ? (tenant, callId, payload) => sealToolPayload(keyRing, tenant, callId, payload) : undefined,
    resourceMetadataUrl: (c) => resourceMetadataUrl(c, config.server.publicUrl),
    audit,
    logger,
    onRefused: (limit) => metrics.inc('bulwark_rate_limited_total', 'Requests refused with 429 by the rate limits and lockouts, by limit.', { limit }),
    onSessionClosed: (hash) => closeUpstreamSessions(hash),
  });

  const proxyManagement = new ProxyManagement({
    db: database.db,
    keyRing,
    retention: { bodyDays: config.storage.retentionDays, rowDays: config.storage.usageRetentionDays },
    tenants,
    files: fileCredentials,
    stored: storedCredentials,
    audit,
  });

  const auditReader = createAuditReader(database.db, auditLog, anchorFile);
  mcpRegistry.add(
    builtinSource({
      version: VERSION,
      startedAt,
      async storeHealth() {
        const started = performance.now();
        const ok = await database.ping().then(() => true, () => false);
        return { kind: database.kind, ok, ms: Math.round(performance.now() - started) };
      },
      liveSessions: async (tenant) => (await mcpSessions.list({ tenant })).length,
      usage: (tenant, since) => proxyManagement.usage({ principal: staticPrincipal('operator', 'mcp', 'MCP usage_summary', ['admin']), via: 'admin-api' }, { tenant, since }),
      auditTail: (tailOptions) => auditReader.tail(tailOptions),
      securityPolicy: () => maskedConfig(config),
    }),
  );
  // After Bulwark's own, so an upstream can never shadow a built-in name.
  for (const upstream of upstreams) mcpRegistry.add(upstream);

  return {
    config,
    proxyManagement,
    keyRing,
    fileCredentials,
    storedCredentials,
    credentials,
    upstream,
    oauth,
    alerter,
    metrics,
    ledger,
    subjectsFor,
    requestLog,
    logger,
    database,
    keys,
    tenants,
    keyService,
    auditLog,
    auditReader,
    publicVerifier,
    adminVerifier,
    adminToken,
    rateLimiter,
    authFailures,
    jwtIssuer: jwt?.issuer,
    tokenVerifiers,
    mcpTokenVerifiers,
    sessions,
    keyStillValid: keyStillValidInStore({ keys, staticKeyIds }),
    startedAt,
    mcpRegistry,
    mcp,
    agentSessions: new AgentSessionStore(database.db, keyRing),
    agentFeed,
    closeUpstreamSessions,
    eventTickets: new TicketStore(database.db),
    async startUpstreams() {
      await Promise.all(upstreams.map((upstream) => upstream.start()));
    },
    audit,
    async flush() {
      await Promise.all([auditLog.flush(), lastUsed.flush(), requestLog.flush()]);
    },
    async stop() {
      fileCredentials.stop();
      await mcp.close();
      await Promise.all(upstreams.map((upstream) => upstream.stop()));
      await alerter.settled();
      await Promise.all([upstream.close(), rateLimiter.close()]);
    },
    abandon() {
      return auditLog.abandon() + lastUsed.abandon() + requestLog.abandon();
    },
    replaySpools() {
      return auditLog.replaySpool() + lastUsed.replaySpool() + requestLog.replaySpool();
    },
    async drain(deadlineMs = 5_000) {
      const left = await Promise.all([auditLog.close(deadlineMs), lastUsed.close(deadlineMs), requestLog.close(deadlineMs)]);
      return left.reduce((a, b) => a + b, 0);
    },
  };
}

/**
 * The key ring for field encryption. Production requires configured keys (config refuses to
 * start without). Development without keys uses one generated into the data dir (mode 600),
 * so what it encrypts survives a restart; it is for development only and says so.
 */
export function keyRingFor(config: Config, logger?: Logger): KeyRing {
  if (config.secrets.encryptionKeys.length > 0) return KeyRing.fromConfig(config.secrets.encryptionKeys);
  if (config.mode === 'production') throw new Error('BULWARK_ENCRYPTION_KEYS: production needs at least one encryption key');
  const key = developmentMaterial(config, 'development-encryption.key', () => randomBytes(32).toString('base64'), logger,
    'no BULWARK_ENCRYPTION_KEYS set: generated a development encryption key in the data dir (production refuses to start without configured keys)');
  return KeyRing.fromConfig([key]);
}

/**
 * The JWT signer and verifier for POST /auth/token. Configured material wins; development
 * without any generates it into the data dir (mode 600) so tokens survive a restart; production
 * without any has no JWT exchange (the route is not served).
 */
function jwtFor(config: Config, logger?: Logger): ReturnType<typeof createBulwarkJwt> | undefined {
  const { algorithm } = config.jwt;
  const issuer = config.jwt.issuer ?? config.server.publicUrl ?? 'bulwark';
  const audience = config.jwt.audience ?? config.server.publicUrl ?? 'bulwark';
  const build = (material: string) =>
    createBulwarkJwt({ algorithm, issuer, audience, ttlSeconds: config.jwt.ttlSeconds, ...(algorithm === 'HS256' ? { secret: material } : { privateKeyPem: material }) });
  if (algorithm === 'HS256' && config.secrets.jwtSecret) return build(config.secrets.jwtSecret);
  if (algorithm !== 'HS256' && config.jwt.privateKeyFile) return build(readFileSync(config.jwt.privateKeyFile, 'utf8'));
  if (config.mode === 'production') return undefined;
  const material = developmentMaterial(config, `development-jwt-${algorithm.toLowerCase()}.key`, () => generateJwtSigningMaterial(algorithm as JwtAlgorithm), logger,
    'no JWT signing material configured: generated a development one in the data dir (production serves no /auth/token without BULWARK_JWT_SECRET or BULWARK_JWT_PRIVATE_KEY_FILE)');
  return build(material);
}

/** Development-only secret material kept in the data dir (mode 600), made on first use. */
function developmentMaterial(config: Config, name: string, generate: () => string, logger: Logger | undefined, warning: string): string {
  const file = path.join(config.dataDir, name);
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    prepareDataDir(config.dataDir);
    const material = generate();
    writePrivateFile(file, `${material}\n`);
    logger?.warn({ file }, warning);
    return material;
  }
}

/** The audience an identity provider's token must name to be used on /mcp: `<publicUrl>/mcp`, if there is a public URL. */
export function mcpResourceAudience(config: Config): string | undefined {
  return config.server.publicUrl ? `${config.server.publicUrl.replace(/\/+$/, '')}${MCP_PATH}` : undefined;
}

/** Creates the default tenant so the first key has somewhere to live. */
export async function ensureDefaultTenant(runtime: Runtime): Promise<void> {
  await runtime.tenants.ensure(DEFAULT_TENANT, 'Default tenant');
}

function reportWriteBehind(logger: Logger, event: WriteBehindReport): void {
  switch (event.kind) {
    case 'retrying':
      logger.warn({ queue: event.queue, pending: event.pending, attempt: event.attempt, error: event.error }, 'database write failed; will retry');
      break;
    case 'recovered':
      logger.info({ queue: event.queue, pending: event.pending }, 'database writes recovered');
      break;
    case 'spooled':
      logger.error({ queue: event.queue, count: event.count, file: event.file }, 'could not write to the database; kept in the spool file for the next start');
      break;
    case 'lost':
      logger.error({ queue: event.queue, count: event.count, reason: event.reason }, 'could not write to the database or the spool; items lost');
      break;
    case 'rejected':
      logger.error({ queue: event.queue, count: event.count, file: event.file, error: event.error }, 'the database refused an item; set aside, not retried');
      break;
    case 'replayed':
      logger.info({ queue: event.queue, count: event.count }, 'replaying writes spooled by an earlier run');
      break;
  }
}
