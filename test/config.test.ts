/**
 * Configuration: loading (defaults, env over file, refusals naming the setting), the safety
 * refusals of `safetyProblems`, and the masking of `bulwark config print`. Every secret is
 * generated at run time, and every refusal is checked not to echo one.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { ConfigError, loadConfig } from '../src/config/load.js';
import { formatConfigText, MASK, maskConnectionUrl, maskedConfig } from '../src/config/print.js';
import { safetyProblems, secretWeakness } from '../src/config/safety.js';

type Env = Record<string, string>;

const tempDirs: string[] = [];
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});
afterEach(() => {
  vi.restoreAllMocks();
});

function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-config-'));
  tempDirs.push(dir);
  return dir;
}

/** 32 random bytes, base64url: strong enough for every secret setting. */
// Random, and drawn again in the rare case it holds a word the safety check refuses ('admin', …).
const strongSecret = (): string => {
  for (;;) {
    const secret = randomBytes(32).toString('base64url');
    if (!secretWeakness(secret)) return secret;
  }
};
/** A random value shorter than the 32-byte minimum. */
const shortSecret = (): string => randomBytes(8).toString('hex');
const encryptionKey = (bytes = 32): string => randomBytes(bytes).toString('base64');
const dbPassword = (): string => randomBytes(16).toString('hex');

function load(env: Env, cwd: string = tempDir()) {
  return loadConfig({ env, cwd });
}

/** The `ConfigError` that loading this env throws; fails the test if it loads. */
function refusal(env: Env, cwd: string = tempDir()): ConfigError {
  try {
    loadConfig({ env, cwd });
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected loadConfig to refuse this configuration');
}

/** A temp cwd holding one config file, and the env that points at it (relative to cwd). */
function withConfigFile(name: string, text: string): { cwd: string; env: Env } {
  const cwd = tempDir();
  writeFileSync(path.join(cwd, name), text);
  return { cwd, env: { BULWARK_CONFIG: name } };
}

/** Production with every secret strong; loopback-free, TLS-free and credentials-dir-free. */
function safeProductionEnv(): Env {
  return {
    NODE_ENV: 'production',
    BULWARK_ALLOWED_HOSTS: 'bulwark.example.com',
    BULWARK_ENCRYPTION_KEYS: encryptionKey(),
    BULWARK_JWT_SECRET: strongSecret(),
    BULWARK_API_KEY: strongSecret(),
    BULWARK_ADMIN_KEY: strongSecret(),
    BULWARK_KEY_HASH_SECRET: strongSecret(),
  };
}

function productionProblems(overrides: Env): string[] {
  return safetyProblems(load({ ...safeProductionEnv(), ...overrides }));
}

function expectNoSecretIn(text: string, secrets: readonly string[]): void {
  for (const secret of secrets) expect(text).not.toContain(secret);
}

/** Stricter, for random secrets only: not even an 8-character piece of one may show. */
function expectNoPieceOfSecretIn(text: string, secret: string): void {
  for (let i = 0; i + 8 <= secret.length; i++) expect(text).not.toContain(secret.slice(i, i + 8));
}

describe('loadConfig defaults', () => {
  it('binds both listeners to 127.0.0.1 on ports 3000 and 3001 with auth on in development', () => {
    const config = load({});
    expect(config.mode).toBe('development');
    expect(config.server).toEqual({ host: '127.0.0.1', port: 3000, publicUrl: undefined });
    expect(config.admin).toEqual({ host: '127.0.0.1', port: 3001, ipAllowlist: [] });
    expect(config.auth.enabled).toBe(true);
    expect(config.auth.offRequested).toBe(false);
  });

  it('resolves dataDir and the default credentials directory against the given cwd', () => {
    const cwd = tempDir();
    const config = load({}, cwd);
    expect(config.dataDir).toBe(path.join(cwd, '.bulwark'));
    expect(config.credentialsDir).toBe(path.join(cwd, '.bulwark', 'credentials'));
    expect(load({ BULWARK_DATA_DIR: 'state' }, cwd).dataDir).toBe(path.join(cwd, 'state'));
  });

  it('treats NODE_ENV=production as production and binds only the public listener to 0.0.0.0', () => {
    const config = load({ NODE_ENV: 'production' });
    expect(config.mode).toBe('production');
    expect(config.server.host).toBe('0.0.0.0');
    expect(config.admin.host).toBe('127.0.0.1');
  });

  it('returns a frozen config', () => {
    const config = load({ BULWARK_ALLOWED_HOSTS: 'a.example' });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.server)).toBe(true);
    expect(Object.isFrozen(config.http.allowedHosts)).toBe(true);
  });
});

describe('loadConfig refusals', () => {
  it('refuses an unknown BULWARK_* variable, naming it, with exit code 78', () => {
    const err = refusal({ BULWARK_PROT: '3000' });
    expect(err.problems).toEqual([expect.stringContaining('BULWARK_PROT')]);
    expect(err.problems[0]).toContain('unknown setting');
    expect(ConfigError.EXIT_CODE).toBe(78);
  });

  it('ignores BULWARK_CONFIG as a setting and variables without the BULWARK_ prefix', () => {
    const { cwd, env } = withConfigFile('empty.yaml', '');
    expect(() => load({ ...env, PATH: '/usr/bin', HOME: '/root' }, cwd)).not.toThrow();
  });

  it('refuses BULWARK_PORT=abc, naming the variable', () => {
    const err = refusal({ BULWARK_PORT: 'abc' });
    expect(err.problems).toEqual([expect.stringMatching(/^BULWARK_PORT: expected a whole number/)]);
  });

  it('refuses a port above 65535, naming the variable', () => {
    const err = refusal({ BULWARK_ADMIN_PORT: '70000' });
    expect(err.problems).toEqual([expect.stringMatching(/^BULWARK_ADMIN_PORT: /)]);
  });

  it('refuses BULWARK_STORE_BODIES=maybe, naming the variable', () => {
    const err = refusal({ BULWARK_STORE_BODIES: 'maybe' });
    expect(err.problems).toEqual([expect.stringMatching(/^BULWARK_STORE_BODIES: expected true or false/)]);
  });

  it('reports every bad variable at once', () => {
    const err = refusal({ BULWARK_PORT: 'abc', BULWARK_STORE_BODIES: 'maybe', BULWARK_NOPE: 'x' });
    expect(err.problems).toHaveLength(3);
  });

  it('never echoes secret values when refusing a configuration', () => {
    const secrets = [strongSecret(), strongSecret(), strongSecret()];
    const err = refusal({
      BULWARK_PORT: 'abc',
      BULWARK_JWT_SECRET: secrets[0]!,
      BULWARK_ADMIN_KEY: secrets[1]!,
      DATABASE_URL: `postgres://app:${secrets[2]}@db.internal/app`,
    });
    expectNoSecretIn(err.message, secrets);
    expectNoSecretIn(err.problems.join('\n'), secrets);
  });

  it('never echoes a secret given with the wrong type in a config file', () => {
    const secret = strongSecret();
    const { cwd, env } = withConfigFile('bulwark.yaml', `secrets:\n  jwtSecret: [${secret}]\n  encryptionKeys: ${secret}\n`);
    const err = refusal(env, cwd);
    expect(err.problems).toEqual([
      expect.stringContaining('secrets.encryptionKeys'),
      expect.stringContaining('secrets.jwtSecret'),
    ]);
    expectNoSecretIn(err.message, [secret]);
  });

  it('never echoes a secret that sits next to a JSON syntax error', () => {
    // Unquoted and starting with a letter: V8 then quotes the source around the bad token.
    const secret = `s${randomBytes(24).toString('hex')}`;
    const { cwd, env } = withConfigFile('bulwark.json', `{"secrets": {"jwtSecret": ${secret}}}`);
    const err = refusal(env, cwd);
    expect(err.problems).toEqual([expect.stringMatching(/^BULWARK_CONFIG: .*bulwark\.json is not valid JSON/)]);
    expectNoPieceOfSecretIn(err.message, secret);
  });

  it('says where a JSON syntax error is', () => {
    const { cwd, env } = withConfigFile('bulwark.json', '{\n  "server": {"port": 1,}\n}');
    const err = refusal(env, cwd);
    expect(err.problems).toEqual([expect.stringMatching(/is not valid JSON at line 2, column \d+$/)]);
  });

  it('never echoes a secret that sits next to a YAML syntax error', () => {
    const secret = strongSecret();
    const { cwd, env } = withConfigFile('bulwark.yaml', `secrets:\n  jwtSecret: *${secret}\n`);
    const err = refusal(env, cwd);
    expect(err.problems).toEqual([expect.stringMatching(/^BULWARK_CONFIG: .*bulwark\.yaml is not valid YAML/)]);
    expectNoPieceOfSecretIn(err.message, secret);
  });

  it('says where a YAML syntax error is', () => {
    const { cwd, env } = withConfigFile('bulwark.yaml', 'server:\n  port: 1\n  port: 2\n');
    const err = refusal(env, cwd);
    expect(err.problems).toEqual([expect.stringMatching(/is not valid YAML at line 3, column 3$/)]);
  });

  it('does not emit YAML warnings that quote a secret from the config file', () => {
    const emitWarning = vi.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    const secret = strongSecret();
    const { cwd, env } = withConfigFile('bulwark.yaml', `secrets:\n  jwtSecret: !!int ${secret}\n`);
    load(env, cwd);
    expectNoSecretIn(JSON.stringify(emitWarning.mock.calls.map((call) => String(call[0]))), [secret]);
  });
});

describe('loadConfig with a config file', () => {
  it('reads settings from a JSON file', () => {
    const { cwd, env } = withConfigFile('bulwark.json', JSON.stringify({ server: { port: 4000 }, storage: { bodies: true } }));
    const config = load(env, cwd);
    expect(config.server.port).toBe(4000);
    expect(config.storage.bodies).toBe(true);
    expect(config.configFile).toBe(path.join(cwd, 'bulwark.json'));
  });

  it('reads settings from a YAML file', () => {
    const { cwd, env } = withConfigFile('bulwark.yaml', 'admin:\n  port: 4001\nhttp:\n  allowedHosts: [gw.example.com]\n');
    const config = load(env, cwd);
    expect(config.admin.port).toBe(4001);
    expect(config.http.allowedHosts).toEqual(['gw.example.com']);
  });

  it('refuses an unknown key in a JSON file, naming the key, its path and the file', () => {
    const { cwd, env } = withConfigFile('bulwark.json', JSON.stringify({ server: { port: 4000, hots: '0.0.0.0' } }));
    const err = refusal(env, cwd);
    expect(err.problems).toEqual([expect.stringMatching(/^bulwark\.json: server: unknown setting 'hots'/)]);
  });

  it('refuses an unknown key in a YAML file, naming the key, its path and the file', () => {
    const { cwd, env } = withConfigFile('bulwark.yaml', 'storage:\n  retentionDays: 7\n  bodys: true\n');
    const err = refusal(env, cwd);
    expect(err.problems).toEqual([expect.stringMatching(/^bulwark\.yaml: storage: unknown setting 'bodys'/)]);
  });

  it('refuses an unknown top-level key in a YAML file, naming the key', () => {
    const { cwd, env } = withConfigFile('bulwark.yaml', 'srever:\n  port: 4000\n');
    const err = refusal(env, cwd);
    expect(err.problems).toEqual([expect.stringContaining("unknown setting 'srever'")]);
  });

  it('refuses a wrongly typed value in a file, naming the file and the path', () => {
    const { cwd, env } = withConfigFile('bulwark.yaml', 'storage:\n  bodies: maybe\n');
    const err = refusal(env, cwd);
    expect(err.problems).toEqual([expect.stringMatching(/^bulwark\.yaml: storage\.bodies: /)]);
  });

  it('refuses a config file that cannot be read, naming BULWARK_CONFIG', () => {
    const err = refusal({ BULWARK_CONFIG: 'missing.yaml' });
    expect(err.problems).toEqual([expect.stringMatching(/^BULWARK_CONFIG: cannot read .*missing\.yaml \(ENOENT\)/)]);
  });

  it('lets environment variables override the file and keeps the rest of the file', () => {
    const { cwd, env } = withConfigFile('bulwark.yaml', 'server:\n  port: 4000\nadmin:\n  port: 4001\n');
    const config = load({ ...env, BULWARK_PORT: '5000' }, cwd);
    expect(config.server.port).toBe(5000);
    expect(config.admin.port).toBe(4001);
  });
});

describe('safetyProblems in development', () => {
  it('allows BULWARK_AUTH=off while every listener is on loopback', () => {
    const config = load({ BULWARK_AUTH: 'off' });
    expect(config.auth.enabled).toBe(false);
    expect(safetyProblems(config)).toEqual([]);
  });

  it('refuses BULWARK_AUTH=off with BULWARK_HOST=0.0.0.0', () => {
    const problems = safetyProblems(load({ BULWARK_AUTH: 'off', BULWARK_HOST: '0.0.0.0' }));
    expect(problems).toEqual([expect.stringMatching(/^BULWARK_AUTH: .*BULWARK_HOST is 0\.0\.0\.0/)]);
  });

  it('refuses BULWARK_AUTH=off with a non-loopback admin listener', () => {
    const problems = safetyProblems(load({ BULWARK_AUTH: 'off', BULWARK_ADMIN_HOST: '0.0.0.0' }));
    expect(problems).toEqual([expect.stringContaining('BULWARK_ADMIN_HOST')]);
  });

  it('keeps auth enabled when BULWARK_REQUIRE_AUTH=true', () => {
    const config = load({ BULWARK_REQUIRE_AUTH: 'true' });
    expect(config.auth.enabled).toBe(true);
    expect(config.auth.requireAuth).toBe(true);
    expect(safetyProblems(config)).toEqual([]);
  });

  it('keeps auth enabled when BULWARK_REQUIRE_AUTH=true meets BULWARK_AUTH=off, and reports the contradiction', () => {
    const config = load({ BULWARK_REQUIRE_AUTH: 'true', BULWARK_AUTH: 'off' });
    expect(config.auth.enabled).toBe(true);
    expect(safetyProblems(config)).toEqual([expect.stringContaining('BULWARK_REQUIRE_AUTH')]);
  });

  it('does not require secrets or an encryption key', () => {
    expect(safetyProblems(load({}))).toEqual([]);
  });
});

describe('safetyProblems in production', () => {
  it('yields zero problems for a fully safe production config', () => {
    const credentialsDir = path.join(tempDir(), 'credentials');
    mkdirSync(credentialsDir, { mode: 0o700 });
    chmodSync(credentialsDir, 0o700);
    const config = load({
      ...safeProductionEnv(),
      BULWARK_CREDENTIALS_DIR: credentialsDir,
      DATABASE_URL: `postgres://bulwark:${dbPassword()}@db.internal:5432/bulwark?sslmode=require`,
    });
    expect(config.mode).toBe('production');
    expect(safetyProblems(config)).toEqual([]);
  });

  it('refuses auth off', () => {
    expect(productionProblems({ BULWARK_AUTH: 'off' })).toEqual([expect.stringMatching(/^BULWARK_AUTH: /)]);
  });

  it('refuses a start without an encryption key', () => {
    const env = safeProductionEnv();
    delete env.BULWARK_ENCRYPTION_KEYS;
    expect(safetyProblems(load(env))).toEqual([expect.stringMatching(/^BULWARK_ENCRYPTION_KEYS: production needs/)]);
  });

  it.each([
    ['16 bytes', () => encryptionKey(16)],
    ['48 bytes', () => encryptionKey(48)],
    ['not base64', () => `${strongSecret()}!`],
  ])('refuses an encryption key that is %s', (_label, makeKey) => {
    const key = makeKey();
    const problems = productionProblems({ BULWARK_ENCRYPTION_KEYS: key });
    expect(problems).toEqual([expect.stringMatching(/^BULWARK_ENCRYPTION_KEYS: key 1 is not base64 of exactly 32 bytes/)]);
    expectNoSecretIn(problems.join('\n'), [key]);
  });

  it('names which of several encryption keys is bad', () => {
    const problems = productionProblems({ BULWARK_ENCRYPTION_KEYS: `${encryptionKey()},${encryptionKey(16)}` });
    expect(problems).toEqual([expect.stringContaining('key 2 ')]);
  });

  const SECRET_VARS = ['BULWARK_JWT_SECRET', 'BULWARK_API_KEY', 'BULWARK_ADMIN_KEY', 'BULWARK_KEY_HASH_SECRET'] as const;

  it.each(SECRET_VARS)('refuses %s shorter than 32 bytes without echoing it', (name) => {
    const value = shortSecret();
    const problems = productionProblems({ [name]: value });
    expect(problems).toEqual([`${name}: is shorter than 32 bytes`]);
    expectNoSecretIn(problems.join('\n'), [value]);
  });

  // Weak values built from a random part where possible, so no fixture looks like a real secret.
  const WEAK_VALUES: [string, () => string][] = [
    ['changemechangemechangemechangeme', () => 'changemechangemechangemechangeme'],
    ['password123password123password123', () => 'password123password123password123'],
    ['a value containing bulwark', () => `bulwark-${randomBytes(16).toString('hex')}`],
    ['a value of few distinct characters', () => 'ab'.repeat(20)],
  ];
  const WEAK_CASES = SECRET_VARS.flatMap((name) => WEAK_VALUES.map(([label, make]) => [name, label, make] as const));

  it.each(WEAK_CASES)('refuses %s set to %s without echoing it', (name, _label, make) => {
    const value = make();
    const problems = productionProblems({ [name]: value });
    expect(problems).toEqual([expect.stringMatching(new RegExp(`^${name}: is a known weak value`))]);
    expectNoSecretIn(problems.join('\n'), [value]);
  });

  it.each([
    ['no sslmode', ''],
    ['sslmode=disable', '?sslmode=disable'],
    ['sslmode=prefer', '?sslmode=prefer'],
  ])('refuses a remote DATABASE_URL with %s', (_label, query) => {
    const password = dbPassword();
    const problems = productionProblems({ DATABASE_URL: `postgres://bulwark:${password}@db.internal:5432/bulwark${query}` });
    expect(problems).toEqual([expect.stringMatching(/^DATABASE_URL: a remote database must be reached with sslmode=require/)]);
    expectNoSecretIn(problems.join('\n'), [password]);
  });

  it.each(['require', 'verify-ca', 'verify-full'])('accepts a remote DATABASE_URL with sslmode=%s', (sslmode) => {
    const url = `postgresql://bulwark:${dbPassword()}@db.internal:5432/bulwark?sslmode=${sslmode}`;
    expect(productionProblems({ DATABASE_URL: url })).toEqual([]);
  });

  it.each(['127.0.0.1', 'localhost', '[::1]'])('accepts a DATABASE_URL on loopback %s without sslmode', (host) => {
    const url = `postgres://bulwark:${dbPassword()}@${host}:5432/bulwark`;
    expect(productionProblems({ DATABASE_URL: url })).toEqual([]);
  });

  it('refuses a credentials directory with mode 0755', () => {
    const dir = tempDir();
    chmodSync(dir, 0o755);
    const problems = productionProblems({ BULWARK_CREDENTIALS_DIR: dir });
    expect(problems).toEqual([expect.stringMatching(/^BULWARK_CREDENTIALS_DIR: .* \(mode 755\); run chmod 700/)]);
  });

  it('accepts a credentials directory with mode 0700', () => {
    const dir = tempDir();
    chmodSync(dir, 0o700);
    expect(productionProblems({ BULWARK_CREDENTIALS_DIR: dir })).toEqual([]);
  });

  it('reports every problem at once and none of the secret values', () => {
    const weak = {
      BULWARK_JWT_SECRET: shortSecret(),
      BULWARK_API_KEY: `bulwark${randomBytes(16).toString('hex')}`,
      BULWARK_ADMIN_KEY: shortSecret(),
      BULWARK_KEY_HASH_SECRET: `changeme${randomBytes(16).toString('hex')}`,
      BULWARK_ENCRYPTION_KEYS: encryptionKey(16),
    };
    const password = dbPassword();
    const problems = safetyProblems(
      load({ NODE_ENV: 'production', BULWARK_AUTH: 'off', ...weak, DATABASE_URL: `postgres://bulwark:${password}@db.internal/bulwark` }),
    );
    expect(problems).toHaveLength(8); // the six above, the database URL, and the host allow-list
    expectNoSecretIn(problems.join('\n'), [...Object.values(weak), password]);
  });
});

describe('maskedConfig', () => {
  function fullySecretConfig() {
    const secrets = {
      apiKey: strongSecret(),
      encryptionKeys: [encryptionKey(), encryptionKey()],
      jwtSecret: strongSecret(),
      adminKey: strongSecret(),
      keyHashSecret: strongSecret(),
      dbPassword: dbPassword(),
      dbQueryPassword: dbPassword(),
      redisPassword: dbPassword(),
    };
    const config = load({
      BULWARK_API_KEY: secrets.apiKey,
      BULWARK_ENCRYPTION_KEYS: secrets.encryptionKeys.join(','),
      BULWARK_JWT_SECRET: secrets.jwtSecret,
      BULWARK_ADMIN_KEY: secrets.adminKey,
      BULWARK_KEY_HASH_SECRET: secrets.keyHashSecret,
      DATABASE_URL: `postgres://bulwark:${secrets.dbPassword}@db.internal:5432/gateway?sslmode=require&password=${secrets.dbQueryPassword}`,
      REDIS_URL: `redis://:${secrets.redisPassword}@cache.internal:6380/2`,
    });
    const values = [...secrets.encryptionKeys, ...Object.values(secrets).filter((v): v is string => typeof v === 'string')];
    return { config, values };
  }

  it('hides every secret from the JSON and the text output', () => {
    const { config, values } = fullySecretConfig();
    const masked = maskedConfig(config);
    expectNoSecretIn(JSON.stringify(masked), values);
    expectNoSecretIn(formatConfigText(masked), values);
    expect(masked).toMatchObject({
      bootstrapKey: { key: MASK, scopes: ['admin'] },
      secrets: { encryptionKeys: [MASK, MASK], jwtSecret: MASK, adminKey: MASK, keyHashSecret: MASK },
    });
  });

  it('masks the DATABASE_URL password and password parameter but keeps scheme, user, host, port and database', () => {
    const { config } = fullySecretConfig();
    const masked = maskedConfig(config) as { database: { url: string } };
    expect(masked.database.url).toBe(`postgres://bulwark:${MASK}@db.internal:5432/gateway?sslmode=require&password=${MASK}`);
  });

  it('masks the REDIS_URL password but keeps host, port and database', () => {
    const { config } = fullySecretConfig();
    const masked = maskedConfig(config) as { redis: { url: string } };
    expect(masked.redis.url).toBe(`redis://:${MASK}@cache.internal:6380/2`);
  });

  it('masks a connection URL that does not parse as a whole', () => {
    expect(maskConnectionUrl(`postgres://bulwark:${dbPassword()}@db.internal:notaport/x`)).toBe(MASK);
  });

  it('leaves a connection URL without a password unchanged', () => {
    expect(maskConnectionUrl('postgres://bulwark@127.0.0.1:5432/gateway')).toBe('postgres://bulwark@127.0.0.1:5432/gateway');
  });

  it('shows unset secrets as null so operators can see what is missing', () => {
    const masked = maskedConfig(load({}));
    expect(masked).toMatchObject({
      bootstrapKey: { key: null },
      secrets: { encryptionKeys: [], jwtSecret: null, adminKey: null, keyHashSecret: null },
      database: { url: null },
      redis: { url: null },
    });
  });

  it('returns plain JSON that survives a round trip and leaves the config untouched', () => {
    const { config } = fullySecretConfig();
    const masked = maskedConfig(config);
    expect(JSON.parse(JSON.stringify(masked))).toEqual(masked);
    expect(config.secrets.jwtSecret).not.toBe(MASK);
  });

  it('formats the text output as one key.path = value line per setting', () => {
    const cwd = tempDir();
    const text = formatConfigText(maskedConfig(load({ BULWARK_ALLOWED_HOSTS: 'a.example,b.example', BULWARK_JWT_SECRET: strongSecret() }, cwd)));
    const lines = text.trimEnd().split('\n');
    expect(lines).toContain('server.host = 127.0.0.1');
    expect(lines).toContain('server.port = 3000');
    expect(lines).toContain('auth.enabled = true');
    expect(lines).toContain(`dataDir = ${path.join(cwd, '.bulwark')}`);
    expect(lines).toContain('http.allowedHosts = [a.example, b.example]');
    expect(lines).toContain(`secrets.jwtSecret = ${MASK}`);
    expect(lines).toContain('secrets.adminKey = (not set)');
    for (const line of lines) expect(line).toMatch(/^[A-Za-z0-9.]+ = /);
  });
});

describe('retention settings', () => {
  it('refuses a usage retention shorter than the body retention', () => {
    expect(safetyProblems(load({ BULWARK_RETENTION_DAYS: '60', BULWARK_USAGE_RETENTION_DAYS: '30' }))).toEqual([
      'BULWARK_USAGE_RETENTION_DAYS: must be at least BULWARK_RETENTION_DAYS (a body cannot outlive its row)',
    ]);
  });
});

describe('protection-layer settings', () => {
  it.each([
    ['BULWARK_IP_ALLOWLIST', '10.0.0.0/33', "BULWARK_IP_ALLOWLIST: '10.0.0.0/33' has an invalid prefix length"],
    ['BULWARK_TRUSTED_PROXIES', '10.0.0', "BULWARK_TRUSTED_PROXIES: '10.0.0' is not an IPv4 or IPv6 address or CIDR"],
    ['BULWARK_ADMIN_IP_ALLOWLIST', 'fd00::/129', "BULWARK_ADMIN_IP_ALLOWLIST: 'fd00::/129' has an invalid prefix length"],
    ['BULWARK_ALLOWED_HOSTS', 'https://gw.example', "BULWARK_ALLOWED_HOSTS: 'https://gw.example' is not a host name or host:port"],
    ['BULWARK_TLS_CERT', '/nonexistent/cert.pem', 'BULWARK_TLS_CERT and BULWARK_TLS_KEY: set both or neither'],
  ])('refuses a bad %s, naming it', (name, value, problem) => {
    expect(safetyProblems(load({ [name]: value }))).toContain(problem);
  });

  it('accepts IPv4 and IPv6 CIDRs, bare addresses and host:port entries', () => {
    const config = load({
      BULWARK_IP_ALLOWLIST: '10.0.0.0/8,192.168.1.7,fd00::/8,::1',
      BULWARK_TRUSTED_PROXIES: '127.0.0.1/32',
      BULWARK_ALLOWED_HOSTS: 'gw.example,gw.example:8443,[::1]:3000',
      BULWARK_CORS_ORIGINS: 'https://app.example/',
    });
    expect(safetyProblems(config)).toEqual([]);
    // Origins are compared in their serialised form: no path, no trailing slash.
    expect(config.http.corsOrigins).toEqual(['https://app.example']);
  });

  it('refuses a CORS origin that is not a URL when loading', () => {
    expect(refusal({ BULWARK_CORS_ORIGINS: 'app.example' }).problems).toEqual([expect.stringMatching(/^BULWARK_CORS_ORIGINS/)]);
  });

  it('refuses an unreadable TLS key file, naming the setting and not its contents', () => {
    const problems = safetyProblems(load({ BULWARK_TLS_CERT: '/nonexistent/cert.pem', BULWARK_TLS_KEY: '/nonexistent/key.pem' }));
    expect(problems).toContain('BULWARK_TLS_CERT: cannot read /nonexistent/cert.pem (ENOENT)');
    expect(problems).toContain('BULWARK_TLS_KEY: cannot read /nonexistent/key.pem (ENOENT)');
  });

  it('in production, refuses a missing host allow-list and plain-http CORS origins', () => {
    const { BULWARK_ALLOWED_HOSTS: _omitted, ...env } = safeProductionEnv();
    expect(safetyProblems(load(env))).toEqual([expect.stringMatching(/^BULWARK_ALLOWED_HOSTS: production needs/)]);
    expect(productionProblems({ BULWARK_CORS_ORIGINS: 'http://app.example' })).toEqual(['BULWARK_CORS_ORIGINS: http://app.example must be https in production']);
  });

  it('accepts them left at their defaults', () => {
    expect(safetyProblems(load({}))).toEqual([]);
  });
});

describe('review fixes', () => {
  it('masks credentials in any URL setting, not only the database and Redis ones', () => {
    const password = randomBytes(8).toString('hex');
    const masked = maskedConfig(load({ BULWARK_UPSTREAM_URL: `https://user:${password}@upstream.example/v1?api_key=${password}x` }));
    expect(JSON.stringify(masked)).not.toContain(password);
  });

  it('treats NODE_ENV=production with BULWARK_MODE=development as a contradiction, not as development', () => {
    const err = refusal({ NODE_ENV: 'production', BULWARK_MODE: 'development' });
    expect(err.problems).toEqual(['BULWARK_MODE: development contradicts NODE_ENV=production; remove one of them']);
  });

  it.each([
    ['a ?host= parameter that points elsewhere', 'postgres://u@localhost/db?host=db.example.com'],
    ['a repeated sslmode whose last value disables TLS', 'postgres://u@db.example.com/db?sslmode=require&sslmode=disable'],
    ['no host at all (libpq would use PGHOST)', 'postgres:///bulwark'],
    ['sslmode=prefer', 'postgres://u@db.example.com/db?sslmode=prefer'],
  ])('refuses a production DATABASE_URL with %s', (_what, url) => {
    const problems = safetyProblems(load({ ...safeProductionEnv(), DATABASE_URL: url }), { statMode: () => undefined });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^DATABASE_URL: /);
  });

  it('accepts a Unix socket named with ?host= and a remote host with sslmode=verify-full', () => {
    for (const url of ['postgres://u@/db?host=/var/run/postgresql', 'postgres://u@db.example.com/db?sslmode=verify-full']) {
      expect(safetyProblems(load({ ...safeProductionEnv(), DATABASE_URL: url }), { statMode: () => undefined })).toEqual([]);
    }
  });
});

describe('upstream URLs in production', () => {
  it('refuses a plain-http upstream or token endpoint off loopback, and accepts https or loopback', () => {
    const problems = safetyProblems(load({ ...safeProductionEnv(), BULWARK_UPSTREAM_URL: 'http://llm.internal:8080' }), { statMode: () => undefined });
    expect(problems).toEqual(['BULWARK_UPSTREAM_URL: must be https (it carries upstream credentials)']);
    expect(safetyProblems(load({ ...safeProductionEnv(), BULWARK_UPSTREAM_URL: 'http://127.0.0.1:8080' }), { statMode: () => undefined })).toEqual([]);
  });
});

describe('MCP settings', () => {
  const upstreams = (list: unknown[]) => withConfigFile('bulwark.json', JSON.stringify({ mcp: { upstreams: list } }));

  it('defaults sessions to 30 minutes idle, 2 hours at most and 100 per key, history to 5 minutes and 1000 events', () => {
    const { mcp } = load({});
    expect(mcp.sessions).toEqual({ idleMinutes: 30, maxHours: 2, maxPerKey: 100 });
    expect(mcp.events).toEqual({ maxAgeSeconds: 300, maxEvents: 1000 });
    expect(mcp.upstreams).toEqual([]);
  });

  it('refuses a plain-http MCP upstream or token endpoint off loopback in production, naming it', () => {
    const { cwd, env } = upstreams([
      { name: 'tools', url: 'http://tools.internal/mcp', oauth: { tokenUrl: 'http://auth.internal/token', clientId: 'c', clientSecret: 's' } },
      { name: 'local', url: 'http://127.0.0.1:9000/mcp' },
    ]);
    const problems = safetyProblems(load({ ...safeProductionEnv(), ...env }, cwd), { statMode: () => undefined });
    expect(problems).toEqual([
      'mcp.upstreams[0].url (tools): must be https (it carries upstream credentials)',
      'mcp.upstreams[0].oauth.tokenUrl (tools): must be https (it carries upstream credentials)',
    ]);
  });

  it('refuses two upstreams with one name, and a name that cannot prefix a tool', () => {
    const twice = upstreams([
      { name: 'tools', url: 'https://a.example/mcp' },
      { name: 'tools', url: 'https://b.example/mcp' },
    ]);
    expect(safetyProblems(load(twice.env, twice.cwd))).toContain('mcp.upstreams: the name tools is used twice');
    const bad = upstreams([{ name: 'Tools!', url: 'https://a.example/mcp' }]);
    expect(refusal(bad.env, bad.cwd).problems.join('\n')).toMatch(/mcp\.upstreams\.0\.name/);
    const reserved = upstreams([{ name: 'bulwark', url: 'https://a.example/mcp' }]);
    expect(refusal(reserved.env, reserved.cwd).problems.join('\n')).toMatch(/mcp\.upstreams\.0\.name.*own tools/);
  });

  it("masks an upstream's headers and OAuth client secret wherever config is shown", () => {
    const secret = strongSecret();
    const { cwd, env } = upstreams([
      { name: 'tools', url: 'https://a.example/mcp', headers: { authorization: `Bearer ${secret}` }, oauth: { tokenUrl: 'https://auth.example/token', clientId: 'bulwark', clientSecret: secret } },
    ]);
    const masked = maskedConfig(load(env, cwd));
    const text = JSON.stringify(masked);
    expectNoPieceOfSecretIn(text, secret);
    expect(masked).toMatchObject({ mcp: { upstreams: [{ name: 'tools', headers: MASK, oauth: { clientId: 'bulwark', clientSecret: MASK } }] } });
    expectNoPieceOfSecretIn(formatConfigText(masked), secret);
  });
});
