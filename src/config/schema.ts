/**
 * The one schema for Bulwark's configuration. A config file (`BULWARK_CONFIG`, JSON or YAML)
 * has exactly this shape; environment variables map onto its paths (see `ENV_SETTINGS`) and
 * win over the file. Unknown keys and wrong types stop start-up, naming the setting.
 */
import { z } from 'zod';
import { SCHEMA_NAME } from '../store/schema-name.js';

const port = z.number().int().min(0).max(65535);
const nonEmpty = z.string().min(1);
/** A PostgreSQL schema name we are willing to interpolate into `SET search_path`. */
const identifier = z.string().regex(SCHEMA_NAME, 'must be a lower-case SQL identifier');

export const DEFAULT_OAUTH_TOKEN_URL = 'https://console.anthropic.com/v1/oauth/token';
export const DEFAULT_OAUTH_CLIENT_ID = '9d1c250a-e61b-44d9-88ed-5944d1962f5e';

export const SCOPE_PATTERN = /^[a-z][a-z0-9_-]*(:[A-Za-z0-9_.*-]+)?$/;
const scope = z.string().regex(SCOPE_PATTERN, 'is not a valid scope');

const positive = z.number().positive();
const count = z.number().int().positive();

/** One set of limits; any may be absent. Config, key fields and the CLI share it. */
export const LimitSetSchema = z.strictObject({
  requestsPerMinute: count.optional(),
  tokensPerMinute: count.optional(),
  tokensPerDay: count.optional(),
  tokensPerMonth: count.optional(),
  usdPerDay: positive.optional(),
  usdPerMonth: positive.optional(),
  /** Models this key or tenant may use; `*` matches any run of characters. */
  models: z.array(z.string().min(1).max(200)).min(1).optional(),
});

/** US dollars per million tokens. */
export const PriceSchema = z.strictObject({
  input: z.number().min(0),
  output: z.number().min(0),
  cacheWrite: z.number().min(0).optional(),
  cacheRead: z.number().min(0).optional(),
});

/** One upstream MCP server Bulwark fronts. Its credential stays in Bulwark; clients never see it. */
export const McpUpstreamSchema = z.strictObject({
  /** Namespace of its tools (`<name>__<tool>`), in audit events and in `mcp.scopes` keys. */
  name: z
    .string()
    .regex(/^[a-z][a-z0-9_-]{0,31}$/, 'must be lower-case letters, digits, _ or - (at most 32)')
    .refine((name) => name !== 'bulwark', 'bulwark is the name of Bulwark’s own tools'),
  url: z.url(),
  /** Serve its names as they are, without the `<name>__` prefix. */
  unprefixed: z.boolean().default(false),
  /** Headers Bulwark sends upstream (e.g. its own Authorization); secrets. */
  headers: z.record(z.string().regex(/^[A-Za-z0-9-]+$/, 'is not a header name'), z.string()).default({}),
  /** OAuth 2.0 client credentials (RFC 6749 §4.4) Bulwark uses to get its own upstream token. */
  oauth: z
    .strictObject({ tokenUrl: z.url(), clientId: nonEmpty, clientSecret: nonEmpty, scope: nonEmpty.optional(), resource: z.url().optional() })
    .optional(),
  /** The scope its tools need unless `mcp.scopes` names one; resources and prompts need `read`. */
  toolScope: scope.default('write'),
  /** Per-request deadline for calls to it. */
  timeoutMs: count.max(600_000).default(30_000),
});

export const FileConfigSchema = z.strictObject({
  mode: z.enum(['development', 'production']).optional(),
  server: z
    .strictObject({
      host: nonEmpty.optional(),
      port: port.default(3000),
      /** The URL clients use to reach the public listener (JWT audience, metadata documents). */
      publicUrl: z.url().optional(),
    })
    .default({ port: 3000 }),
  admin: z
    .strictObject({
      host: nonEmpty.default('127.0.0.1'),
      port: port.default(3001),
      /** CIDRs allowed on the admin listener; empty allows every address that can reach it. */
      ipAllowlist: z.array(nonEmpty).default([]),
    })
    .default({ host: '127.0.0.1', port: 3001, ipAllowlist: [] }),
  auth: z
    .strictObject({
      /** `off` is honoured only in development with every listener on loopback. */
      mode: z.enum(['on', 'off']).default('on'),
      requireAuth: z.boolean().default(false),
      /** Milliseconds a verified key stays cached in process; bounds how late a revocation by another process lands. */
      keyCacheMs: z.number().int().min(0).max(1000).default(500),
    })
    .default({ mode: 'on', requireAuth: false, keyCacheMs: 500 }),
  dataDir: nonEmpty.default('./.bulwark'),
  database: z
    .strictObject({ url: nonEmpty.optional(), schema: identifier.default('public') })
    .default({ schema: 'public' }),
  redis: z.strictObject({ url: nonEmpty.optional() }).default({}),
  bootstrapKey: z
    .strictObject({ key: nonEmpty.optional(), scopes: z.array(scope).min(1).default(['admin']) })
    .default({ scopes: ['admin'] }),
  secrets: z
    .strictObject({
      encryptionKeys: z.array(nonEmpty).default([]),
      jwtSecret: nonEmpty.optional(),
      adminKey: nonEmpty.optional(),
      keyHashSecret: nonEmpty.optional(),
    })
    .default({ encryptionKeys: [] }),
  upstream: z
    .strictObject({
      url: z.url().default('https://api.anthropic.com'),
      connectTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
      /** Until response headers; non-streaming answers can take minutes. */
      firstByteTimeoutMs: z.number().int().min(100).max(3_600_000).default(600_000),
      /** Between two chunks of a response body. */
      idleTimeoutMs: z.number().int().min(100).max(3_600_000).default(300_000),
      /** Most connections to the upstream API at once, across all tenants. */
      connections: z.number().int().min(1).max(10_000).default(256),
      /** Further /v1 paths forwarded as they are (exact, or a prefix ending in *). */
      allowPaths: z.array(z.string().regex(/^\/v1\/[A-Za-z0-9_./*-]*$/, 'must be a /v1/ path')).default([]),
      /** Where OAuth refresh tokens are exchanged (Claude's console token endpoint). */
      oauthTokenUrl: z.url().default(DEFAULT_OAUTH_TOKEN_URL),
      /** The OAuth client the tokens were issued to (Claude Code's public client id by default). */
      oauthClientId: z.string().min(1).default(DEFAULT_OAUTH_CLIENT_ID),
      /** Refresh an access token when fewer seconds than this remain. */
      oauthRefreshBeforeSeconds: z.number().int().min(0).max(3600).default(60),
    })
    .default({
      url: 'https://api.anthropic.com',
      connectTimeoutMs: 10_000,
      firstByteTimeoutMs: 600_000,
      idleTimeoutMs: 300_000,
      connections: 256,
      allowPaths: [],
      oauthTokenUrl: DEFAULT_OAUTH_TOKEN_URL,
      oauthClientId: DEFAULT_OAUTH_CLIENT_ID,
      oauthRefreshBeforeSeconds: 60,
    }),
  credentialsDir: nonEmpty.optional(),
  storage: z
    .strictObject({
      bodies: z.boolean().default(false),
      /** Days request and response bodies are kept. */
      retentionDays: z.number().int().min(1).default(30),
      /** Days usage rows (without bodies) are kept; at least as long as bodies. */
      usageRetentionDays: z.number().int().min(1).default(400),
    })
    .default({ bodies: false, retentionDays: 30, usageRetentionDays: 400 }),
  http: z
    .strictObject({
      /** Host header values accepted besides loopback names (DNS rebinding); `name` or `name:port`. */
      allowedHosts: z.array(nonEmpty).default([]),
      /** Browser origins (`https://app.example.com`) allowed by CORS and the Origin check. */
      corsOrigins: z.array(z.url()).default([]),
      /** CIDRs of proxies whose X-Forwarded-For / Forwarded headers are believed. */
      trustedProxies: z.array(nonEmpty).default([]),
      /**
       * The one forwarding header the trusted proxies set. Only one is read: a proxy that appends
       * to X-Forwarded-For passes a client's own `Forwarded` header through untouched.
       */
      forwardedHeader: z.enum(['x-forwarded-for', 'forwarded']).default('x-forwarded-for'),
      /** CIDRs allowed on the public listener; empty allows every address. */
      ipAllowlist: z.array(nonEmpty).default([]),
      /** Send Strict-Transport-Security; on by itself when Bulwark serves TLS. */
      hsts: z.boolean().default(false),
      bodyLimitBytes: z.number().int().min(1024).max(1 << 30).default(2 * 1024 * 1024),
      /** `/v1/messages` and `count_tokens` carry images and long contexts. */
      llmBodyLimitBytes: z.number().int().min(1024).max(1 << 30).default(32 * 1024 * 1024),
      /** Responses (JSON, HTML) at least this large are compressed when the client accepts it. */
      compressionThresholdBytes: z.number().int().min(0).default(512),
    })
    .default({
      allowedHosts: [],
      corsOrigins: [],
      trustedProxies: [],
      forwardedHeader: 'x-forwarded-for',
      ipAllowlist: [],
      hsts: false,
      bodyLimitBytes: 2 * 1024 * 1024,
      llmBodyLimitBytes: 32 * 1024 * 1024,
      compressionThresholdBytes: 512,
    }),
  tls: z
    .strictObject({
      cert: nonEmpty.optional(),
      key: nonEmpty.optional(),
      /** Serve the admin listener over HTTPS too (the CLI then pins the certificate). */
      admin: z.boolean().default(false),
    })
    .default({ admin: false }),
  /** Requests per minute, enforced through the shared limiter (Redis when REDIS_URL is set). */
  rateLimits: z
    .strictObject({
      /** Per client address, before authentication. */
      ipPerMinute: count.default(1200),
      /** Per key, by the kind of request: reads (GET), writes, the admin listener, /v1 calls. */
      keyPerMinute: z
        .strictObject({ read: count.default(100), write: count.default(50), admin: count.default(200), llm: count.optional() })
        .default({ read: 100, write: 50, admin: 200 }),
      /** Per tenant, across its keys; unlimited unless set. */
      tenantPerMinute: z
        .strictObject({ read: count.optional(), write: count.optional(), admin: count.optional(), llm: count.optional() })
        .default({}),
      /** Per key, for one route family (a path prefix). */
      routes: z.array(z.strictObject({ prefix: z.string().regex(/^\/[A-Za-z0-9_./-]*$/, 'must be a path'), perMinute: count })).default([]),
      lockout: z
        .strictObject({
          /** Authentication failures from one address within the window that lock it out. */
          failures: count.default(10),
          windowSeconds: count.default(300),
          /** The first lockout; each repeat within a day doubles it, up to the maximum. */
          lockSeconds: count.default(300),
          maxLockSeconds: count.default(86_400),
        })
        .default({ failures: 10, windowSeconds: 300, lockSeconds: 300, maxLockSeconds: 86_400 }),
    })
    .default({
      ipPerMinute: 1200,
      keyPerMinute: { read: 100, write: 50, admin: 200 },
      tenantPerMinute: {},
      routes: [],
      lockout: { failures: 10, windowSeconds: 300, lockSeconds: 300, maxLockSeconds: 86_400 },
    }),
  /** Short-lived tokens from POST /auth/token. */
  jwt: z
    .strictObject({
      algorithm: z.enum(['HS256', 'ES256', 'EdDSA']).default('HS256'),
      /** PKCS#8 PEM file with the signing key for ES256 / EdDSA. */
      privateKeyFile: nonEmpty.optional(),
      issuer: nonEmpty.optional(),
      audience: nonEmpty.optional(),
      ttlSeconds: z.number().int().min(60).max(86_400).default(3600),
    })
    .default({ algorithm: 'HS256', ttlSeconds: 3600 }),
  /** Access tokens from the operators' own identity provider, verified against its JWKS. */
  oidc: z
    .strictObject({
      issuer: nonEmpty,
      audience: nonEmpty,
      jwksUrl: z.url(),
      scopesClaim: nonEmpty.default('scope'),
      /** Provider scope → Bulwark scopes; provider scopes not listed grant nothing. */
      scopeMap: z.record(nonEmpty, z.array(scope)).default({}),
      tenantClaim: nonEmpty.optional(),
      defaultTenant: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'is not a tenant id').default('default'),
    })
    .optional(),
  /** Cookie sessions of the admin listener's browser pages. */
  sessions: z
    .strictObject({ idleMinutes: count.max(24 * 60).default(60), absoluteHours: count.max(24 * 30).default(12) })
    .default({ idleMinutes: 60, absoluteHours: 12 }),
  /** The MCP endpoint (`/mcp`): sessions, resumable history, per-tool scopes and limits, upstream servers. */
  mcp: z
    .strictObject({
      sessions: z
        .strictObject({ idleMinutes: count.max(24 * 60).default(30), maxHours: count.max(24 * 7).default(2), maxPerKey: count.max(100_000).default(100) })
        .default({ idleMinutes: 30, maxHours: 2, maxPerKey: 100 }),
      /** The encrypted SSE history behind Last-Event-ID: how long and how much of it a session keeps. */
      events: z
        .strictObject({ maxAgeSeconds: count.max(86_400).default(300), maxEvents: count.max(100_000).default(1000) })
        .default({ maxAgeSeconds: 300, maxEvents: 1000 }),
      /** The scope a tool, resource (by URI) or prompt needs, overriding its default. */
      scopes: z.record(nonEmpty, scope).default({}),
      /** Calls per minute per key: for one tool (by its listed name), or for everything needing one scope. */
      rateLimits: z
        .strictObject({ tools: z.record(nonEmpty, count).default({}), scopes: z.record(scope, count).default({}) })
        .default({ tools: {}, scopes: {} }),
      /** A tool result larger than this (bytes of JSON) is replaced by an error result. */
      maxResultBytes: count.default(4 * 1024 * 1024),
      /** Upstream MCP servers whose tools, resources and prompts Bulwark serves under `<name>__`. */
      upstreams: z.array(McpUpstreamSchema).default([]),
    })
    .default({
      sessions: { idleMinutes: 30, maxHours: 2, maxPerKey: 100 },
      events: { maxAgeSeconds: 300, maxEvents: 1000 },
      scopes: {},
      rateLimits: { tools: {}, scopes: {} },
      maxResultBytes: 4 * 1024 * 1024,
      upstreams: [],
    }),
  /** Bulwark's own agent (`/api/message`): its model, prompt and the skills its card lists. */
  agent: z
    .strictObject({
      name: z.string().min(1).max(100).default('Bulwark agent'),
      description: z.string().min(1).max(2000).default('A tool-using assistant behind Bulwark: every call is authenticated, scoped, limited and audited.'),
      model: z.string().min(1).max(200).default('claude-sonnet-4-5'),
      /** Models `POST /api/llm/switch` may choose; the configured model is always one. */
      models: z.array(z.string().min(1).max(200)).default([]),
      systemPrompt: z.string().max(20_000).default('You are a careful assistant. Use the tools you are given when they help; say plainly when you cannot do something.'),
      /** Model turns per message, tool calls included, before the agent stops and says so. */
      maxSteps: count.max(50).default(8),
      maxTokens: count.max(64_000).default(1024),
      skills: z
        .array(z.strictObject({ id: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/), name: z.string().min(1).max(100), description: z.string().min(1).max(1000), tags: z.array(z.string().min(1).max(50)).default([]) }))
        .default([]),
    })
    .default({
      name: 'Bulwark agent',
      description: 'A tool-using assistant behind Bulwark: every call is authenticated, scoped, limited and audited.',
      model: 'claude-sonnet-4-5',
      models: [],
      systemPrompt: 'You are a careful assistant. Use the tools you are given when they help; say plainly when you cannot do something.',
      maxSteps: 8,
      maxTokens: 1024,
      skills: [],
    }),
  /** Limits for /v1 calls: `keys` applies to every key without limits of its own; `tenants` per tenant. */
  limits: z
    .strictObject({ keys: LimitSetSchema.optional(), tenants: z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'is not a tenant id'), LimitSetSchema).default({}) })
    .default({ tenants: {} }),
  alerts: z.strictObject({ webhookUrl: z.url().optional(), slackWebhookUrl: z.url().optional() }).default({}),
  /** US dollars per million tokens, by model name or pattern (`*`). */
  prices: z.record(z.string().min(1), PriceSchema).default({}),
  log: z
    .strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') })
    .default({ level: 'info' }),
});

export type FileConfig = z.infer<typeof FileConfigSchema>;

type EnvKind = 'string' | 'int' | 'bool' | 'list' | 'mode' | 'auth';

export interface EnvSetting {
  env: string;
  path: readonly string[];
  kind: EnvKind;
  secret?: boolean;
}

/** Every environment variable Bulwark reads. Any other `BULWARK_*` variable is refused. */
export const ENV_SETTINGS: readonly EnvSetting[] = [
  { env: 'BULWARK_MODE', path: ['mode'], kind: 'mode' },
  { env: 'BULWARK_HOST', path: ['server', 'host'], kind: 'string' },
  { env: 'BULWARK_PORT', path: ['server', 'port'], kind: 'int' },
  { env: 'BULWARK_PUBLIC_URL', path: ['server', 'publicUrl'], kind: 'string' },
  { env: 'BULWARK_ADMIN_HOST', path: ['admin', 'host'], kind: 'string' },
  { env: 'BULWARK_ADMIN_PORT', path: ['admin', 'port'], kind: 'int' },
  { env: 'BULWARK_ADMIN_IP_ALLOWLIST', path: ['admin', 'ipAllowlist'], kind: 'list' },
  { env: 'BULWARK_AUTH', path: ['auth', 'mode'], kind: 'auth' },
  { env: 'BULWARK_REQUIRE_AUTH', path: ['auth', 'requireAuth'], kind: 'bool' },
  { env: 'BULWARK_DATA_DIR', path: ['dataDir'], kind: 'string' },
  { env: 'DATABASE_URL', path: ['database', 'url'], kind: 'string', secret: true },
  { env: 'BULWARK_DATABASE_SCHEMA', path: ['database', 'schema'], kind: 'string' },
  { env: 'REDIS_URL', path: ['redis', 'url'], kind: 'string', secret: true },
  { env: 'BULWARK_API_KEY', path: ['bootstrapKey', 'key'], kind: 'string', secret: true },
  { env: 'BULWARK_API_KEY_SCOPES', path: ['bootstrapKey', 'scopes'], kind: 'list' },
  { env: 'BULWARK_ENCRYPTION_KEYS', path: ['secrets', 'encryptionKeys'], kind: 'list', secret: true },
  { env: 'BULWARK_JWT_SECRET', path: ['secrets', 'jwtSecret'], kind: 'string', secret: true },
  { env: 'BULWARK_ADMIN_KEY', path: ['secrets', 'adminKey'], kind: 'string', secret: true },
  { env: 'BULWARK_KEY_HASH_SECRET', path: ['secrets', 'keyHashSecret'], kind: 'string', secret: true },
  { env: 'BULWARK_UPSTREAM_URL', path: ['upstream', 'url'], kind: 'string' },
  { env: 'BULWARK_CREDENTIALS_DIR', path: ['credentialsDir'], kind: 'string' },
  { env: 'BULWARK_STORE_BODIES', path: ['storage', 'bodies'], kind: 'bool' },
  { env: 'BULWARK_RETENTION_DAYS', path: ['storage', 'retentionDays'], kind: 'int' },
  { env: 'BULWARK_USAGE_RETENTION_DAYS', path: ['storage', 'usageRetentionDays'], kind: 'int' },
  { env: 'BULWARK_ALLOWED_HOSTS', path: ['http', 'allowedHosts'], kind: 'list' },
  { env: 'BULWARK_CORS_ORIGINS', path: ['http', 'corsOrigins'], kind: 'list' },
  { env: 'BULWARK_TRUSTED_PROXIES', path: ['http', 'trustedProxies'], kind: 'list' },
  { env: 'BULWARK_FORWARDED_HEADER', path: ['http', 'forwardedHeader'], kind: 'string' },
  { env: 'BULWARK_IP_ALLOWLIST', path: ['http', 'ipAllowlist'], kind: 'list' },
  { env: 'BULWARK_HSTS', path: ['http', 'hsts'], kind: 'bool' },
  { env: 'BULWARK_BODY_LIMIT_BYTES', path: ['http', 'bodyLimitBytes'], kind: 'int' },
  { env: 'BULWARK_LLM_BODY_LIMIT_BYTES', path: ['http', 'llmBodyLimitBytes'], kind: 'int' },
  { env: 'BULWARK_TLS_CERT', path: ['tls', 'cert'], kind: 'string' },
  { env: 'BULWARK_TLS_KEY', path: ['tls', 'key'], kind: 'string' },
  { env: 'BULWARK_ADMIN_TLS', path: ['tls', 'admin'], kind: 'bool' },
  { env: 'BULWARK_RATE_LIMIT_IP', path: ['rateLimits', 'ipPerMinute'], kind: 'int' },
  { env: 'BULWARK_RATE_LIMIT_READ', path: ['rateLimits', 'keyPerMinute', 'read'], kind: 'int' },
  { env: 'BULWARK_RATE_LIMIT_WRITE', path: ['rateLimits', 'keyPerMinute', 'write'], kind: 'int' },
  { env: 'BULWARK_RATE_LIMIT_ADMIN', path: ['rateLimits', 'keyPerMinute', 'admin'], kind: 'int' },
  { env: 'BULWARK_RATE_LIMIT_LLM', path: ['rateLimits', 'keyPerMinute', 'llm'], kind: 'int' },
  { env: 'BULWARK_LOCKOUT_FAILURES', path: ['rateLimits', 'lockout', 'failures'], kind: 'int' },
  { env: 'BULWARK_JWT_ALGORITHM', path: ['jwt', 'algorithm'], kind: 'string' },
  { env: 'BULWARK_JWT_PRIVATE_KEY_FILE', path: ['jwt', 'privateKeyFile'], kind: 'string' },
  { env: 'BULWARK_JWT_TTL_SECONDS', path: ['jwt', 'ttlSeconds'], kind: 'int' },
  { env: 'BULWARK_LOG_LEVEL', path: ['log', 'level'], kind: 'string' },
  { env: 'BULWARK_ALERT_WEBHOOK_URL', path: ['alerts', 'webhookUrl'], kind: 'string', secret: true },
  { env: 'BULWARK_SLACK_WEBHOOK_URL', path: ['alerts', 'slackWebhookUrl'], kind: 'string', secret: true },
];

/** Variables that are not settings but that Bulwark's tools may read; never refused. */
export const ENV_IGNORED = new Set(['BULWARK_CONFIG']);

/** Paths (dot-joined) whose values are secrets and are masked whenever config is shown. */
export const SECRET_PATHS = new Set([
  ...ENV_SETTINGS.filter((s) => s.secret).map((s) => s.path.join('.')),
  'secrets.encryptionKeys',
  'secrets.jwtSecret',
  'secrets.adminKey',
  'secrets.keyHashSecret',
  'bootstrapKey.key',
  // `*` stands for one path segment (an array index here).
  'mcp.upstreams.*.headers',
  'mcp.upstreams.*.oauth.clientSecret',
]);

export function envNameFor(path: readonly (string | number | symbol)[]): string | undefined {
  const joined = path.map(String).join('.');
  return ENV_SETTINGS.find((s) => joined === s.path.join('.') || joined.startsWith(`${s.path.join('.')}.`))?.env;
}
