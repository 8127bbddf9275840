/**
 * Bulwark's agent (`/api/message` and friends) against the Anthropic stand-in scripting a
 * tool-use turn: the tools offered follow the caller's scopes, the loop runs the tool and
 * returns the model's final answer, usage lands in `requests` under the caller's tenant as for
 * `/v1/messages`, sessions are tenant-bound and stored encrypted, and the model switch is
 * admin-only and audited.
 */
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { DefaultAgentCardResolver } from '@a2a-js/sdk/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_HISTORY_TURNS } from '../src/agent/agent.js';
import { AgentSessionStore, type Turn } from '../src/agent/sessions.js';
import type { McpSource } from '../src/mcp/registry.js';
import { purge, rotateEncryption } from '../src/proxy/retention.js';
import { KeyRing } from '../src/store/crypto.js';
import { OPERATOR, type TestBulwark, startTestBulwark } from './helpers/runtime.js';
import { type StandIn, startAnthropicStandIn } from './stand-in/anthropic.js';
import { type SseEvent, readSse } from './helpers/sse.js';
import { type FixtureUpstream, startFixtureUpstream } from './fixtures/mcp-upstream.js';
import { awayFromMinuteBoundary } from './helpers/clock.js';

const CANARY = 'agent-history-canary-3d8e';
const APP_ORIGIN = 'https://app.example';
/** The bootstrap key: an operator, across tenants. */
const OPERATOR_KEY = `bwk_test_${'o'.repeat(40)}`;

/** An echo tool for `write` keys and a deploy tool needing its own scope. */
const tools: McpSource = {
  name: 'test',
  tools: () => [
    {
      scope: 'write',
      source: 'test',
      definition: { name: 'echo', description: 'Echoes text', inputSchema: { type: 'object', properties: { text: { type: 'string' } } } },
      call: async (args) => ({ content: [{ type: 'text', text: `echo: ${String(args.text)}` }] }),
    },
    {
      scope: 'tool:deploy',
      source: 'test',
      definition: { name: 'deploy', description: 'Deploys', inputSchema: { type: 'object' } },
      call: async () => ({ content: [{ type: 'text', text: 'deployed!' }] }),
    },
  ],
  resources: () => [],
  resourceTemplates: () => [],
  prompts: () => [],
};

describe('agent API', () => {
  let upstream: StandIn;
  let mcpUpstream: FixtureUpstream;
  let b: TestBulwark;
  let writer: { key: string; id: string };
  let deployer: string;
  let reader: string;
  let admin: string;

  beforeAll(async () => {
    upstream = await startAnthropicStandIn();
    mcpUpstream = await startFixtureUpstream();
    b = await startTestBulwark(
      'postgres',
      { BULWARK_UPSTREAM_URL: upstream.url, BULWARK_RATE_LIMIT_WRITE: '1000', BULWARK_CORS_ORIGINS: APP_ORIGIN, BULWARK_API_KEY: OPERATOR_KEY, BULWARK_LLM_BODY_LIMIT_BYTES: '65536' },
      {
        listen: true,
        file: {
          agent: { model: 'claude-sonnet-4-5', models: ['claude-haiku-4-5-20251001'], maxSteps: 4 },
          mcp: { upstreams: [{ name: 'fixture', url: mcpUpstream.url }], rateLimits: { tools: { fixture__test_error_handling: 1 } } },
        },
      },
    );
    b.runtime.mcpRegistry.add(tools);
    const upstreamKey = `sk-ant-api03-${randomBytes(24).toString('hex')}`;
    upstream.apiKeys.add(upstreamKey);
    const dir = b.runtime.config.credentialsDir;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700);
    writeFileSync(path.join(dir, 'default.json'), JSON.stringify({ type: 'api_key', api_key: upstreamKey }), { mode: 0o600 });
    b.runtime.fileCredentials.scan();
    writer = await b.createKey(['write']);
    deployer = (await b.createKey(['write', 'tool:deploy'])).key;
    reader = (await b.createKey(['read'])).key;
    admin = (await b.createKey(['admin'])).key;
  });

  afterAll(async () => {
    await b?.close();
    await upstream?.close();
    await mcpUpstream?.close();
  });

  const api = (key: string, route: string, init: { method?: string; body?: unknown } = {}) =>
    fetch(new URL(route, b.publicUrl), {
      method: init.method ?? (init.body === undefined ? 'GET' : 'POST'),
      headers: { authorization: `Bearer ${key}`, ...(init.body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) }),
    });

  const lastToolsOffered = () => {
    const calls = upstream.requests.filter((r) => r.path === '/v1/messages');
    return ((calls.at(-1)?.body as { tools?: Array<{ name: string }> }).tools ?? []).map((t) => t.name).sort();
  };

  it('runs a permitted tool and returns the final answer, with usage in requests under the tenant', async () => {
    const response = await api(writer.key, '/api/message', { body: { message: `Please use echo {"text":"${CANARY}"}` } });
    expect(response.status).toBe(200);
    const result = (await response.json()) as { sessionId: string; reply: string; toolCalls: Array<{ name: string; isError: boolean }>; usage: { inputTokens: number; outputTokens: number }; steps: number };
    expect(result.toolCalls).toEqual([{ name: 'echo', input: { text: CANARY }, isError: false }]);
    expect(result.reply).toContain(`echo: ${CANARY}`);
    expect(result.steps).toBe(2);
    expect(result.usage.inputTokens).toBeGreaterThan(0);
    expect(lastToolsOffered().filter((name) => !name.startsWith('fixture__'))).toEqual(['echo', 'usage_summary']);
    await b.runtime.flush();
    const rows = await b.runtime.database.db.selectFrom('requests').selectAll().where('key_id', '=', writer.id).execute();
    expect(rows).toHaveLength(2);
    expect(rows.every((r) => r.tenant_id === 'default' && r.path === '/v1/messages' && r.status === 200)).toBe(true);
    expect(rows.reduce((sum, r) => sum + Number(r.input_tokens), 0)).toBe(result.usage.inputTokens);
    // The upstream got Bulwark's credential, never the caller's key.
    expect(JSON.stringify(upstream.requests.at(-1)?.headers)).not.toContain(writer.key);
  });

  it('never shows the model a tool outside the caller\u2019s scopes', async () => {
    const withoutScope = (await (await api(writer.key, '/api/message', { body: { message: 'use deploy now' } })).json()) as { toolCalls: unknown[]; reply: string };
    expect(withoutScope.toolCalls).toEqual([]);
    expect(lastToolsOffered()).not.toContain('deploy');
    const withScope = (await (await api(deployer, '/api/message', { body: { message: 'use deploy now' } })).json()) as { toolCalls: Array<{ name: string }>; reply: string };
    expect(withScope.toolCalls.map((t) => t.name)).toEqual(['deploy']);
    expect(withScope.reply).toContain('deployed!');
  });

  it('keeps a conversation per key, encrypted, and hides it from every other key', async () => {
    const first = (await (await api(writer.key, '/api/message', { body: { message: `remember ${CANARY}` } })).json()) as { sessionId: string };
    const second = await api(writer.key, '/api/message', { body: { message: 'and again', sessionId: first.sessionId } });
    expect(second.status).toBe(200);
    const history = (await (await api(writer.key, `/api/sessions/${first.sessionId}`)).json()) as { history: Array<{ role: string }> };
    expect(history.history.map((t) => t.role)).toEqual(['user', 'assistant', 'user', 'assistant']);
    const listed = (await (await api(writer.key, '/api/sessions')).json()) as { sessions: Array<{ id: string; turns: number }> };
    expect(listed.sessions.find((s) => s.id === first.sessionId)?.turns).toBe(4);
    // Another key of the same tenant (here one that may read everything) does not see it.
    expect((await api(admin, `/api/sessions/${first.sessionId}`)).status).toBe(404);
    expect(((await (await api(reader, '/api/sessions')).json()) as { sessions: unknown[] }).sessions).toEqual([]);
    const stored = await b.runtime.database.db.selectFrom('agent_sessions').select('history').where('id', '=', first.sessionId).executeTakeFirstOrThrow();
    expect(stored.history).toMatch(/^v1\./);
    expect(stored.history).not.toContain(CANARY);

    await b.runtime.keyService.createTenant(OPERATOR, 'other');
    const outsider = (await b.createKey(['write'], { tenant: 'other' })).key;
    expect((await api(outsider, `/api/sessions/${first.sessionId}`)).status).toBe(404);
    expect((await api(outsider, '/api/message', { body: { message: 'hi', sessionId: first.sessionId } })).status).toBe(404);
    expect((await api(outsider, `/api/sessions/${first.sessionId}`, { method: 'DELETE' })).status).toBe(404);
    expect(((await (await api(outsider, '/api/sessions')).json()) as { sessions: unknown[] }).sessions).toEqual([]);

    expect((await api(reader, `/api/sessions/${first.sessionId}`, { method: 'DELETE' })).status).toBe(403);
    expect((await api(deployer, `/api/sessions/${first.sessionId}`, { method: 'DELETE' })).status).toBe(404);
    expect((await api(writer.key, `/api/sessions/${first.sessionId}`, { method: 'DELETE' })).status).toBe(200);
    expect((await api(writer.key, `/api/sessions/${first.sessionId}`)).status).toBe(404);
  });

  it('streams the message as SSE when asked', async () => {
    const response = await api(writer.key, '/api/message', { body: { message: `use echo {"text":"streamed"}`, stream: true } });
    expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const events = (await readSse(response)).map((e) => ({ event: e.event, data: JSON.parse(e.data) as Record<string, unknown> }));
    expect(events.map((e) => e.event)).toEqual(['message_started', 'chunk', 'tool_called', 'chunk', 'message_finished', 'done']);
    expect(events.find((e) => e.event === 'tool_called')?.data).toEqual({ name: 'echo', isError: false });
    expect(String(events.find((e) => e.event === 'message_finished')?.data.reply)).toContain('echo: streamed');
  });

  it('keeps a long conversation to its newest turns, starting at a message of the user', async () => {
    const id = AgentSessionStore.newId();
    const long: Turn[] = [];
    for (let i = 0; i < 60; i++) long.push({ role: 'user', content: `question ${i}` }, { role: 'assistant', content: [{ type: 'text', text: `answer ${i}` }] });
    await b.runtime.agentSessions.save({ tenant: 'default', keyId: writer.id }, id, long, undefined);
    const response = await api(writer.key, '/api/message', { body: { message: 'one more', sessionId: id } });
    expect(response.status).toBe(200);
    const sent = (upstream.requests.filter((r) => r.path === '/v1/messages').at(-1)?.body as { messages: Turn[] }).messages;
    expect(sent.length).toBeLessThanOrEqual(MAX_HISTORY_TURNS);
    expect(sent[0]).toMatchObject({ role: 'user', content: expect.stringMatching(/^question \d+$/) });
    expect(sent.at(-1)).toEqual({ role: 'user', content: 'one more' });
  });

  it('ends the upstream MCP sessions a message opened, and keeps /mcp limits on its tool calls', async () => {
    const before = mcpUpstream.openSessions();
    const first = (await (await api(writer.key, '/api/message', { body: { message: 'use fixture__test_error_handling now' } })).json()) as { toolCalls: Array<{ isError: boolean }> };
    expect(first.toolCalls).toHaveLength(1);
    await expect.poll(() => mcpUpstream.openSessions(), { timeout: 5_000 }).toBe(before);
    // The per-tool limit of /mcp (1 a minute here) holds for the agent too.
    const second = (await (await api(writer.key, '/api/message', { body: { message: 'use fixture__test_error_handling again' } })).json()) as { reply: string };
    expect(second.reply).toContain('Too many calls for tool fixture__test_error_handling');
  });

  it('refuses a message that two clients continue at once, keeping the one that finished first', async () => {
    const { sessionId } = (await (await api(writer.key, '/api/message', { body: { message: 'start' } })).json()) as { sessionId: string };
    upstream.fault = { kind: 'delay-headers', ms: 300, times: 2 };
    const [one, two] = await Promise.all([
      api(writer.key, '/api/message', { body: { message: 'one', sessionId } }),
      api(writer.key, '/api/message', { body: { message: 'two', sessionId } }),
    ]);
    expect([one.status, two.status].sort()).toEqual([200, 409]);
    const { history } = (await (await api(writer.key, `/api/sessions/${sessionId}`)).json()) as { history: Turn[] };
    expect(history).toHaveLength(4);
  });

  it('holds its model calls to the LLM body limit, as /v1/messages is', async () => {
    const response = await api(writer.key, '/api/message', { body: { message: 'x'.repeat(90_000) } });
    expect(response.status).toBe(413);
  });

  it('survives a client leaving mid-message, and records the abandoned model call', async () => {
    const leaver = await b.createKey(['write']);
    upstream.fault = { kind: 'delay-headers', ms: 600 };
    const abort = new AbortController();
    const response = await fetch(new URL('/api/message', b.publicUrl), {
      method: 'POST',
      headers: { authorization: `Bearer ${leaver.key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ message: 'take your time', stream: true }),
      signal: abort.signal,
    });
    expect(response.status).toBe(200);
    setTimeout(() => abort.abort(), 100);
    await response.text().catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 900));
    expect((await api(reader, '/api/llm/current')).status).toBe(200);
    await b.runtime.flush();
    const rows = await b.runtime.database.db.selectFrom('requests').select(['status', 'error_type']).where('key_id', '=', leaver.id).execute();
    expect(rows).toEqual([{ status: 499, error_type: 'client_disconnected' }]);
  });

  it('reports the model and lets only an operator switch it, within the list, audited', async () => {
    const current = (await (await api(reader, '/api/llm/current')).json()) as Record<string, unknown>;
    expect(current).toMatchObject({ provider: 'anthropic', model: 'claude-sonnet-4-5', models: ['claude-sonnet-4-5', 'claude-haiku-4-5-20251001'] });
    expect(JSON.stringify(current)).not.toMatch(/sk-ant|bwk_/);
    expect((await api(reader, '/api/llm/switch', { body: { model: 'claude-haiku-4-5-20251001' } })).status).toBe(403);
    // A tenant's admin key may not change the model every tenant uses.
    expect((await api(admin, '/api/llm/switch', { body: { model: 'claude-haiku-4-5-20251001' } })).status).toBe(403);
    expect((await api(OPERATOR_KEY, '/api/llm/switch', { body: { model: 'gpt-9' } })).status).toBe(400);
    const switched = await api(OPERATOR_KEY, '/api/llm/switch', { body: { model: 'claude-haiku-4-5-20251001' } });
    expect(await switched.json()).toMatchObject({ model: 'claude-haiku-4-5-20251001', previous: 'claude-sonnet-4-5' });
    await api(writer.key, '/api/message', { body: { message: 'which model?' } });
    expect((upstream.requests.filter((r) => r.path === '/v1/messages').at(-1)?.body as { model: string }).model).toBe('claude-haiku-4-5-20251001');
    await b.runtime.flush();
    const [event] = await b.runtime.auditReader.tail({ type: 'agent.model_switched' });
    expect(event).toMatchObject({ outcome: 'success', details: { from: 'claude-sonnet-4-5', to: 'claude-haiku-4-5-20251001' } });
    await api(OPERATOR_KEY, '/api/llm/switch', { body: { model: 'claude-sonnet-4-5' } });
  });

  it('answers a limit hit by a model call as the limit it is', async () => {
    await awayFromMinuteBoundary();
    const limited = await b.runtime.keyService.createKey(OPERATOR, { name: 'limited', scopes: ['write'], limits: { requestsPerMinute: 1 } });
    if (!limited.ok) throw new Error(limited.message);
    const response = await api(limited.value.key, '/api/message', { body: { message: 'use echo {"text":"x"}' } });
    expect(response.status).toBe(429);
    expect(response.headers.get('retry-after')).toBeTruthy();
  });

  describe('events', () => {
    const ticketFor = async (key: string, origin?: string) => {
      const response = await fetch(new URL('/api/events/ticket', b.publicUrl), { method: 'POST', headers: { authorization: `Bearer ${key}`, ...(origin ? { origin } : {}) } });
      expect(response.status).toBe(201);
      return ((await response.json()) as { ticket: string }).ticket;
    };
    const openWithTicket = (ticket: string, origin?: string) =>
      fetch(new URL(`/api/events?ticket=${ticket}`, b.publicUrl), { headers: { accept: 'text/event-stream', ...(origin ? { origin } : {}) } });

    it("streams a key's agent events to a browser through a single-use ticket bound to its Origin", async () => {
      const ticket = await ticketFor(writer.key, APP_ORIGIN);
      const stream = await openWithTicket(ticket, APP_ORIGIN);
      expect(stream.status).toBe(200);
      expect(stream.headers.get('content-type')).toMatch(/^text\/event-stream/);
      const reading = readSse(stream, (events) => events.some((e) => e.event === 'message_finished'));
      const sent = (await (await api(writer.key, '/api/message', { body: { message: 'use echo {"text":"via feed"}' } })).json()) as { sessionId: string };
      const events = await reading;
      expect(events.map((e) => e.event)).toEqual(['message_started', 'chunk', 'tool_called', 'chunk', 'message_finished']);
      expect(events.every((e) => (JSON.parse(e.data) as { sessionId: string }).sessionId === sent.sessionId)).toBe(true);
      expect(events.every((e) => e.id !== undefined)).toBe(true);

      // Used once; a second use, another Origin, or an expired ticket gets 401, audited.
      expect((await openWithTicket(ticket, APP_ORIGIN)).status).toBe(401);
      expect((await openWithTicket(await ticketFor(reader, APP_ORIGIN), 'https://evil.example')).status).toBe(401);
      expect((await openWithTicket(await ticketFor(reader, APP_ORIGIN))).status).toBe(401);
      const stale = await ticketFor(reader, APP_ORIGIN);
      await b.runtime.database.db.updateTable('event_tickets').set({ expires_at: new Date(Date.now() - 1000) }).execute();
      expect((await openWithTicket(stale, APP_ORIGIN)).status).toBe(401);
      await b.runtime.flush();
      const failures = (await b.runtime.auditReader.tail({ type: 'auth.failure', limit: 50 })).filter((e) => e.path === '/api/events');
      expect(failures.map((e) => (e.details as { reason: string }).reason)).toEqual(expect.arrayContaining(['ticket_unknown_or_used', 'ticket_wrong_origin', 'ticket_expired']));
      // A ticket works on /api/events only.
      const elsewhere = await fetch(new URL(`/api/sessions?ticket=${await ticketFor(reader)}`, b.publicUrl));
      expect(elsewhere.status).toBe(401);
    });

    it('lets a browser reconnect with a new ticket and lastEventId, and accepts a same-origin page without Origin', async () => {
      const ownOrigin = new URL(b.publicUrl).origin;
      const first = await openWithTicket(await ticketFor(writer.key, ownOrigin), ownOrigin);
      const reading = readSse(first, (events) => events.some((e) => e.event === 'message_finished'));
      await api(writer.key, '/api/message', { body: { message: 'reconnect me' } });
      const seen = await reading;
      const started = seen.find((e) => e.event === 'message_started') as SseEvent;
      // EventSource's own reconnect cannot add headers, and same-origin GETs carry no Origin.
      const again = await fetch(new URL(`/api/events?ticket=${await ticketFor(writer.key, ownOrigin)}&lastEventId=${started.id as string}`, b.publicUrl), {
        headers: { accept: 'text/event-stream', 'sec-fetch-site': 'same-origin' },
      });
      expect(again.status).toBe(200);
      const replayed = await readSse(again, (events) => events.some((e) => e.event === 'message_finished'));
      expect(replayed.map((e) => e.id)).toEqual(seen.slice(seen.indexOf(started) + 1).map((e) => e.id));
    });

    it('tells watchers when a message fails', async () => {
      await awayFromMinuteBoundary();
      const limited = await b.runtime.keyService.createKey(OPERATOR, { name: 'watched', scopes: ['write'], limits: { requestsPerMinute: 1 } });
      if (!limited.ok) throw new Error(limited.message);
      const stream = await fetch(new URL('/api/events', b.publicUrl), { headers: { authorization: `Bearer ${limited.value.key}` } });
      const reading = readSse(stream, (events) => events.some((e) => e.event === 'message_failed'));
      await api(limited.value.key, '/api/message', { body: { message: 'first' } });
      expect((await api(limited.value.key, '/api/message', { body: { message: 'second' } })).status).toBe(429);
      const failed = (await reading).find((e) => e.event === 'message_failed');
      expect(JSON.parse(failed?.data ?? '{}')).toMatchObject({ reason: 'rate_limited' });
    });

    it('caps the event streams one key holds open, and audits the refusal', async () => {
      const watcher = await b.createKey(['read']);
      const open = (signal: AbortSignal) => fetch(new URL('/api/events', b.publicUrl), { headers: { authorization: `Bearer ${watcher.key}` }, signal });
      const abort = new AbortController();
      const streams = await Promise.all(Array.from({ length: 10 }, () => open(abort.signal)));
      expect(streams.map((s) => s.status)).toEqual(Array(10).fill(200));
      const refused = await fetch(new URL('/api/events', b.publicUrl), { headers: { authorization: `Bearer ${watcher.key}` } });
      expect(refused.status).toBe(429);
      expect(refused.headers.get('retry-after')).toBe('5');
      abort.abort();
      await b.runtime.flush();
      const [event] = (await b.runtime.auditReader.tail({ type: 'rate_limit.exceeded', limit: 50 })).filter((e) => e.keyId === watcher.id);
      expect(event).toMatchObject({ outcome: 'denied', path: '/api/events', details: { limit: 'event_streams' } });
    });

    it('never takes a key in the URL', async () => {
      for (const name of ['api_key', 'key', 'token', 'access_token']) {
        expect((await fetch(new URL(`/api/events?${name}=${reader}`, b.publicUrl))).status).toBe(401);
      }
    });

    it("replays what a client missed after Last-Event-ID, and shows no other key's events", async () => {
      const first = await fetch(new URL('/api/events', b.publicUrl), { headers: { authorization: `Bearer ${writer.key}` } });
      const reading = readSse(first, (events) => events.some((e) => e.event === 'message_finished'));
      await api(writer.key, '/api/message', { body: { message: 'hello feed' } });
      const seen = await reading;
      const started = seen.find((e) => e.event === 'message_started') as SseEvent;
      const resumed = await fetch(new URL('/api/events', b.publicUrl), { headers: { authorization: `Bearer ${writer.key}`, 'last-event-id': started.id as string } });
      const replayed = await readSse(resumed, (events) => events.some((e) => e.event === 'message_finished'));
      expect(replayed.map((e) => e.id)).toEqual(seen.slice(seen.indexOf(started) + 1).map((e) => e.id));

      for (const stranger of [reader, (await b.createKey(['read'], { tenant: 'other' })).key]) {
        const theirs = await fetch(new URL('/api/events', b.publicUrl), { headers: { authorization: `Bearer ${stranger}`, 'last-event-id': started.id as string } });
        const nothing = await readSse(theirs, () => false, 300);
        expect(nothing.filter((e) => e.event !== undefined && e.event !== 'model_switched')).toEqual([]);
      }
    });

    it("ends a key's open event stream when the key is revoked", async () => {
      const doomed = await b.createKey(['read']);
      const stream = await fetch(new URL('/api/events', b.publicUrl), { headers: { authorization: `Bearer ${doomed.key}` } });
      expect(stream.status).toBe(200);
      const revoked = await b.runtime.keyService.revokeKey(OPERATOR, doomed.id);
      expect(revoked.ok).toBe(true);
      await expect(stream.text()).resolves.toContain(': bulwark events');
    });
  });

  it("serves an agent card the official A2A resolver reads, pointing at this agent's /api/message", async () => {
    const card = await new DefaultAgentCardResolver().resolve(b.publicUrl);
    expect(card.supportedInterfaces[0]?.url).toBe(`${b.publicUrl}/api/message`);
    expect(card.capabilities?.streaming).toBe(true);
    expect(Object.keys(card.securitySchemes).sort()).toEqual(['apiKey', 'bearer']);
  });

  it('audits every unauthorised attempt with path, credential presented, Origin, user agent and IP', async () => {
    const attempt = (headers: Record<string, string>) =>
      fetch(new URL('/api/message', b.publicUrl), { method: 'POST', headers: { 'content-type': 'application/json', 'user-agent': 'probe/1.0', origin: APP_ORIGIN, ...headers }, body: '{"message":"hi"}' });
    expect((await attempt({})).status).toBe(401);
    expect((await attempt({ authorization: 'Bearer bwk_test_notarealkeynotarealkeynotarealkey' })).status).toBe(401);
    await b.runtime.flush();
    const failures = (await b.runtime.auditReader.tail({ type: 'auth.failure', limit: 20 })).filter((e) => e.path === '/api/message' && e.userAgent === 'probe/1.0');
    expect(failures.map((e) => (e.details as { credentialPresented: boolean }).credentialPresented)).toEqual([false, true]);
    for (const e of failures) expect(e).toMatchObject({ method: 'POST', ip: '127.0.0.1', details: { origin: APP_ORIGIN } });
  });

  it('refuses a message without write, and a body that is not a message', async () => {
    expect((await api(reader, '/api/message', { body: { message: 'hi' } })).status).toBe(403);
    expect((await api(writer.key, '/api/message', { body: { text: 'hi' } })).status).toBe(400);
    expect((await api(writer.key, '/api/message', { body: { message: 'hi', sessionId: 'nope' } })).status).toBe(400);
  });

  it('deletes conversations untouched for longer than bodies are kept', async () => {
    const { sessionId } = (await (await api(writer.key, '/api/message', { body: { message: 'old news' } })).json()) as { sessionId: string };
    const db = b.runtime.database.db;
    await db.updateTable('agent_sessions').set({ updated_at: new Date(Date.now() - 31 * 86_400_000) }).where('id', '=', sessionId).execute();
    const result = await purge(db, { bodyDays: 30, rowDays: 400 });
    expect(result.conversationsDeleted).toBe(1);
    expect((await api(writer.key, `/api/sessions/${sessionId}`)).status).toBe(404);
  });

  // Last: afterwards the running server's ring no longer opens the conversations.
  it('re-encrypts conversations with encryption rotate, after which the old key is not needed', async () => {
    const { sessionId } = (await (await api(writer.key, '/api/message', { body: { message: 'rotate me' } })).json()) as { sessionId: string };
    const oldKey = readFileSync(path.join(b.dataDir, 'development-encryption.key'), 'utf8').trim();
    const newKey = randomBytes(32).toString('base64');
    const result = await rotateEncryption(b.runtime.database.db, KeyRing.fromConfig([newKey, oldKey]));
    expect(result.agentSessions).toBeGreaterThan(0);
    const history = await new AgentSessionStore(b.runtime.database.db, KeyRing.fromConfig([newKey])).history({ tenant: 'default', keyId: writer.id }, sessionId);
    expect(history?.map((t) => t.role)).toEqual(['user', 'assistant']);
  });
});
