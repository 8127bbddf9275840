/**
 * The Anthropic proxy end to end: the official SDK against Bulwark in front of the wire-format
 * stand-in, compared with the SDK straight against the stand-in; credentials per tenant; the
 * requests rows; errors in Anthropic's shape; upstream faults.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { once } from 'node:events';
import path from 'node:path';
import Anthropic from '@anthropic-ai/sdk';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { OPERATOR, type TestBulwark, startTestBulwark } from './helpers/runtime.js';
import { sql } from 'kysely';
import { StoredCredentials } from '../src/proxy/credentials.js';
import { SseFramer } from '../src/proxy/forward.js';
import { bodyAad, countNeedingRotation, rotateEncryption } from '../src/proxy/retention.js';
import { KeyRing } from '../src/store/crypto.js';
import { filesUnder } from './helpers/process.js';
import { OAUTH_TOKEN_PATH, type StandIn, startAnthropicStandIn } from './stand-in/anthropic.js';
import { awayFromMinuteBoundary } from './helpers/clock.js';

const fakeUpstreamKey = () => `sk-ant-api03-${randomBytes(24).toString('hex')}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const MESSAGE = { model: 'claude-sonnet-4-5', max_tokens: 64, messages: [{ role: 'user' as const, content: 'hello there bulwark' }] };

function writeCredential(b: TestBulwark, tenant: string, credential: Record<string, unknown>): string {
  const dir = b.runtime.config.credentialsDir;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const file = path.join(dir, `${tenant}.json`);
  writeFileSync(file, JSON.stringify(credential), { mode: 0o600 });
  b.runtime.fileCredentials.scan();
  return file;
}

async function rows(b: TestBulwark) {
  await b.runtime.flush();
  return b.runtime.database.db.selectFrom('requests').selectAll().orderBy('time').execute();
}

describe('Anthropic proxy', () => {
  let upstream: StandIn;
  let b: TestBulwark;
  let upstreamKey: string;
  let key: string;
  let client: Anthropic;
  let direct: Anthropic;

  beforeAll(async () => {
    upstream = await startAnthropicStandIn();
    b = await startTestBulwark('pglite', { BULWARK_UPSTREAM_URL: upstream.url }, { listen: true, file: { upstream: { firstByteTimeoutMs: 1_000, idleTimeoutMs: 1_000 } } });
    upstreamKey = fakeUpstreamKey();
    upstream.apiKeys.add(upstreamKey);
    writeCredential(b, 'default', { type: 'api_key', api_key: upstreamKey });
    key = (await b.createKey(['llm'])).key;
    client = new Anthropic({ apiKey: key, baseURL: b.publicUrl, maxRetries: 0 });
    direct = new Anthropic({ apiKey: upstreamKey, baseURL: upstream.url, maxRetries: 0 });
  });
  afterAll(async () => {
    await b?.close();
    await upstream?.close();
  });
  afterEach(() => {
    upstream.fault = undefined;
  });

  it('returns from messages.create the same content and usage as the API directly', async () => {
    const viaBulwark = await client.messages.create(MESSAGE);
    const straight = await direct.messages.create(MESSAGE);
    expect(viaBulwark.content).toEqual(straight.content);
    expect(viaBulwark.usage).toEqual(straight.usage);
    expect(viaBulwark.stop_reason).toBe(straight.stop_reason);
  });

  it('returns from messages.stream the same final message and usage as the API directly', async () => {
    const viaBulwark = await client.messages.stream(MESSAGE).finalMessage();
    const straight = await direct.messages.stream(MESSAGE).finalMessage();
    expect(viaBulwark.content).toEqual(straight.content);
    expect(viaBulwark.usage).toEqual(straight.usage);
  });

  it('passes the SSE stream through byte for byte', async () => {
    const init = (apiKey: string) => ({
      method: 'POST',
      headers: { 'x-api-key': apiKey, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: JSON.stringify({ ...MESSAGE, stream: true }),
    });
    const viaBulwark = await (await fetch(`${b.publicUrl}/v1/messages`, init(key))).text();
    const straight = await (await fetch(`${upstream.url}/v1/messages`, init(upstreamKey))).text();
    const normalise = (text: string) => text.replace(/msg_[A-Za-z0-9]+/g, 'msg_X');
    expect(normalise(viaBulwark)).toBe(normalise(straight));
    expect(viaBulwark).toContain('event: message_stop');
  });

  it('sends a JSON answer byte for byte in one piece with its Content-Length, and streams one past the hold size', async () => {
    const init = (apiKey: string, body: unknown) => ({
      method: 'POST',
      headers: { 'x-api-key': apiKey, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const normalise = (text: string) => text.replace(/msg_[A-Za-z0-9]+/g, 'msg_X');
    const small = await fetch(`${b.publicUrl}/v1/messages`, init(key, MESSAGE));
    const smallText = await small.text();
    expect(small.headers.get('content-length')).toBe(String(Buffer.byteLength(smallText)));
    expect(normalise(smallText)).toBe(normalise(await (await fetch(`${upstream.url}/v1/messages`, init(upstreamKey, MESSAGE))).text()));

    // About 1.2 MB of echoed words: more than is held, so it goes out as it arrives (chunked).
    const words = Array.from({ length: 30_000 }, (_, i) => `w${i}`.padEnd(40, 'x')).join(' ');
    const big = { ...MESSAGE, max_tokens: 30_000, messages: [{ role: 'user' as const, content: words }] };
    const large = await fetch(`${b.publicUrl}/v1/messages`, init(key, big));
    const largeText = await large.text();
    expect(large.status).toBe(200);
    expect(large.headers.get('content-length')).toBeNull();
    expect(largeText.length).toBeGreaterThan(1024 * 1024);
    expect(normalise(largeText)).toBe(normalise(await (await fetch(`${upstream.url}/v1/messages`, init(upstreamKey, big))).text()));
  });

  it('serves the same stream in process, through web streams, where there is no Node socket', async () => {
    const init = { method: 'POST', headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' }, body: JSON.stringify({ ...MESSAGE, stream: true }) };
    const inProcess = await (await b.publicApp.request('/v1/messages', init)).text();
    const overHttp = await (await fetch(`${b.publicUrl}/v1/messages`, init)).text();
    const normalise = (text: string) => text.replace(/msg_[A-Za-z0-9]+/g, 'msg_X');
    expect(normalise(inProcess)).toBe(normalise(overHttp));
    expect((await rows(b)).at(-1)).toMatchObject({ stream: true, status: 200, error_type: null });
  });

  it('sends the tenant credential upstream, never the client key, and forwards anthropic-version and anthropic-beta', async () => {
    upstream.requests.length = 0;
    await fetch(`${b.publicUrl}/v1/messages`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'anthropic-version': '2023-06-01', 'anthropic-beta': 'a,b', 'content-type': 'application/json' },
      body: JSON.stringify(MESSAGE),
    });
    const seen = upstream.requests.at(-1)!;
    expect(seen.headers['x-api-key']).toBe(upstreamKey);
    expect(seen.headers.authorization).toBeUndefined();
    expect(JSON.stringify(seen.headers)).not.toContain(key);
    expect(seen.headers['anthropic-version']).toBe('2023-06-01');
    expect(seen.headers['anthropic-beta']).toBe('a,b');
  });

  it('records one requests row per call with model, tokens, stream flag, status and first-token time', async () => {
    const before = (await rows(b)).length;
    const message = await client.messages.create(MESSAGE);
    await client.messages.stream(MESSAGE).finalMessage();
    const all = await rows(b);
    expect(all.length).toBe(before + 2);
    const [plain, streamed] = all.slice(-2);
    expect(plain).toMatchObject({ tenant_id: 'default', model: MESSAGE.model, stream: false, status: 200, error_type: null, input_tokens: message.usage.input_tokens, output_tokens: message.usage.output_tokens, path: '/v1/messages' });
    expect(streamed).toMatchObject({ stream: true, status: 200, input_tokens: message.usage.input_tokens, output_tokens: message.usage.output_tokens });
    expect(streamed?.first_token_ms).toEqual(expect.any(Number));
    expect(plain?.upstream_request_id).toMatch(/^req_/);
  });

  it('names every answer with X-Request-Id over the socket, relayed or answered by Bulwark itself, and the row carries the same id', async () => {
    const headers = { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' };
    const relayed = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', headers, body: JSON.stringify(MESSAGE) });
    await relayed.arrayBuffer();
    expect(relayed.status).toBe(200);
    expect(relayed.headers.get('x-request-id')).toMatch(/^req_[0-9a-f]{32}$/);
    expect((await rows(b)).at(-1)?.request_id).toBe(relayed.headers.get('x-request-id'));
    const refused = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', headers: { ...headers, 'x-api-key': 'bwk_wrong' }, body: '{}' });
    expect(refused.status).toBe(401);
    expect(refused.headers.get('x-request-id')).toMatch(/^req_[0-9a-f]{32}$/);
    expect(((await refused.json()) as { request_id: string }).request_id).toBe(refused.headers.get('x-request-id'));
    const health = await fetch(`${b.publicUrl}/health`, { headers: { 'x-request-id': 'client-trace_01' } });
    expect(health.headers.get('x-request-id')).toBe('client-trace_01');
  });

  it('forwards count_tokens and the model list and lookup', async () => {
    const counted = await client.messages.countTokens({ model: MESSAGE.model, messages: MESSAGE.messages });
    expect(counted.input_tokens).toBeGreaterThan(0);
    const models = await client.models.list();
    expect(models.data.length).toBeGreaterThan(0);
    const one = await client.models.retrieve(models.data[0]!.id);
    expect(one.id).toBe(models.data[0]!.id);
  });

  it('raises the SDK AuthenticationError for a bad Bulwark key, in Anthropic error shape', async () => {
    const bad = new Anthropic({ apiKey: `${key.slice(0, -4)}zzzz`, baseURL: b.publicUrl, maxRetries: 0 });
    await expect(bad.messages.create(MESSAGE)).rejects.toBeInstanceOf(Anthropic.AuthenticationError);
    const response = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', body: '{}' });
    expect(response.status).toBe(401);
    expect(await response.json()).toEqual({ type: 'error', error: { type: 'authentication_error', message: expect.any(String) }, request_id: response.headers.get('request-id') });
  });

  it('raises PermissionDeniedError for a key without the llm or write scope', async () => {
    const reader = new Anthropic({ apiKey: (await b.createKey(['read'])).key, baseURL: b.publicUrl, maxRetries: 0 });
    await expect(reader.messages.create(MESSAGE)).rejects.toBeInstanceOf(Anthropic.PermissionDeniedError);
    // Reading the model list is allowed with read.
    expect((await reader.models.list()).data.length).toBeGreaterThan(0);
  });

  it('answers an unknown /v1 path with 404 not_found_error', async () => {
    const response = await fetch(`${b.publicUrl}/v1/files`, { headers: { 'x-api-key': key } });
    expect(response.status).toBe(404);
    expect(((await response.json()) as { error: { type: string } }).error.type).toBe('not_found_error');
  });

  it('answers a body that is not JSON with 400 invalid_request_error, and records the call', async () => {
    const response = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body: '{"model":' });
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: { type: string } }).error.type).toBe('invalid_request_error');
    expect((await rows(b)).at(-1)).toMatchObject({ status: 400, error_type: 'invalid_json' });
  });

  it('passes upstream errors through so the SDK raises the matching class', async () => {
    upstream.fault = { kind: 'status', status: 529, type: 'overloaded_error' };
    await expect(client.messages.create(MESSAGE)).rejects.toBeInstanceOf(Anthropic.InternalServerError);
    upstream.fault = { kind: 'status', status: 429, type: 'rate_limit_error', retryAfterSeconds: 3 };
    await expect(client.messages.create(MESSAGE)).rejects.toBeInstanceOf(Anthropic.RateLimitError);
  });

  it('answers 502 api_error, not 401, when upstream refuses the tenant credential, and audits it', async () => {
    upstream.apiKeys.delete(upstreamKey);
    try {
      const response = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' }, body: JSON.stringify(MESSAGE) });
      expect(response.status).toBe(502);
      expect(((await response.json()) as { error: { type: string } }).error.type).toBe('api_error');
    } finally {
      upstream.apiKeys.add(upstreamKey);
    }
    await b.runtime.flush();
    const events = await b.runtime.auditReader.tail({ type: 'upstream.credential_refused' });
    expect(events.at(-1)?.tenantId).toBe('default');
  });

  it('answers 504 when upstream sends no headers in time', async () => {
    upstream.fault = { kind: 'delay-headers', ms: 2_000 };
    const response = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' }, body: JSON.stringify(MESSAGE) });
    expect(response.status).toBe(504);
    expect(((await response.json()) as { error: { type: string } }).error.type).toBe('api_error');
    expect((await rows(b)).at(-1)).toMatchObject({ status: 504, error_type: 'first_byte_timeout' });
  });

  it('ends a stream that upstream resets with an SSE error event, and records it', async () => {
    upstream.fault = { kind: 'reset-stream', afterEvents: 3 };
    const response = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' }, body: JSON.stringify({ ...MESSAGE, stream: true }) });
    const text = await response.text();
    expect(text).toContain('event: message_start');
    expect(text.trimEnd()).toMatch(/event: error\ndata: \{"type":"error","error":\{"type":"api_error"/);
    const row = (await rows(b)).at(-1);
    expect(row?.stream).toBe(true);
    expect(row?.error_type).not.toBeNull();
  });

  it('answers 502 api_error when upstream breaks off a JSON answer before its end, and records it', async () => {
    upstream.fault = { kind: 'reset-body', afterBytes: 40 };
    const response = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' }, body: JSON.stringify(MESSAGE) });
    expect(response.status).toBe(502);
    const body = (await response.json()) as { type: string; error: { type: string; message: string }; request_id: string };
    expect(body).toMatchObject({ type: 'error', error: { type: 'api_error' } });
    expect(body.error.message).toMatch(/broke off/);
    expect(body.request_id).toBe(response.headers.get('x-request-id'));
    const row = (await rows(b)).at(-1);
    expect(row).toMatchObject({ status: 502, stream: false });
    expect(row?.error_type).not.toBeNull();
    // The SDK sees an APIError it can retry, not a dropped connection.
    upstream.fault = { kind: 'reset-body', afterBytes: 40 };
    await expect(client.messages.create(MESSAGE)).rejects.toBeInstanceOf(Anthropic.InternalServerError);
  });

  it('answers 504 api_error when upstream goes silent in the middle of a JSON answer', async () => {
    upstream.fault = { kind: 'stall-body', afterBytes: 40 };
    const response = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' }, body: JSON.stringify(MESSAGE) });
    expect(response.status).toBe(504);
    expect(await response.json()).toMatchObject({ type: 'error', error: { type: 'api_error', message: 'The upstream API stopped sending.' } });
    expect((await rows(b)).at(-1)).toMatchObject({ status: 504, error_type: 'idle_timeout' });
  });

  it('ends a stream that goes silent with an SSE error event after the idle timeout', async () => {
    upstream.fault = { kind: 'stall-stream', afterEvents: 2 };
    const response = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' }, body: JSON.stringify({ ...MESSAGE, stream: true }) });
    expect(await response.text()).toContain('event: error');
    expect((await rows(b)).at(-1)).toMatchObject({ error_type: 'idle_timeout' });
  });

  it('aborts the upstream request when the client disconnects mid-stream', async () => {
    const abortedBefore = upstream.abortedStreams;
    const controller = new AbortController();
    const response = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', signal: controller.signal, headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' }, body: JSON.stringify({ ...MESSAGE, max_tokens: 2000, messages: [{ role: 'user', content: 'word '.repeat(400) }], stream: true }) });
    const reader = response.body!.getReader();
    await reader.read();
    controller.abort();
    for (let i = 0; i < 50 && upstream.abortedStreams === abortedBefore; i++) await sleep(20);
    expect(upstream.abortedStreams).toBeGreaterThan(abortedBefore);
    await sleep(50);
    expect((await rows(b)).at(-1)).toMatchObject({ error_type: 'client_disconnected' });
  });

  it('answers 502 when upstream cannot be reached', async () => {
    const down = await startTestBulwark('pglite', { BULWARK_UPSTREAM_URL: 'http://127.0.0.1:9' }, { listen: true });
    try {
      writeCredential(down, 'default', { type: 'api_key', api_key: fakeUpstreamKey() });
      const k = (await down.createKey(['llm'])).key;
      const response = await fetch(`${down.publicUrl}/v1/messages`, { method: 'POST', headers: { 'x-api-key': k, 'content-type': 'application/json' }, body: JSON.stringify(MESSAGE) });
      expect(response.status).toBe(502);
      expect(((await response.json()) as { error: { type: string } }).error.type).toBe('api_error');
    } finally {
      await down.close();
    }
  });

  describe('credentials per tenant', () => {
    it("never uses another tenant's credential", async () => {
      expect((await b.runtime.keyService.createTenant(OPERATOR, 'acme')).ok).toBe(true);
      const acmeUpstream = fakeUpstreamKey();
      upstream.apiKeys.add(acmeUpstream);
      writeCredential(b, 'acme', { type: 'api_key', api_key: acmeUpstream });
      const acmeKey = (await b.createKey(['llm'], { tenant: 'acme' })).key;
      upstream.requests.length = 0;
      await new Anthropic({ apiKey: acmeKey, baseURL: b.publicUrl, maxRetries: 0 }).messages.create(MESSAGE);
      await client.messages.create(MESSAGE);
      expect(upstream.requests.map((r) => r.headers['x-api-key'])).toEqual([acmeUpstream, upstreamKey]);
    });

    it('answers 502 for a tenant with no upstream credential', async () => {
      expect((await b.runtime.keyService.createTenant(OPERATOR, 'empty')).ok).toBe(true);
      const emptyKey = (await b.createKey(['llm'], { tenant: 'empty' })).key;
      const sdk = new Anthropic({ apiKey: emptyKey, baseURL: b.publicUrl, maxRetries: 0 });
      await expect(sdk.messages.create(MESSAGE)).rejects.toMatchObject({ status: 502 });
    });

    it('takes a credential file edited in place into use within 2 s', async () => {
      expect((await b.runtime.keyService.createTenant(OPERATOR, 'hot')).ok).toBe(true);
      const first = fakeUpstreamKey();
      const second = fakeUpstreamKey();
      upstream.apiKeys.add(first);
      upstream.apiKeys.add(second);
      const file = writeCredential(b, 'hot', { type: 'api_key', api_key: first });
      const hotKey = (await b.createKey(['llm'], { tenant: 'hot' })).key;
      const sdk = new Anthropic({ apiKey: hotKey, baseURL: b.publicUrl, maxRetries: 0 });
      await sdk.messages.create(MESSAGE);
      expect(upstream.requests.at(-1)?.headers['x-api-key']).toBe(first);
      writeFileSync(file, JSON.stringify({ type: 'api_key', api_key: second })); // in place, same inode
      await sleep(2_000);
      await sdk.messages.create(MESSAGE);
      expect(upstream.requests.at(-1)?.headers['x-api-key']).toBe(second);
    });

    it('keeps the last good credential when a file turns invalid, and audits it', async () => {
      const file = path.join(b.runtime.config.credentialsDir, 'default.json');
      const good = readFileSync(file, 'utf8');
      writeFileSync(file, '{ not json');
      b.runtime.fileCredentials.scan();
      try {
        await client.messages.create(MESSAGE);
        expect(upstream.requests.at(-1)?.headers['x-api-key']).toBe(upstreamKey);
        await b.runtime.flush();
        const invalid = await b.runtime.auditReader.tail({ type: 'credentials.invalid' });
        expect(invalid.at(-1)?.details).toMatchObject({ reason: 'is not valid JSON', keptPrevious: true });
        expect(JSON.stringify(invalid)).not.toContain(upstreamKey);
      } finally {
        writeFileSync(file, good);
        b.runtime.fileCredentials.scan();
      }
    });

    it('uses a credential kept in the store, encrypted so the database holds no plaintext', async () => {
      expect((await b.runtime.keyService.createTenant(OPERATOR, 'stored')).ok).toBe(true);
      const secret = fakeUpstreamKey();
      upstream.apiKeys.add(secret);
      await b.runtime.storedCredentials.set('stored', { type: 'api_key', apiKey: secret });
      const storedKey = (await b.createKey(['llm'], { tenant: 'stored' })).key;
      await new Anthropic({ apiKey: storedKey, baseURL: b.publicUrl, maxRetries: 0 }).messages.create(MESSAGE);
      expect(upstream.requests.at(-1)?.headers['x-api-key']).toBe(secret);
      const dump = JSON.stringify(await b.runtime.database.db.selectFrom('upstream_credentials').selectAll().execute());
      expect(dump).not.toContain(secret);
      expect(dump).toContain('"secret":"v1.');
    });
  });
});

describe('OAuth upstream credentials', () => {
  let upstream: StandIn;
  let b: TestBulwark;
  let key: string;
  let alerts: Server;
  const received: unknown[] = [];
  const token = (kind: 'oat' | 'ort') => `sk-ant-${kind}01-${randomBytes(24).toString('hex')}`;

  beforeAll(async () => {
    upstream = await startAnthropicStandIn();
    // An operator's alert webhook, on loopback.
    alerts = createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        received.push(JSON.parse(body));
        res.end();
      });
    });
    await new Promise<void>((resolve) => alerts.listen(0, '127.0.0.1', resolve));
    const webhook = `http://127.0.0.1:${(alerts.address() as AddressInfo).port}/hook`;
    b = await startTestBulwark(
      'pglite',
      { BULWARK_UPSTREAM_URL: upstream.url, BULWARK_ALERT_WEBHOOK_URL: webhook },
      { listen: true, file: { upstream: { oauthTokenUrl: `${upstream.url}${OAUTH_TOKEN_PATH}` } } },
    );
    key = (await b.createKey(['llm'])).key;
  });
  afterAll(async () => {
    await b?.close();
    await upstream?.close();
    await new Promise((resolve) => alerts?.close(resolve));
  });

  /** A tenant credential file with an access token that expires in `seconds`. */
  function oauthFile(seconds: number) {
    const access = token('oat');
    const refresh = token('ort');
    upstream.accessTokens.add(access);
    upstream.refreshTokens.add(refresh);
    const file = writeCredential(b, 'default', { type: 'oauth', access_token: access, refresh_token: refresh, expires_at: Math.floor(Date.now() / 1000) + seconds });
    return { access, refresh, file };
  }

  it('refreshes once for 20 concurrent requests near expiry, and persists the rotated token with mode 600', async () => {
    const { refresh, file } = oauthFile(30);
    const before = upstream.tokenRequests;
    const sdk = new Anthropic({ apiKey: key, baseURL: b.publicUrl, maxRetries: 0 });
    const results = await Promise.all(Array.from({ length: 20 }, () => sdk.messages.create(MESSAGE)));
    expect(results).toHaveLength(20);
    expect(upstream.tokenRequests - before).toBe(1);
    const onDisk = JSON.parse(readFileSync(file, 'utf8')) as { refresh_token: string; access_token: string; expires_at: number };
    expect(onDisk.refresh_token).not.toBe(refresh);
    expect(upstream.refreshTokens.has(onDisk.refresh_token)).toBe(true);
    expect(upstream.refreshTokens.has(refresh)).toBe(false);
    expect(onDisk.expires_at * 1000).toBeGreaterThan(Date.now() + 600_000);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(upstream.requests.at(-1)?.headers.authorization).toBe(`Bearer ${onDisk.access_token}`);
  });

  it("merges oauth-2025-04-20 into the client's anthropic-beta list, keeping order and dropping duplicates", async () => {
    oauthFile(3600);
    for (const [sent, expected] of [
      ['a,b', 'a,b,oauth-2025-04-20'],
      ['a, oauth-2025-04-20 ,b', 'a,oauth-2025-04-20,b'],
      [undefined, 'oauth-2025-04-20'],
    ] as const) {
      await fetch(`${b.publicUrl}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json', ...(sent ? { 'anthropic-beta': sent } : {}) },
        body: JSON.stringify(MESSAGE),
      });
      expect(upstream.requests.at(-1)?.headers['anthropic-beta']).toBe(expected);
    }
  });

  it('refreshes and retries once when upstream refuses an unexpired access token', async () => {
    const { access } = oauthFile(3600);
    upstream.accessTokens.delete(access); // revoked upstream before its time
    const before = upstream.tokenRequests;
    const message = await new Anthropic({ apiKey: key, baseURL: b.publicUrl, maxRetries: 0 }).messages.create(MESSAGE);
    expect(message.content.length).toBeGreaterThan(0);
    expect(upstream.tokenRequests - before).toBe(1);
  });

  it('answers 502 api_error (never 401) when the refresh of an expired token fails, and audits and alerts it', async () => {
    oauthFile(-5);
    upstream.fault = { kind: 'refuse-oauth' };
    const sdk = new Anthropic({ apiKey: key, baseURL: b.publicUrl, maxRetries: 0 });
    const error = await sdk.messages.create(MESSAGE).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Anthropic.InternalServerError);
    expect((error as InstanceType<typeof Anthropic.APIError>).status).toBe(502);
    await b.runtime.flush();
    const failed = await b.runtime.auditReader.tail({ type: 'credentials.refresh_failed' });
    expect(failed.at(-1)).toMatchObject({ tenantId: 'default', details: expect.objectContaining({ reason: 'refresh_refused', status: 400 }) });
    expect((await rows(b)).at(-1)).toMatchObject({ status: 502, error_type: 'upstream_credential_refresh_failed' });
    await b.runtime.alerter.settled();
    expect(received.at(-1)).toMatchObject({ type: 'credentials.refresh_failed', severity: 'critical', tenant: 'default', source: 'bulwark' });
    expect(JSON.stringify(received)).not.toMatch(/sk-ant-o[ar]t01-/);

    // The same dead refresh token is not offered again for a while, and paged only once.
    const tokenRequests = upstream.tokenRequests;
    const alerts = received.length;
    await expect(sdk.messages.create(MESSAGE)).rejects.toMatchObject({ status: 502 });
    await b.runtime.alerter.settled();
    expect(upstream.tokenRequests).toBe(tokenRequests);
    expect(received.length).toBe(alerts);
  });

  it('gives a request that read the credential before a refresh the new token, instead of refreshing with the rotated-away one', async () => {
    const { access, refresh } = oauthFile(10);
    const stale = { tenant: 'default', source: 'file' as const, updatedAt: new Date(), credential: { type: 'oauth' as const, accessToken: access, refreshToken: refresh, expiresAt: Date.now() + 10_000 } };
    const first = await b.runtime.oauth.ensureFresh(stale);
    expect(first.ok).toBe(true);
    const before = upstream.tokenRequests;
    const again = await b.runtime.oauth.afterRejection(stale, stale.credential);
    expect(again).toEqual(first);
    expect(upstream.tokenRequests).toBe(before);
  });

  it('keeps using a still-valid access token when the token endpoint fails for a moment', async () => {
    const { access } = oauthFile(30); // inside the refresh window, but not expired
    upstream.fault = { kind: 'refuse-oauth' };
    const sdk = new Anthropic({ apiKey: key, baseURL: b.publicUrl, maxRetries: 0 });
    await sdk.messages.create(MESSAGE); // the refresh is refused; the current token still works
    expect(upstream.requests.at(-1)?.headers.authorization).toBe(`Bearer ${access}`);
    upstream.fault = undefined;
  });

  it("never overwrites a credential file an operator replaced while a refresh was under way", async () => {
    const { file } = oauthFile(3600);
    const operators = { type: 'oauth', access_token: token('oat'), refresh_token: token('ort'), expires_at: Math.floor(Date.now() / 1000) + 7200 };
    writeFileSync(file, JSON.stringify(operators));
    const written = b.runtime.fileCredentials.persistIfUnchanged('default', { type: 'oauth', accessToken: 'x', refreshToken: 'y', expiresAt: Date.now() }, ['the-old-refresh-token']);
    expect(written).toBe(false);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual(operators);
  });

  it('persists a refreshed credential that lives in the store back to the store, encrypted', async () => {
    expect((await b.runtime.keyService.createTenant(OPERATOR, 'vault')).ok).toBe(true);
    const access = token('oat');
    const refresh = token('ort');
    upstream.accessTokens.add(access);
    upstream.refreshTokens.add(refresh);
    await b.runtime.storedCredentials.set('vault', { type: 'oauth', accessToken: access, refreshToken: refresh, expiresAt: Date.now() + 5_000 });
    const vaultKey = (await b.createKey(['llm'], { tenant: 'vault' })).key;
    await new Anthropic({ apiKey: vaultKey, baseURL: b.publicUrl, maxRetries: 0 }).messages.create(MESSAGE);
    const stored = await new StoredCredentials({ db: b.runtime.database.db, keyRing: b.runtime.keyRing, cacheMs: 0 }).get('vault');
    expect(stored?.credential).toMatchObject({ type: 'oauth', refreshToken: expect.not.stringMatching(refresh) });
    expect(upstream.refreshTokens.has((stored?.credential as { refreshToken: string }).refreshToken)).toBe(true);
    const dump = JSON.stringify(await b.runtime.database.db.selectFrom('upstream_credentials').selectAll().execute());
    expect(dump).not.toContain((stored?.credential as { refreshToken: string }).refreshToken);
  });
});

describe('limits, budgets and model allow-lists', () => {
  let upstream: StandIn;
  let b: TestBulwark;

  beforeAll(async () => {
    upstream = await startAnthropicStandIn();
    b = await startTestBulwark(
      'pglite',
      { BULWARK_UPSTREAM_URL: upstream.url },
      {
        listen: true,
        file: {
          prices: { 'claude-sonnet-*': { input: 3, output: 15 } },
          limits: { tenants: { capped: { requestsPerMinute: 2 } } },
        },
      },
    );
    const upstreamKey = fakeUpstreamKey();
    upstream.apiKeys.add(upstreamKey);
    writeCredential(b, 'default', { type: 'api_key', api_key: upstreamKey });
    writeCredential(b, 'capped', { type: 'api_key', api_key: upstreamKey });
    expect((await b.runtime.keyService.createTenant(OPERATOR, 'capped')).ok).toBe(true);
  });
  afterAll(async () => {
    await b?.close();
    await upstream?.close();
  });

  async function keyWith(limits: Record<string, unknown>, tenant?: string) {
    const result = await b.runtime.keyService.createKey(OPERATOR, { name: 'limited', scopes: ['llm'], limits, tenant });
    if (!result.ok) throw new Error(result.message);
    return new Anthropic({ apiKey: result.value.key, baseURL: b.publicUrl, maxRetries: 0 });
  }

  it('raises RateLimitError with retry-after and anthropic-ratelimit headers past requests per minute, and audits it', async () => {
    await awayFromMinuteBoundary();
    const sdk = await keyWith({ requestsPerMinute: 2 });
    const ok = await sdk.messages.create(MESSAGE).withResponse();
    expect(ok.response.headers.get('anthropic-ratelimit-requests-limit')).toBe('2');
    expect(ok.response.headers.get('anthropic-ratelimit-requests-remaining')).toBe('1');
    await sdk.messages.create(MESSAGE);
    const error = await sdk.messages.create(MESSAGE).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Anthropic.RateLimitError);
    const headers = (error as InstanceType<typeof Anthropic.RateLimitError>).headers;
    expect(Number(headers?.get('retry-after'))).toBeGreaterThan(0);
    expect(headers?.get('anthropic-ratelimit-requests-remaining')).toBe('0');
    await b.runtime.flush();
    const events = await b.runtime.auditReader.tail({ type: 'limit.exceeded' });
    expect(events.at(-1)?.details).toMatchObject({ subject: 'key', rule: 'requestsPerMinute', limit: 2 });
  });

  it('raises RateLimitError for an over-budget key (dollars per day)', async () => {
    // A call reserves (input estimate + 64 output tokens) at $3/$15 per million, about $0.0011,
    // and settles at its actual cost, about $0.0001: about five calls fit in $0.0015.
    const sdk = await keyWith({ usdPerDay: 0.0015 });
    let limited: unknown;
    for (let i = 0; i < 10 && !limited; i++) limited = await sdk.messages.create(MESSAGE).then(() => undefined, (e: unknown) => e);
    expect(limited).toBeInstanceOf(Anthropic.RateLimitError);
    const spent = (await rows(b)).filter((r) => r.status === 200 && r.cost_usd > 0);
    expect(spent.length).toBeGreaterThan(0);
  });

  it('never lets concurrent calls overspend a token budget', async () => {
    // Each call may use its input (estimated) plus max_tokens 200: about 245 tokens reserved, so
    // at most two calls fit in 600 at once. Upstream holds every call for 300 ms, so all twelve
    // are in flight together: a gateway that checked only settled usage would let all through.
    const limit = 600;
    const sdk = await keyWith({ tokensPerDay: limit });
    upstream.fault = { kind: 'delay-headers', ms: 300, times: 12 };
    const results = await Promise.allSettled(Array.from({ length: 12 }, () => sdk.messages.create({ ...MESSAGE, max_tokens: 200 })));
    upstream.fault = undefined;
    const ok = results.filter((r) => r.status === 'fulfilled') as PromiseFulfilledResult<Anthropic.Message>[];
    expect(ok.length).toBeGreaterThan(0);
    expect(ok.length).toBeLessThanOrEqual(2);
    expect(results.filter((r) => r.status === 'rejected').every((r) => (r as PromiseRejectedResult).reason instanceof Anthropic.RateLimitError)).toBe(true);
  });

  it('starts a day budget from the calls already stored, so a restart does not reset it', async () => {
    const created = await b.runtime.keyService.createKey(OPERATOR, { name: 'restarted', scopes: ['llm'], limits: { tokensPerDay: 1_000 } });
    if (!created.ok) throw new Error(created.message);
    b.runtime.requestLog.push({
      id: `seed-${created.value.id}`, time: new Date().toISOString(), tenantId: 'default', keyId: created.value.id, method: 'POST', path: '/v1/messages', model: MESSAGE.model,
      stream: false, status: 200, errorType: null, inputTokens: 990, outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, costUsd: 0, latencyMs: 1, firstTokenMs: null,
      ip: null, userAgent: null, requestId: null, upstreamRequestId: null, requestBody: null, responseBody: null,
    });
    await b.runtime.flush();
    const sdk = new Anthropic({ apiKey: created.value.key, baseURL: b.publicUrl, maxRetries: 0 });
    await expect(sdk.messages.create(MESSAGE)).rejects.toBeInstanceOf(Anthropic.RateLimitError);
  });

  it('applies a tenant limit from the config to all of its keys together', async () => {
    await awayFromMinuteBoundary();
    const one = await keyWith({}, 'capped');
    const two = await keyWith({}, 'capped');
    await one.messages.create(MESSAGE);
    await two.messages.create(MESSAGE);
    await expect(one.messages.create(MESSAGE)).rejects.toBeInstanceOf(Anthropic.RateLimitError);
  });

  it('refuses a model outside the allow-list with PermissionDeniedError naming it', async () => {
    const sdk = await keyWith({ models: ['claude-haiku-*'] });
    const error = await sdk.messages.create(MESSAGE).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Anthropic.PermissionDeniedError);
    expect(String((error as Error).message)).toContain(MESSAGE.model);
    expect((await sdk.messages.create({ ...MESSAGE, model: 'claude-haiku-4-5' })).content.length).toBeGreaterThan(0);
  });

  it('refuses a dollar-budgeted call to a model without a price, since the budget cannot be enforced', async () => {
    const sdk = await keyWith({ usdPerMonth: 10 });
    await expect(sdk.messages.create({ ...MESSAGE, model: 'claude-opus-4-1' })).rejects.toBeInstanceOf(Anthropic.PermissionDeniedError);
  });

  it('records the cost of each call from the price table', async () => {
    const sdk = await keyWith({});
    const message = await sdk.messages.create(MESSAGE);
    const row = (await rows(b)).at(-1);
    expect(row?.cost_usd).toBeCloseTo((message.usage.input_tokens * 3 + message.usage.output_tokens * 15) / 1_000_000, 12);
  });
});

describe('body storage, retention and key rotation', () => {
  let upstream: StandIn;
  let b: TestBulwark;
  let upstreamKey: string;
  let sdk: Anthropic;
  const oldKey = randomBytes(32).toString('base64');
  const newKey = randomBytes(32).toString('base64');

  beforeAll(async () => {
    upstream = await startAnthropicStandIn();
    b = await startTestBulwark(
      'pglite',
      { BULWARK_UPSTREAM_URL: upstream.url, BULWARK_STORE_BODIES: 'true', BULWARK_ENCRYPTION_KEYS: oldKey, BULWARK_RETENTION_DAYS: '30', BULWARK_USAGE_RETENTION_DAYS: '90' },
      { listen: true, onDisk: true },
    );
    upstreamKey = fakeUpstreamKey();
    upstream.apiKeys.add(upstreamKey);
    await b.runtime.storedCredentials.set('default', { type: 'api_key', apiKey: upstreamKey });
    sdk = new Anthropic({ apiKey: (await b.createKey(['llm'])).key, baseURL: b.publicUrl, maxRetries: 0 });
  });
  afterAll(async () => {
    await b?.close();
    await upstream?.close();
  });

  it('stores request and response bodies encrypted: no body plaintext and no upstream credential in the database files', async () => {
    const marker = `zebra-${randomBytes(6).toString('hex')}`;
    const secretInPrompt = `sk-ant-api03-${randomBytes(20).toString('hex')}`;
    const message = await sdk.messages.create({ ...MESSAGE, messages: [{ role: 'user', content: `${marker} ${secretInPrompt}` }] });
    await sdk.messages.stream({ ...MESSAGE, messages: [{ role: 'user', content: `${marker} streamed` }] }).finalMessage();
    const [plain, streamed] = (await rows(b)).slice(-2);
    expect(plain?.request_body).toMatch(/^v1\./);
    expect(plain?.response_body).toMatch(/^v1\./);

    // Readable with the key ring, bound to the row, with secrets masked before storage.
    const request = b.runtime.keyRing.decryptText(plain!.request_body!, bodyAad('default', plain!.id, 'request_body'));
    expect(request).toContain(marker);
    expect(request).not.toContain(secretInPrompt);
    const response = b.runtime.keyRing.decryptText(plain!.response_body!, bodyAad('default', plain!.id, 'response_body'));
    expect(response).toContain(marker);
    expect(response).toContain(message.id);
    expect(response).not.toContain(secretInPrompt); // the echo of the secret is masked too
    expect(b.runtime.keyRing.decryptText(streamed!.response_body!, bodyAad('default', streamed!.id, 'response_body'))).toContain('event: message_stop');
    // A ciphertext moved to another row does not decrypt.
    expect(() => b.runtime.keyRing.decryptText(plain!.request_body!, bodyAad('default', streamed!.id, 'request_body'))).toThrow();

    await b.runtime.database.db.executeQuery(sql`checkpoint`.compile(b.runtime.database.db)).catch(() => {});
    const files = filesUnder(path.join(b.dataDir, 'db')).map((f) => readFileSync(f).toString('latin1'));
    for (const needle of [marker, secretInPrompt, upstreamKey]) expect(files.some((f) => f.includes(needle))).toBe(false);
  });

  it('re-encrypts stored bodies and credentials under a new first key, and old keys are then not needed', async () => {
    const ring = KeyRing.fromConfig([newKey, oldKey]);
    const result = await rotateEncryption(b.runtime.database.db, ring, { batchSize: 1 });
    expect(result.bodies).toBeGreaterThan(0);
    expect(result.credentials).toBe(1);
    expect(await countNeedingRotation(b.runtime.database.db, ring)).toBe(0);
    const onlyNew = KeyRing.fromConfig([newKey]);
    const row = (await rows(b)).at(-1)!;
    expect(onlyNew.decryptText(row.request_body!, bodyAad('default', row.id, 'request_body'))).toContain('streamed');
    expect((await new StoredCredentials({ db: b.runtime.database.db, keyRing: onlyNew, cacheMs: 0 }).get('default'))?.credential).toEqual({ type: 'api_key', apiKey: upstreamKey });
  });

  it('purges bodies past their retention and rows past theirs, and audits it', async () => {
    const day = 86_400_000;
    const seed = (id: string, ageDays: number) =>
      b.runtime.requestLog.push({
        id, time: new Date(Date.now() - ageDays * day).toISOString(), tenantId: 'default', keyId: 'k', method: 'POST', path: '/v1/messages', model: 'm', stream: false, status: 200,
        errorType: null, inputTokens: 1, outputTokens: 1, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, costUsd: 0, latencyMs: 1, firstTokenMs: null, ip: null, userAgent: null,
        requestId: null, upstreamRequestId: null, requestBody: 'v1.x.y.z', responseBody: 'v1.x.y.z',
      });
    seed('fresh', 1);
    seed('old', 45);
    seed('ancient', 120);
    await b.runtime.flush();
    const result = await b.runtime.proxyManagement.purgeNow(OPERATOR);
    expect(result).toMatchObject({ ok: true, value: { bodiesCleared: 1, rowsDeleted: 1 } });
    const byId = Object.fromEntries((await rows(b)).map((r) => [r.id, r]));
    expect(byId.fresh?.request_body).toBe('v1.x.y.z');
    expect(byId.old).toMatchObject({ request_body: null, response_body: null, input_tokens: 1 });
    expect(byId.ancient).toBeUndefined();
    await b.runtime.flush();
    expect((await b.runtime.auditReader.tail({ type: 'retention.purged' })).at(-1)?.details).toMatchObject({ bodiesCleared: 1, rowsDeleted: 1 });
  });

  it('stores the response body on the web-stream path too (in-process requests, fetch adapters)', async () => {
    const key = (await b.createKey(['llm'])).key;
    const marker = `okapi-${randomBytes(6).toString('hex')}`;
    const response = await b.publicApp.request('/v1/messages', {
      method: 'POST',
      headers: { 'x-api-key': key, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
      body: JSON.stringify({ ...MESSAGE, messages: [{ role: 'user', content: marker }] }),
    });
    expect(response.status).toBe(200);
    await response.arrayBuffer();
    await b.runtime.flush();
    const row = (await rows(b)).at(-1);
    expect(b.runtime.keyRing.decryptText(row!.response_body!, bodyAad('default', row!.id, 'response_body'))).toContain(marker);
  });
});

describe('metrics', () => {
  it('counts calls, audit events and the write queues on the admin listener, for a metrics-scoped key', async () => {
    const upstream = await startAnthropicStandIn();
    const b = await startTestBulwark('pglite', { BULWARK_UPSTREAM_URL: upstream.url }, { listen: true });
    try {
      const upstreamKey = fakeUpstreamKey();
      upstream.apiKeys.add(upstreamKey);
      writeCredential(b, 'default', { type: 'api_key', api_key: upstreamKey });
      const sdk = new Anthropic({ apiKey: (await b.createKey(['llm'])).key, baseURL: b.publicUrl, maxRetries: 0 });
      await sdk.messages.create(MESSAGE);
      await fetch(`${b.publicUrl}/api/whoami`); // an authentication failure
      await b.runtime.flush();
      const scraper = (await b.createKey(['metrics'])).key;
      const response = await b.adminApp.request('/metrics', { headers: { authorization: `Bearer ${scraper}` } });
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toContain('text/plain; version=0.0.4');
      const text = await response.text();
      expect(text).toContain('bulwark_proxy_requests_total{status="200",stream="false"} 1');
      expect(text).toMatch(/bulwark_audit_events_total\{type="auth.failure",outcome="failure"\} [1-9]/);
      expect(text).toContain('bulwark_write_queue_spooled_total{queue="requests"} 0');
      expect(text).toMatch(/bulwark_write_queue_written_total\{queue="requests"\} [1-9]/);
      // The metrics scope opens nothing else on the admin listener.
      expect((await b.adminApp.request('/api/keys', { headers: { authorization: `Bearer ${scraper}` } })).status).toBe(403);
      expect((await b.adminApp.request('/metrics')).status).toBe(401);
    } finally {
      await b.close();
      await upstream.close();
    }
  });
});

describe('clients that leave early', () => {
  let upstream: StandIn;
  let b: TestBulwark;
  let upstreamKey: string;

  beforeAll(async () => {
    upstream = await startAnthropicStandIn();
    b = await startTestBulwark('pglite', { BULWARK_UPSTREAM_URL: upstream.url }, { listen: true });
    upstreamKey = fakeUpstreamKey();
    upstream.apiKeys.add(upstreamKey);
    writeCredential(b, 'default', { type: 'api_key', api_key: upstreamKey });
  });
  afterAll(async () => {
    await b?.close();
    await upstream?.close();
  });

  const post = (key: string, body: unknown, signal?: AbortSignal) =>
    fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', signal, headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' }, body: JSON.stringify(body) });

  it('charges the output a client received when it hangs up before the final usage event', async () => {
    const key = (await b.createKey(['llm'])).key;
    const controller = new AbortController();
    // About 3,000 events 2 ms apart: the stream is far from its end when the client leaves at 150.
    const response = await post(key, { ...MESSAGE, max_tokens: 4000, stream: true, messages: [{ role: 'user', content: 'word '.repeat(3000) }] }, controller.signal);
    const reader = response.body!.getReader();
    let text = '';
    while ((text.match(/content_block_delta/g) ?? []).length < 150) text += new TextDecoder().decode((await reader.read()).value);
    controller.abort();
    await sleep(200);
    const row = (await rows(b)).at(-1);
    expect(row?.error_type).toBe('client_disconnected');
    // The stream's message_start said output_tokens: 1; what was received counts instead.
    expect(row?.output_tokens).toBeGreaterThan(40);
  });

  it('does not leave a reservation behind when the client leaves before upstream answers', async () => {
    const created = await b.runtime.keyService.createKey(OPERATOR, { name: 'tight', scopes: ['llm'], limits: { tokensPerMinute: 300 } });
    if (!created.ok) throw new Error(created.message);
    upstream.fault = { kind: 'delay-headers', ms: 400 };
    const controller = new AbortController();
    const leaving = post(created.value.key, { ...MESSAGE, max_tokens: 200 }, controller.signal).catch(() => undefined);
    await sleep(100);
    controller.abort();
    await leaving;
    await sleep(500);
    upstream.fault = undefined;
    expect((await rows(b)).at(-1)).toMatchObject({ status: 499, error_type: 'client_disconnected' });
    // The 200-token reservation was settled (to the input estimate), so another call fits.
    expect((await post(created.value.key, { ...MESSAGE, max_tokens: 200 })).status).toBe(200);
  });

  it('records a client that hangs up halfway through sending its body, and sends nothing upstream', async () => {
    const key = (await b.createKey(['llm'])).key;
    const before = upstream.requests.length;
    const { hostname, port } = new URL(b.publicUrl);
    const socket = connect(Number(port), hostname);
    await once(socket, 'connect');
    const head = `POST /v1/messages HTTP/1.1\r\nHost: ${hostname}:${port}\r\nx-api-key: ${key}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n`;
    socket.write(`${head}${'{"model": "claude-haiku-4-5", '.padEnd(100)}`);
    await sleep(200);
    socket.destroy();
    await sleep(300);
    expect((await rows(b)).at(-1)).toMatchObject({ status: 499, error_type: 'client_disconnected', key_id: expect.any(String) });
    expect(upstream.requests.length).toBe(before);
  });
});

describe('SseFramer', () => {
  it('passes whole events at once and holds an incomplete tail until the rest arrives', () => {
    const framer = new SseFramer();
    const text = (b: Uint8Array) => Buffer.from(b).toString();
    expect(text(framer.push(Buffer.from('event: a\ndata: 1\n\nevent: b\nda')))).toBe('event: a\ndata: 1\n\n');
    expect(text(framer.push(Buffer.from('ta: 2\n')))).toBe('');
    expect(text(framer.push(Buffer.from('\nevent: c\r\ndata: 3\r\n\r\n')))).toBe('event: b\ndata: 2\n\nevent: c\r\ndata: 3\r\n\r\n');
    expect(text(framer.push(Buffer.from('partial')))).toBe('');
    expect(text(framer.flush())).toBe('partial');
  });
});

describe('request size', () => {
  it('refuses a body over 32 MiB with 413 request_too_large, even without a Content-Length, and records it', async () => {
    const upstream = await startAnthropicStandIn();
    const b = await startTestBulwark('pglite', { BULWARK_UPSTREAM_URL: upstream.url }, { listen: true });
    try {
      writeCredential(b, 'default', { type: 'api_key', api_key: fakeUpstreamKey() });
      const key = (await b.createKey(['llm'])).key;
      const chunk = new Uint8Array(1024 * 1024).fill(0x20);
      let sent = 0;
      // A streamed (chunked) upload: there is no Content-Length to check first.
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (sent++ < 40) controller.enqueue(chunk);
          else controller.close();
        },
      });
      const response = await fetch(`${b.publicUrl}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body, duplex: 'half' } as RequestInit);
      expect(response.status).toBe(413);
      expect(((await response.json()) as { error: { type: string } }).error.type).toBe('request_too_large');
      expect(upstream.requests).toHaveLength(0);
      expect((await rows(b)).at(-1)).toMatchObject({ status: 413, error_type: 'payload_too_large' });
    } finally {
      await b.close();
      await upstream.close();
    }
  });
});

describe('allow-listed paths', () => {
  it('forwards an allow-listed path, but not for a key under a token budget, since it is not metered', async () => {
    const upstream = await startAnthropicStandIn();
    const b = await startTestBulwark('pglite', { BULWARK_UPSTREAM_URL: upstream.url }, { listen: true, file: { upstream: { allowPaths: ['/v1/files*'] } } });
    try {
      const upstreamKey = fakeUpstreamKey();
      upstream.apiKeys.add(upstreamKey);
      writeCredential(b, 'default', { type: 'api_key', api_key: upstreamKey });
      const free = (await b.createKey(['llm'])).key;
      const budgeted = await b.runtime.keyService.createKey(OPERATOR, { name: 'b', scopes: ['llm'], limits: { tokensPerDay: 1000 } });
      if (!budgeted.ok) throw new Error(budgeted.message);
      const get = (key: string) => fetch(`${b.publicUrl}/v1/files`, { headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01' } });
      const forwarded = await get(free);
      expect(upstream.requests.at(-1)?.path).toBe('/v1/files'); // it reached upstream (which has no such route)
      expect(forwarded.status).toBe(404);
      const refused = await get(budgeted.value.key);
      expect(refused.status).toBe(403);
      expect(((await refused.json()) as { error: { message: string } }).error.message).toContain('not metered');
    } finally {
      await b.close();
      await upstream.close();
    }
  });
});

describe('pass-through details', () => {
  it('stops framing and passes bytes on once one event grows past 1 MiB', () => {
    const framer = new SseFramer();
    expect(framer.push(Buffer.from('data: ')).byteLength).toBe(0);
    const big = framer.push(Buffer.alloc(1024 * 1024 + 1, 0x61));
    expect(big.byteLength).toBe(1024 * 1024 + 7);
    expect(Buffer.from(framer.push(Buffer.from('tail'))).toString()).toBe('tail');
  });

  it('delivers a web stream whose chunks end mid-event, in whole events, and completes', async () => {
    const { Readable } = await import('node:stream');
    const { UsageMeter } = await import('../src/proxy/usage.js');
    const { passThrough } = await import('../src/proxy/forward.js');
    const ends: string[] = [];
    const stream = passThrough({
      body: Readable.from([Buffer.from('event: a\ndata: {"x":'), Buffer.from('1}\n\nevent: b\ndat'), Buffer.from('a: 2\n\n')]),
      meter: new UsageMeter('text/event-stream', performance.now()),
      sse: true,
      onEnd: (end) => ends.push(end.kind),
      abortUpstream: () => {},
      streamErrorEvent: () => new Uint8Array(),
    });
    const parts: string[] = [];
    const reader = stream.getReader();
    for (let r = await reader.read(); !r.done; r = await reader.read()) parts.push(Buffer.from(r.value).toString());
    expect(parts).toEqual(['event: a\ndata: {"x":1}\n\n', 'event: b\ndata: 2\n\n']);
    expect(ends).toEqual(['complete']);
  });
});
