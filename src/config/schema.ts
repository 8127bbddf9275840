/**
 * The one schema for Bulwark's configuration. A config file (`BULWARK_CONFIG`, JSON or YAML)
 * has exactly this shape; environment variables map onto its paths (see `ENV_SETTINGS`) and
 * win over the file. Unknown keys and wrong types stop start-up, naming the setting.
 */
import { z } from 'zod';

const port = z.number().int().min(0).max(65535);
const nonEmpty = z.string().min(1);
/** A PostgreSQL schema name we are willing to interpolate into `SET search_path`. */
const identifier = z.string().regex(/^[a-z_][a-z0-9_]{0,62}$/, 'must be a lower-case SQL identifier');

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

export const FileConfigSchema = z.strictObject({
  mode: z.enum(['development', 'production']).optional(),
  server: z
    .strictObject({ host: nonEmpty.optional(), port: port.default(3000) })
    .default({ port: 3000 }),
  admin: z
    .strictObject({ host: nonEmpty.default('127.0.0.1'), port: port.default(3001) })
    .default({ host: '127.0.0.1', port: 3001 }),
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
      allowedHosts: z.array(nonEmpty).default([]),
      corsOrigins: z.array(nonEmpty).default([]),
      trustedProxies: z.array(nonEmpty).default([]),
      ipAllowlist: z.array(nonEmpty).default([]),
    })
    .default({ allowedHosts: [], corsOrigins: [], trustedProxies: [], ipAllowlist: [] }),
  tls: z.strictObject({ cert: nonEmpty.optional(), key: nonEmpty.optional() }).default({}),
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
  { env: 'BULWARK_ADMIN_HOST', path: ['admin', 'host'], kind: 'string' },
  { env: 'BULWARK_ADMIN_PORT', path: ['admin', 'port'], kind: 'int' },
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
  { env: 'BULWARK_IP_ALLOWLIST', path: ['http', 'ipAllowlist'], kind: 'list' },
  { env: 'BULWARK_TLS_CERT', path: ['tls', 'cert'], kind: 'string' },
  { env: 'BULWARK_TLS_KEY', path: ['tls', 'key'], kind: 'string' },
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
]);

export function envNameFor(path: readonly (string | number | symbol)[]): string | undefined {
  const joined = path.map(String).join('.');
  return ENV_SETTINGS.find((s) => joined === s.path.join('.') || joined.startsWith(`${s.path.join('.')}.`))?.env;
}
