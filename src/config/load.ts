/**
 * Loads the configuration once: environment variables over an optional config file, validated
 * by the one schema, then resolved (paths made absolute, mode-dependent defaults filled) and
 * frozen. This is the only module that reads `process.env`.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { ENV_IGNORED, ENV_SETTINGS, type EnvSetting, type FileConfig, FileConfigSchema, type LimitSetSchema, type PriceSchema, envNameFor } from './schema.js';

type LimitSet = z.infer<typeof LimitSetSchema>;
type PriceTable = Readonly<Record<string, z.infer<typeof PriceSchema>>>;

export type Mode = 'development' | 'production';

export interface Config {
  readonly mode: Mode;
  readonly server: { readonly host: string; readonly port: number; readonly publicUrl: string | undefined };
  readonly admin: { readonly host: string; readonly port: number; readonly ipAllowlist: readonly string[] };
  readonly auth: {
    /** Whether callers must authenticate on the public listener. */
    readonly enabled: boolean;
    /** The operator asked for auth off (`BULWARK_AUTH=off`); refused unless development on loopback. */
    readonly offRequested: boolean;
    readonly requireAuth: boolean;
    readonly keyCacheMs: number;
  };
  readonly dataDir: string;
  readonly database: { readonly url: string | undefined; readonly schema: string };
  readonly redis: { readonly url: string | undefined };
  readonly bootstrapKey: { readonly key: string | undefined; readonly scopes: readonly string[] };
  readonly secrets: {
    readonly encryptionKeys: readonly string[];
    readonly jwtSecret: string | undefined;
    readonly adminKey: string | undefined;
    readonly keyHashSecret: string | undefined;
  };
  readonly upstream: {
    readonly url: string;
    readonly connectTimeoutMs: number;
    readonly firstByteTimeoutMs: number;
    readonly idleTimeoutMs: number;
    readonly connections: number;
    readonly allowPaths: readonly string[];
    readonly oauthTokenUrl: string;
    readonly oauthClientId: string;
    readonly oauthRefreshBeforeSeconds: number;
  };
  readonly credentialsDir: string;
  readonly storage: { readonly bodies: boolean; readonly retentionDays: number; readonly usageRetentionDays: number };
  readonly http: {
    readonly allowedHosts: readonly string[];
    readonly corsOrigins: readonly string[];
    readonly trustedProxies: readonly string[];
    readonly forwardedHeader: 'x-forwarded-for' | 'forwarded';
    readonly ipAllowlist: readonly string[];
    readonly hsts: boolean;
    readonly bodyLimitBytes: number;
    readonly llmBodyLimitBytes: number;
    readonly compressionThresholdBytes: number;
  };
  readonly tls: { readonly cert: string | undefined; readonly key: string | undefined; readonly admin: boolean };
  readonly rateLimits: FileConfig['rateLimits'];
  readonly jwt: FileConfig['jwt'];
  readonly oidc: FileConfig['oidc'];
  readonly sessions: FileConfig['sessions'];
  readonly mcp: FileConfig['mcp'];
  readonly agent: FileConfig['agent'];
  readonly log: { readonly level: string };
  readonly limits: { readonly keys: LimitSet | undefined; readonly tenants: Readonly<Record<string, LimitSet>> };
  readonly prices: PriceTable;
  /** Webhook URLs are secrets (they authorise posting). */
  readonly alerts: { readonly webhookUrl: string | undefined; readonly slackWebhookUrl: string | undefined };
  /** Where the config file came from, if any. */
  readonly configFile: string | undefined;
}

/** A configuration that cannot be used. Each problem is one line naming the setting. */
export class ConfigError extends Error {
  /** EX_CONFIG from sysexits.h: the exit code for a refused configuration. */
  static readonly EXIT_CODE = 78;
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(`Bulwark refuses to start:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export interface LoadOptions {
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Values that override env and file (e.g. CLI flags), by schema path. */
  overrides?: Record<string, unknown>;
}

/** Reads, validates and freezes the config. Throws `ConfigError` on any problem. */
export function loadConfig(options: LoadOptions = {}): Config {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const problems: string[] = [];

  const configFile = env.BULWARK_CONFIG ? path.resolve(cwd, env.BULWARK_CONFIG) : undefined;
  const raw: Record<string, unknown> = configFile ? readConfigFile(configFile, problems) : {};

  for (const name of Object.keys(env)) {
    if (name.startsWith('BULWARK_') && !ENV_IGNORED.has(name) && !ENV_SETTINGS.some((s) => s.env === name)) {
      problems.push(`${name}: unknown setting (see the configuration table in the README)`);
    }
  }
  for (const setting of ENV_SETTINGS) {
    const value = env[setting.env];
    if (value === undefined || value === '') continue;
    const parsed = parseEnvValue(setting, value);
    if (parsed.ok) setPath(raw, setting.path, parsed.value);
    else problems.push(`${setting.env}: ${parsed.message}`);
  }
  for (const [dotted, value] of Object.entries(options.overrides ?? {})) {
    if (value !== undefined) setPath(raw, dotted.split('.'), value);
  }
  if (problems.length) throw new ConfigError(problems);

  const result = FileConfigSchema.safeParse(raw);
  if (!result.success) throw new ConfigError(result.error.issues.map((issue) => describeIssue(issue, env, configFile)));
  const file = result.data;

  // Either source saying production means production; a contradiction is refused rather than
  // resolved towards the weaker mode.
  const nodeEnvProduction = env.NODE_ENV === 'production';
  if (file.mode === 'development' && nodeEnvProduction) {
    throw new ConfigError(['BULWARK_MODE: development contradicts NODE_ENV=production; remove one of them']);
  }
  const mode: Mode = file.mode ?? (nodeEnvProduction ? 'production' : 'development');
  const dataDir = path.resolve(cwd, file.dataDir);
  const offRequested = file.auth.mode === 'off';
  const config: Config = {
    mode,
    server: { host: file.server.host ?? (mode === 'production' ? '0.0.0.0' : '127.0.0.1'), port: file.server.port, publicUrl: file.server.publicUrl },
    admin: { ...file.admin },
    auth: {
      enabled: !offRequested || file.auth.requireAuth,
      offRequested,
      requireAuth: file.auth.requireAuth,
      keyCacheMs: file.auth.keyCacheMs,
    },
    dataDir,
    database: { url: file.database.url, schema: file.database.schema },
    redis: { url: file.redis.url },
    bootstrapKey: { key: file.bootstrapKey.key, scopes: file.bootstrapKey.scopes },
    secrets: {
      encryptionKeys: file.secrets.encryptionKeys,
      jwtSecret: file.secrets.jwtSecret,
      adminKey: file.secrets.adminKey,
      keyHashSecret: file.secrets.keyHashSecret,
    },
    upstream: { ...file.upstream },
    credentialsDir: path.resolve(cwd, file.credentialsDir ?? path.join(dataDir, 'credentials')),
    storage: { ...file.storage },
    http: { ...file.http, corsOrigins: file.http.corsOrigins.map((origin) => new URL(origin).origin) },
    tls: { cert: file.tls.cert && path.resolve(cwd, file.tls.cert), key: file.tls.key && path.resolve(cwd, file.tls.key), admin: file.tls.admin },
    rateLimits: file.rateLimits,
    jwt: { ...file.jwt, privateKeyFile: file.jwt.privateKeyFile && path.resolve(cwd, file.jwt.privateKeyFile) },
    oidc: file.oidc,
    sessions: file.sessions,
    mcp: file.mcp,
    agent: file.agent,
    log: { level: file.log.level },
    limits: { keys: file.limits.keys, tenants: file.limits.tenants },
    prices: file.prices,
    alerts: { webhookUrl: file.alerts.webhookUrl, slackWebhookUrl: file.alerts.slackWebhookUrl },
    configFile,
  };
  return deepFreeze(config);
}

function readConfigFile(file: string, problems: string[]): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    problems.push(`BULWARK_CONFIG: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    return {};
  }
  const isJson = /\.json$/i.test(file);
  try {
    // logLevel 'error': YAML warnings would otherwise go to stderr quoting the source, secrets included.
    const value: unknown = isJson ? JSON.parse(text) : parseYaml(text, { logLevel: 'error' });
    if (value === null || value === undefined) return {};
    if (typeof value !== 'object' || Array.isArray(value)) {
      problems.push(`BULWARK_CONFIG: ${file} must hold an object at the top level`);
      return {};
    }
    return value as Record<string, unknown>;
  } catch (err) {
    // Parser messages quote the offending source, which may be a secret: report only where it failed.
    problems.push(`BULWARK_CONFIG: ${file} is not valid ${isJson ? 'JSON' : 'YAML'}${whereParseFailed(err, text)}`);
    return {};
  }
}

/** ` at line L, column C` from a JSON or YAML parse error's position, never from its text. */
function whereParseFailed(err: unknown, text: string): string {
  const linePos = (err as { linePos?: { line: number; col: number }[] }).linePos?.[0];
  if (linePos) return ` at line ${linePos.line}, column ${linePos.col}`;
  const offset = /at position (\d+)/.exec(err instanceof Error ? err.message : '')?.[1];
  if (offset === undefined) return '';
  const before = text.slice(0, Number(offset));
  return ` at line ${before.split('\n').length}, column ${before.length - before.lastIndexOf('\n')}`;
}

type Parsed = { ok: true; value: unknown } | { ok: false; message: string };

function parseEnvValue(setting: EnvSetting, value: string): Parsed {
  const shown = setting.secret ? '(value hidden)' : `'${value}'`;
  switch (setting.kind) {
    case 'string':
      return { ok: true, value };
    case 'int':
      return /^\d+$/.test(value.trim())
        ? { ok: true, value: Number(value.trim()) }
        : { ok: false, message: `expected a whole number, got ${shown}` };
    case 'bool': {
      const v = value.trim().toLowerCase();
      if (['true', '1', 'yes', 'on'].includes(v)) return { ok: true, value: true };
      if (['false', '0', 'no', 'off'].includes(v)) return { ok: true, value: false };
      return { ok: false, message: `expected true or false, got ${shown}` };
    }
    case 'list':
      return {
        ok: true,
        value: value
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean),
      };
    case 'mode': {
      const v = value.trim().toLowerCase();
      return v === 'development' || v === 'production'
        ? { ok: true, value: v }
        : { ok: false, message: `expected development or production, got ${shown}` };
    }
    case 'auth': {
      const v = value.trim().toLowerCase();
      if (['off', 'false', '0', 'none', 'disabled'].includes(v)) return { ok: true, value: 'off' };
      if (['on', 'true', '1', 'required', 'enabled'].includes(v)) return { ok: true, value: 'on' };
      return { ok: false, message: `expected on or off, got ${shown}` };
    }
  }
}

function describeIssue(issue: z.core.$ZodIssue, env: Record<string, string | undefined>, configFile: string | undefined): string {
  const dotted = issue.path.map(String).join('.');
  const envName = envNameFor(issue.path);
  let name = dotted || '(top level)';
  if (envName && env[envName] !== undefined && env[envName] !== '') name = envName;
  else if (configFile) name = `${path.basename(configFile)}: ${name}`;
  let message = issue.message;
  if (issue.code === 'unrecognized_keys') message = `unknown setting ${issue.keys.map((k) => `'${k}'`).join(', ')}`;
  return `${name}: ${message}`;
}

function setPath(target: Record<string, unknown>, keys: readonly string[], value: unknown): void {
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[keys[keys.length - 1] as string] = value;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}
