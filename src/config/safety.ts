/**
 * The refusal of unsafe configurations. Production refuses to start, one line per problem,
 * when auth is off, no encryption key is set, a secret is short or well known, a remote
 * database is reached without TLS, or the credentials directory is open to other users.
 * Development refuses only what is unsafe anywhere: auth off on a non-loopback listener.
 */
import { readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { parse as parseConnectionString } from 'pg-connection-string';
import type { Config } from './load.js';

/** Values people paste from examples. Compared after lower-casing; also refused as substrings. */
const WEAK_WORDS = ['password', 'changeme', 'change-me', 'change_me', 'bulwark', 'secret', 'example', 'default', '123456', 'qwerty', 'letmein', 'admin'];
export const MIN_SECRET_BYTES = 32;

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || h === '::ffff:127.0.0.1';
}

/** Why a secret is weak, or undefined when it is acceptable. Never includes the secret. */
export function secretWeakness(secret: string): string | undefined {
  if (Buffer.byteLength(secret, 'utf8') < MIN_SECRET_BYTES) return `is shorter than ${MIN_SECRET_BYTES} bytes`;
  const lower = secret.toLowerCase();
  const word = WEAK_WORDS.find((w) => lower.includes(w));
  if (word) return 'is a known weak value (contains a common word)';
  if (new Set(secret).size < 8) return 'is a known weak value (too few distinct characters)';
  return undefined;
}

/** Problems with the encryption key list in any mode: each must be base64 of exactly 32 bytes. */
export function encryptionKeyProblems(keys: readonly string[]): string[] {
  const problems: string[] = [];
  keys.forEach((key, i) => {
    const bytes = /^[A-Za-z0-9+/_-]+={0,2}$/.test(key) ? Buffer.from(key, 'base64') : Buffer.alloc(0);
    if (bytes.length !== 32) problems.push(`BULWARK_ENCRYPTION_KEYS: key ${i + 1} is not base64 of exactly 32 bytes (make one with: openssl rand -base64 32)`);
    else if (new Set(bytes).size < 8) problems.push(`BULWARK_ENCRYPTION_KEYS: key ${i + 1} is a known weak value (too few distinct bytes)`);
  });
  return problems;
}

const TLS_SSLMODES = new Set(['require', 'verify-ca', 'verify-full']);

/**
 * Why a PostgreSQL URL would reach another machine without requiring TLS, or undefined when it
 * is local or requires TLS. Judged on the host and TLS setting that `pg` itself resolves (a
 * `?host=` parameter overrides the authority), and refusing the ambiguous forms outright.
 */
export function databaseTlsProblem(url: string): string | undefined {
  let query: URLSearchParams;
  try {
    query = new URL(url).searchParams;
  } catch {
    return undefined; // reported as malformed elsewhere
  }
  for (const name of ['host', 'sslmode', 'ssl']) {
    if (query.getAll(name).length > 1) return `the ${name} parameter is given more than once`;
  }
  const resolved = parseConnectionString(url);
  const host = resolved.host ?? '';
  // No host at all means libpq's PGHOST or default socket, which the URL does not show.
  if (host === '') return 'name the host explicitly (for a Unix socket: ?host=/var/run/postgresql)';
  if (host.startsWith('/') || isLoopbackHost(host)) return undefined;
  const sslmode = query.get('sslmode');
  if (!sslmode || !TLS_SSLMODES.has(sslmode) || !resolved.ssl) {
    return 'a remote database must be reached with sslmode=require, verify-ca or verify-full';
  }
  return undefined;
}

/** Why a CIDR or address is not usable, or undefined. Matching lives in security/cidr.ts. */
export function cidrProblem(value: string): string | undefined {
  const [address = '', prefix, ...rest] = value.split('/');
  // A zone id (fe80::1%eth0) names an interface, not a network anyone can reach from outside.
  const family = address.includes('%') ? 0 : isIP(address);
  if (family === 0 || rest.length > 0) return `'${value}' is not an IPv4 or IPv6 address or CIDR`;
  if (prefix === undefined) return undefined;
  const bits = /^\d{1,3}$/.test(prefix) ? Number(prefix) : Number.NaN;
  if (!(bits >= 0 && bits <= (family === 4 ? 32 : 128))) return `'${value}' has an invalid prefix length`;
  return undefined;
}

/** Problems with settings that protect the HTTP edge, in any mode. */
function edgeProblems(config: Config): string[] {
  const problems: string[] = [];
  for (const [name, list] of [
    ['BULWARK_TRUSTED_PROXIES', config.http.trustedProxies],
    ['BULWARK_IP_ALLOWLIST', config.http.ipAllowlist],
    ['BULWARK_ADMIN_IP_ALLOWLIST', config.admin.ipAllowlist],
  ] as const) {
    for (const value of list) {
      const problem = cidrProblem(value);
      if (problem) problems.push(`${name}: ${problem}`);
    }
  }
  for (const host of config.http.allowedHosts) {
    if (!/^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:\d{1,5})?$/i.test(host)) problems.push(`BULWARK_ALLOWED_HOSTS: '${host}' is not a host name or host:port`);
  }
  if (config.redis.url !== undefined && !/^rediss?:\/\/[^/]/.test(config.redis.url)) problems.push('REDIS_URL: must be a redis:// or rediss:// URL');
  if ((config.tls.cert === undefined) !== (config.tls.key === undefined)) {
    problems.push('BULWARK_TLS_CERT and BULWARK_TLS_KEY: set both or neither');
  }
  if (config.tls.admin && config.tls.cert === undefined) problems.push('BULWARK_ADMIN_TLS: needs BULWARK_TLS_CERT and BULWARK_TLS_KEY');
  for (const [name, file] of [
    ['BULWARK_TLS_CERT', config.tls.cert],
    ['BULWARK_TLS_KEY', config.tls.key],
    ['BULWARK_JWT_PRIVATE_KEY_FILE', config.jwt.privateKeyFile],
  ] as const) {
    if (file === undefined) continue;
    try {
      readFileSync(file);
    } catch (err) {
      problems.push(`${name}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  }
  // Production judges every secret's strength below; development still needs a usable length.
  if (config.mode === 'development' && config.secrets.jwtSecret !== undefined && Buffer.byteLength(config.secrets.jwtSecret) < MIN_SECRET_BYTES) {
    problems.push(`BULWARK_JWT_SECRET: is shorter than ${MIN_SECRET_BYTES} bytes`);
  }
  if (config.jwt.algorithm !== 'HS256' && config.jwt.privateKeyFile === undefined && config.mode === 'production') {
    problems.push(`BULWARK_JWT_PRIVATE_KEY_FILE: ${config.jwt.algorithm} needs a PKCS#8 private key file in production`);
  }
  return problems;
}

export interface SafetyOptions {
  /** Replaces `fs.statSync` for the credentials directory check. */
  statMode?: (path: string) => number | undefined;
}

/** Every reason this configuration must not be served. Empty means safe to start. */
export function safetyProblems(config: Config, options: SafetyOptions = {}): string[] {
  const statMode = options.statMode ?? defaultStatMode;
  const problems: string[] = [];
  const listeners = [
    { name: 'BULWARK_HOST', host: config.server.host },
    { name: 'BULWARK_ADMIN_HOST', host: config.admin.host },
  ];

  problems.push(...encryptionKeyProblems(config.secrets.encryptionKeys));
  problems.push(...edgeProblems(config));
  if (config.storage.usageRetentionDays < config.storage.retentionDays) {
    problems.push('BULWARK_USAGE_RETENTION_DAYS: must be at least BULWARK_RETENTION_DAYS (a body cannot outlive its row)');
  }
  if (config.database.url && !/^postgres(ql)?:\/\//.test(config.database.url)) {
    problems.push('DATABASE_URL: must be a postgres:// or postgresql:// URL');
  }
  const names = config.mcp.upstreams.map((u) => u.name);
  for (const name of new Set(names.filter((n, i) => names.indexOf(n) !== i))) problems.push(`mcp.upstreams: the name ${name} is used twice`);
  if (config.auth.offRequested && config.auth.requireAuth) {
    problems.push('BULWARK_AUTH: off contradicts BULWARK_REQUIRE_AUTH=true; remove one of them');
  }

  if (config.mode === 'development') {
    if (config.auth.offRequested && !config.auth.requireAuth) {
      for (const l of listeners.filter((l) => !isLoopbackHost(l.host))) {
        problems.push(`BULWARK_AUTH: off is allowed only while every listener binds a loopback address, but ${l.name} is ${l.host}`);
      }
    }
    return problems;
  }

  // Production.
  if (config.auth.offRequested) problems.push('BULWARK_AUTH: authentication cannot be turned off in production');
  if (config.secrets.encryptionKeys.length === 0) {
    problems.push('BULWARK_ENCRYPTION_KEYS: production needs at least one encryption key (make one with: openssl rand -base64 32)');
  }
  const secrets: [string, string | undefined][] = [
    ['BULWARK_JWT_SECRET', config.secrets.jwtSecret],
    ['BULWARK_API_KEY', config.bootstrapKey.key],
    ['BULWARK_ADMIN_KEY', config.secrets.adminKey],
    ['BULWARK_KEY_HASH_SECRET', config.secrets.keyHashSecret],
  ];
  for (const [name, value] of secrets) {
    const weakness = value === undefined ? undefined : secretWeakness(value);
    if (weakness) problems.push(`${name}: ${weakness}`);
  }
  // Upstream credentials and tokens must not cross the network in clear text.
  const mcpUrls = config.mcp.upstreams.flatMap((u, i) => [
    [`mcp.upstreams[${i}].url (${u.name})`, u.url],
    ...(u.oauth ? [[`mcp.upstreams[${i}].oauth.tokenUrl (${u.name})`, u.oauth.tokenUrl]] : []),
  ]) as [string, string][];
  for (const [name, url] of [
    ['BULWARK_UPSTREAM_URL', config.upstream.url],
    ['upstream.oauthTokenUrl', config.upstream.oauthTokenUrl],
    ...mcpUrls,
  ] as const) {
    const parsed = new URL(url);
    if (parsed.protocol !== 'https:' && !isLoopbackHost(parsed.hostname)) problems.push(`${name}: must be https (it carries upstream credentials)`);
  }
  if (config.http.allowedHosts.length === 0) {
    problems.push('BULWARK_ALLOWED_HOSTS: production needs the host names clients use to reach Bulwark (it refuses any other Host header, against DNS rebinding)');
  }
  for (const origin of config.http.corsOrigins) {
    if (!origin.startsWith('https://') && !isLoopbackHost(new URL(origin).hostname)) problems.push(`BULWARK_CORS_ORIGINS: ${origin} must be https in production`);
  }
  if (config.redis.url?.startsWith('redis://')) {
    const host = URL.canParse(config.redis.url) ? new URL(config.redis.url).hostname : '';
    if (!isLoopbackHost(host)) problems.push('REDIS_URL: a remote Redis must be reached over TLS (rediss://)');
  }
  const tlsProblem = config.database.url ? databaseTlsProblem(config.database.url) : undefined;
  if (tlsProblem) problems.push(`DATABASE_URL: ${tlsProblem}`);
  const mode = statMode(config.credentialsDir);
  if (mode !== undefined && (mode & 0o077) !== 0) {
    problems.push(`BULWARK_CREDENTIALS_DIR: ${config.credentialsDir} is accessible by group or other (mode ${(mode & 0o777).toString(8)}); run chmod 700 on it`);
  }
  return problems;
}

function defaultStatMode(p: string): number | undefined {
  try {
    return statSync(p).mode;
  } catch {
    return undefined;
  }
}
