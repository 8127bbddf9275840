/**
 * Secret masking (src/audit/mask.ts) and the masked logger (src/http/logger.ts).
 *
 * Every fake credential is generated at run time, so this file holds no secret-shaped literal
 * and a pattern that stops matching makes a test fail instead of passing on a fixed string.
 */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';

import { describe, expect, it } from 'vitest';

import { maskDeep, maskHeaders, maskSecrets, SENSITIVE_HEADER_NAMES } from '../src/audit/mask.js';
import { createLogger } from '../src/http/logger.js';

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

function base62(length: number): string {
  return [...randomBytes(length)].map((byte) => BASE62[byte % 62]).join('');
}

function opaqueToken(): string {
  return randomBytes(20).toString('hex');
}

function anthropicKey(kind: 'api03' | 'oat01' | 'ort01' = 'api03'): string {
  return `sk-ant-${kind}-${randomBytes(24).toString('base64url')}`;
}

function bulwarkKey(mode: 'live' | 'test' = 'live'): { key: string; id: string; secret: string } {
  const id = base62(16);
  const secret = base62(43);
  return { key: `bwk_${mode}_${id}_${secret}`, id, secret };
}

function jwt(signature = randomBytes(32).toString('base64url')): string {
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: opaqueToken(), exp: 1 })}.${signature}`;
}

function basicCredentials(): string {
  return Buffer.from(`agent:${opaqueToken()}`).toString('base64');
}

describe('maskSecrets', () => {
  it.each(['api03', 'oat01', 'ort01'] as const)('masks an Anthropic %s credential down to sk-ant-****', (kind) => {
    const key = anthropicKey(kind);
    const masked = maskSecrets(`upstream call with ${key} failed`);
    expect(masked).toBe('upstream call with sk-ant-**** failed');
  });

  it.each(['live', 'test'] as const)('keeps the public id of a %s Bulwark key and hides its secret', (mode) => {
    const { key, id, secret } = bulwarkKey(mode);
    const masked = maskSecrets(`presented ${key} from 10.0.0.1`);
    expect(masked).toBe(`presented bwk_${mode}_${id}_**** from 10.0.0.1`);
    expect(masked).not.toContain(secret);
  });

  it('hides a malformed Bulwark key entirely', () => {
    const { key, id } = bulwarkKey();
    const shapes = [
      key.slice(0, -1), // truncated secret
      `bwk_live_${base62(15)}_${base62(43)}`, // short id
      `${key}${base62(4)}`, // secret too long
      `bwk_test_${id}`, // no secret part
      `bwk_live_${id}_${base62(20)}_${base62(23)}`, // extra separator
    ];
    for (const shape of shapes) {
      expect(maskSecrets(`key ${shape} rejected`)).toBe('key bwk_**** rejected');
    }
  });

  it('masks Bearer and Basic credentials whatever the case of the scheme', () => {
    const token = opaqueToken();
    const basic = basicCredentials();
    expect(maskSecrets(`Bearer ${token}`)).toBe('Bearer ****');
    expect(maskSecrets(`bearer ${token}`)).toBe('bearer ****');
    expect(maskSecrets(`BEARER  ${token}`)).toBe('BEARER  ****');
    expect(maskSecrets(`Basic ${basic}`)).toBe('Basic ****');
    expect(maskSecrets(`upstream sent "Basic ${basic}", retrying`)).toBe('upstream sent "Basic ****", retrying');
  });

  it('masks JWTs, including unsecured ones with an empty signature', () => {
    expect(maskSecrets(`id ${jwt()} ok`)).toBe('id eyJ**** ok');
    expect(maskSecrets(`id ${jwt('')} ok`)).toBe('id eyJ**** ok');
  });

  it.each([
    'access_token',
    'refresh_token',
    'id_token',
    'client_secret',
    'api_key',
    'apikey',
    'x-api-key',
    'password',
    'secret',
    'token',
    'authorization',
    'ACCESS_TOKEN',
    'Api_Key',
  ])('masks the value named %s in key=value, key: value and JSON forms', (name) => {
    const value = opaqueToken();
    expect(maskSecrets(`${name}=${value}&page=2`)).toBe(`${name}=****&page=2`);
    expect(maskSecrets(`${name}: ${value}`)).toBe(`${name}: ****`);
    expect(maskSecrets(`{"${name}": "${value}", "page": 2}`)).toBe(`{"${name}": "****", "page": 2}`);
    expect(maskSecrets(`{ '${name}': '${value}' }`)).toBe(`{ '${name}': '****' }`);
  });

  it('masks the whole value of an authorization header line, scheme included', () => {
    const token = opaqueToken();
    expect(maskSecrets(`Authorization: Token ${token}`)).toBe('Authorization: ****');
    expect(maskSecrets(`Authorization: Bearer ${token}`)).toBe('Authorization: Bearer ****');
  });

  it('masks api_key and access_token in a query string and keeps the other parameters', () => {
    const apiKey = opaqueToken();
    const accessToken = opaqueToken();
    const url = `https://gw.example.com/v1/messages?model=claude&api_key=${apiKey}&access_token=${accessToken}&stream=true`;
    expect(maskSecrets(url)).toBe(
      'https://gw.example.com/v1/messages?model=claude&api_key=****&access_token=****&stream=true',
    );
  });

  it('masks the password of credentials in a URL but keeps the user and host', () => {
    const password = opaqueToken();
    expect(maskSecrets(`postgres://bulwark:${password}@db.internal:5432/bulwark`)).toBe(
      'postgres://bulwark:****@db.internal:5432/bulwark',
    );
    expect(maskSecrets(`redis://:${password}@cache:6379`)).toBe('redis://:****@cache:6379');
    // A raw `@` in the password is hidden up to the last `@` before the host.
    expect(maskSecrets(`https://u:${password}@x${password}@host/path`)).toBe('https://u:****@host/path');
  });

  it('masks secrets inside JSON text and leaves it valid JSON', () => {
    const { key, id } = bulwarkKey();
    const body = JSON.stringify({
      model: 'claude',
      headers: { Authorization: `Bearer ${opaqueToken()}`, 'x-api-key': anthropicKey() },
      refresh_token: opaqueToken(),
      token: 42,
      bulwark: key,
      nested: JSON.stringify({ password: opaqueToken() }),
    });
    const masked = maskSecrets(body);
    expect(JSON.parse(masked)).toEqual({
      model: 'claude',
      headers: { Authorization: 'Bearer ****', 'x-api-key': 'sk-ant-****' },
      refresh_token: '****',
      token: '****',
      bulwark: `bwk_live_${id}_****`,
      nested: '{"password":"****"}',
    });
  });

  it('masks a token carried in an error message', () => {
    const token = jwt();
    const key = anthropicKey();
    const error = new Error(`upstream rejected ${token} (x-api-key: ${key})`);
    expect(maskSecrets(error.message)).toBe('upstream rejected eyJ**** (x-api-key: sk-ant-****)');
  });

  it('masks the body of a PEM private key', () => {
    const body = randomBytes(48).toString('base64');
    const pem = `-----BEGIN PRIVATE KEY-----\n${body}\n-----END PRIVATE KEY-----`;
    expect(maskSecrets(`loaded ${pem}`)).toBe('loaded -----BEGIN PRIVATE KEY-----****-----END PRIVATE KEY-----');
  });

  it('masks a whole Cookie header line, not only its first pair', () => {
    const session = opaqueToken();
    expect(maskSecrets(`Cookie: theme=dark; session=${session}\nAccept: */*`)).toBe('Cookie: ****\nAccept: */*');
  });

  it('leaves ordinary text, non-secret names and prose unchanged', () => {
    // Decision: after Bearer/Basic, a plain word of up to 7 letters is read as prose, not a
    // credential. Longer words are masked: an unreadable log line is cheaper than a leak.
    const untouched = [
      'Bearer of good news',
      'the bearer token has expired',
      'Basic auth is disabled',
      'token_type: Bearer',
      'max_tokens=1024 stop_reason=end_turn',
      'apiKeyId=key_123 tokens: 17',
      'password reset requested for user 42',
      'GET https://api.example.com/v1/models?page=2&limit=20 200',
      'WWW-Authenticate: Bearer realm="bulwark", error="invalid_token", resource_metadata="https://gw.example.com/.well-known/oauth-protected-resource"',
      'ssh://git@github.com/org/repo.git',
      '',
    ];
    for (const text of untouched) expect(maskSecrets(text)).toBe(text);
  });

  it('changes nothing when masking text that is already masked', () => {
    const { key } = bulwarkKey();
    const text = [
      `Authorization: Bearer ${opaqueToken()}`,
      `x-api-key: ${anthropicKey()}`,
      `key=${key} bad=${key.slice(0, 30)}`,
      `jwt ${jwt()}`,
      `postgres://u:${opaqueToken()}@db/x?password=${opaqueToken()}`,
      `{"client_secret":"${opaqueToken()}","token":7}`,
    ].join('\n');
    const once = maskSecrets(text);
    expect(once).not.toBe(text);
    expect(maskSecrets(once)).toBe(once);
  });
});

describe('maskHeaders', () => {
  it('replaces credential headers entirely and masks secrets in the others', () => {
    const key = anthropicKey();
    const masked = maskHeaders({
      Authorization: `Basic ${basicCredentials()}`,
      'x-api-key': 'short',
      cookie: `sid=${opaqueToken()}`,
      'proxy-authorization': `Bearer ${opaqueToken()}`,
      'x-upstream-note': `forwarded with ${key}`,
      'x-auth-token': opaqueToken(),
      'content-type': 'application/json',
    });
    expect(masked).toEqual({
      Authorization: '****',
      'x-api-key': '****',
      cookie: '****',
      'proxy-authorization': '****',
      'x-upstream-note': 'forwarded with sk-ant-****',
      'x-auth-token': '****',
      'content-type': 'application/json',
    });
  });

  it('masks every value of a multi-valued set-cookie header', () => {
    const masked = maskHeaders({ 'set-cookie': [`a=${opaqueToken()}`, `b=${opaqueToken()}`], vary: undefined });
    expect(masked).toEqual({ 'set-cookie': ['****', '****'] });
  });

  it('lists the credential headers and leaves the MCP session id visible', () => {
    expect([...SENSITIVE_HEADER_NAMES].sort()).toEqual(
      ['authorization', 'cookie', 'proxy-authorization', 'set-cookie', 'x-api-key'].sort(),
    );
    expect(maskHeaders({ 'mcp-session-id': 'session-1' })).toEqual({ 'mcp-session-id': 'session-1' });
  });
});

describe('maskDeep', () => {
  it('returns a masked copy and leaves the original untouched', () => {
    const token = opaqueToken();
    const original = { headers: { authorization: `Bearer ${token}` }, list: [`Bearer ${token}`, 3] };
    const masked = maskDeep(original);
    expect(masked).toEqual({ headers: { authorization: '****' }, list: ['Bearer ****', 3] });
    expect(original.headers.authorization).toBe(`Bearer ${token}`);
  });

  it('hides values under secret-named keys even when they match no pattern', () => {
    const masked = maskDeep({
      password: 'hunter2',
      clientSecret: 'plain',
      accessToken: 12345,
      apiKeyId: 'key_public',
      max_tokens: 1024,
      credentials: { DATABASE_PASSWORD: 'x', user: 'bulwark' },
      tokenless: null,
      secret: true,
    });
    expect(masked).toEqual({
      password: '****',
      clientSecret: '****',
      accessToken: '****',
      apiKeyId: 'key_public',
      max_tokens: 1024,
      credentials: { DATABASE_PASSWORD: '****', user: 'bulwark' },
      tokenless: null,
      secret: true,
    });
  });

  it('turns an Error into its type, masked message, masked stack, fields and cause', () => {
    const token = opaqueToken();
    const cause = new TypeError(`refresh_token=${token} rejected`);
    const error = Object.assign(new RangeError(`upstream said Bearer ${token}`, { cause }), { code: 'E_UP' });
    const masked = maskDeep({ err: error }).err as unknown as Record<string, unknown>;
    expect(masked).toMatchObject({
      type: 'RangeError',
      message: 'upstream said Bearer ****',
      code: 'E_UP',
      cause: { type: 'TypeError', message: 'refresh_token=**** rejected' },
    });
    expect(masked.stack).toEqual(expect.stringContaining('upstream said Bearer ****'));
    expect(JSON.stringify(masked)).not.toContain(token);
  });

  it('replaces cycles with a marker but keeps shared references', () => {
    const shared = { note: 'same' };
    const cyclic: Record<string, unknown> = { a: shared, b: shared };
    cyclic.self = cyclic;
    expect(maskDeep(cyclic)).toEqual({ a: { note: 'same' }, b: { note: 'same' }, self: '[Circular]' });
  });

  it('truncates nesting deeper than eight levels', () => {
    let deep: Record<string, unknown> = { leaf: 'bottom' };
    for (let level = 0; level < 12; level += 1) deep = { next: deep };
    const text = JSON.stringify(maskDeep(deep));
    expect(text).toContain('[Truncated]');
    expect(text).not.toContain('bottom');
  });

  it('masks values that serialise through toJSON, such as URLs', () => {
    const password = opaqueToken();
    const masked = maskDeep({ at: new Date(0), url: new URL(`https://user:${password}@host.example/x`) });
    expect(masked).toEqual({ at: '1970-01-01T00:00:00.000Z', url: 'https://user:****@host.example/x' });
  });
});

function captureLogger(): { logger: ReturnType<typeof createLogger>; output: () => string; lines: () => unknown[] } {
  const chunks: string[] = [];
  const destination = new Writable({
    decodeStrings: false,
    write(chunk: string | Buffer, _encoding, callback) {
      chunks.push(chunk.toString());
      callback();
    },
  });
  const logger = createLogger({ level: 'trace', destination });
  const output = (): string => chunks.join('');
  const lines = (): unknown[] =>
    output()
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => JSON.parse(line) as unknown);
  return { logger, output, lines };
}

function expectFreeOf(output: string, secrets: readonly string[]): void {
  expect(output).not.toBe('');
  for (const secret of secrets) expect(output).not.toContain(secret);
}

describe('createLogger', () => {
  it('never writes a secret held in the message string', () => {
    const { logger, output } = captureLogger();
    const key = anthropicKey();
    const token = opaqueToken();
    const { key: bwk, secret, id } = bulwarkKey();
    logger.info(`forwarding with x-api-key ${key}`);
    logger.warn(`client presented ${bwk}`);
    // The secret is split between the format string and its argument.
    logger.info('upstream answered 401 to Bearer %s', token);
    expectFreeOf(output(), [key, token, secret, bwk]);
    expect(output()).toContain(`bwk_live_${id}_****`);
    expect(output()).toContain('Bearer ****');
  });

  it('never writes a secret from an object with nested headers', () => {
    const { logger, output } = captureLogger();
    const secrets = [opaqueToken(), anthropicKey(), opaqueToken(), opaqueToken(), basicCredentials()];
    logger.info(
      {
        req: {
          method: 'POST',
          headers: { authorization: `Bearer ${secrets[0]}`, 'x-api-key': secrets[1], cookie: `sid=${secrets[2]}` },
        },
        upstream: { headers: { 'x-goog-api-key': secrets[3], 'Proxy-Authorization': `Basic ${secrets[4]}` } },
      },
      'proxied request',
    );
    expectFreeOf(output(), secrets);
    expect(output()).toContain('"method":"POST"');
  });

  it('never writes a token held in an Error message, stack or cause', () => {
    const { logger, output } = captureLogger();
    const token = jwt();
    const password = opaqueToken();
    const error = new Error(`token ${token} rejected`, { cause: new Error(`password=${password}`) });
    logger.error(error);
    logger.error({ err: error });
    logger.error({ err: error }, 'upstream failed');
    expectFreeOf(output(), [token, password]);
    expect(output()).toContain('eyJ****');
  });

  it('never writes credentials carried in a URL', () => {
    const { logger, output } = captureLogger();
    const password = opaqueToken();
    const accessToken = opaqueToken();
    const url = `https://agent:${password}@upstream.example/mcp?access_token=${accessToken}&page=1`;
    logger.info({ url }, `fetching ${url}`);
    logger.info({ target: new URL(url) }, 'fetching');
    expectFreeOf(output(), [password, accessToken]);
    expect(output()).toContain('https://agent:****@upstream.example/mcp?access_token=****&page=1');
  });

  it('masks the bindings of children and grandchildren, and interpolated objects', () => {
    const { logger, output, lines } = captureLogger();
    const token = opaqueToken();
    const key = anthropicKey();
    const password = opaqueToken();
    const child = logger.child({ sessionToken: token, requestId: 'req-1' });
    child.info('child line');
    child.child({ upstream: `postgres://u:${password}@db/x` }).info('grandchild line');
    logger.info('headers %j', { 'x-api-key': key });
    expectFreeOf(output(), [token, key, password]);
    expect(lines()[1]).toMatchObject({ requestId: 'req-1', sessionToken: '****', upstream: 'postgres://u:****@db/x' });
  });

  it('writes one valid JSON object per line', () => {
    const { logger, lines } = captureLogger();
    logger.info({ body: `{"token": 5, "password": "${opaqueToken()}"}` }, 'secret: "quoted"');
    logger.error(new Error(`Cookie: a=1; b=${opaqueToken()}`));
    expect(lines()).toHaveLength(2);
    expect(lines()[0]).toMatchObject({ level: 30, body: '{"token": "****", "password": "****"}' });
  });
});
