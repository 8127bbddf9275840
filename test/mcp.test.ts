/**
 * `/mcp` end to end, over real HTTP with the official SDK client: authentication and the RFC
 * 9728 challenge, per-tool scopes and filtered lists, principal-bound sessions, termination,
 * restart, resumption from Last-Event-ID, the encrypted event history, per-tool limits.
 * Runs on both database engines.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { serve, type ServerType } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createPublicApp } from '../src/http/app.js';
import { createLogger } from '../src/http/logger.js';
import { createRuntime } from '../src/http/runtime.js';
import type { McpSource, ResourceTemplateEntry, ToolEntry } from '../src/mcp/registry.js';
import { hashSessionId } from '../src/auth/sessions.js';
import { ENGINES } from './helpers/database.js';
import { OPERATOR, type TestBulwark, startTestBulwark } from './helpers/runtime.js';
import { type SseEvent, readSse } from './helpers/sse.js';

const PROTOCOL = '2025-11-25';
const SECRET_WORD = 'plaintext-canary-7f3a';

function testTool(name: string, scope: string, call: ToolEntry['call']): ToolEntry {
  return { scope, source: 'test', definition: { name, description: `test tool ${name}`, inputSchema: { type: 'object' } }, call };
}

/** Tools a team might register: an echo (write), a deploy needing its own scope, a slow countdown that streams log lines. */
const testSource: McpSource = {
  name: 'test',
  tools: () => [
    testTool('echo', 'write', async (args) => ({ content: [{ type: 'text', text: `echo: ${String(args.text)}` }] })),
    testTool('deploy', 'tool:deploy', async () => ({ content: [{ type: 'text', text: 'deployed' }] })),
    testTool('countdown', 'write', async (args, { extra }) => {
      const steps = Number(args.steps ?? 3);
      for (let i = steps; i > 0; i--) {
        await extra.sendNotification({ method: 'notifications/message', params: { level: 'info', data: `${SECRET_WORD} ${i}` } });
        await sleep(Number(args.delayMs ?? 30));
      }
      return { content: [{ type: 'text', text: `liftoff ${SECRET_WORD}` }] };
    }),
  ],
  resources: () => [],
  resourceTemplates: () => [
    // A broad template anyone with `read` may use, and a narrower one inside it that needs its own scope.
    fileTemplate('files://{+path}', 'read'),
    fileTemplate('files://secret/{id}', 'tool:secrets'),
  ],
  prompts: () => [],
};

function fileTemplate(uriTemplate: string, scope: string): ResourceTemplateEntry {
  const pattern = new RegExp(`^${uriTemplate.replace(/\{\+?[a-z]+\}/g, '.+')}$`);
  return {
    scope,
    source: 'test',
    definition: { uriTemplate, name: uriTemplate },
    matches: (uri) => pattern.test(uri),
    read: async (uri) => ({ contents: [{ uri, text: `contents of ${uri}` }] }),
  };
}

const OPERATOR_KEY = `bwk_test_${'o'.repeat(40)}`;

const messagesOf = (events: SseEvent[]) => events.filter((e) => e.data.trim() !== '').map((e) => JSON.parse(e.data) as Record<string, unknown>);

describe.each(ENGINES)('/mcp on %s', (engine) => {
  let b: TestBulwark;
  let admin: string;
  let reader: string;
  let writer: { key: string; id: string };
  let deployer: string;
  let other: { key: string; id: string };
  const clients: Client[] = [];

  beforeAll(async () => {
    b = await startTestBulwark(
      engine,
      { BULWARK_RATE_LIMIT_WRITE: '1000', BULWARK_RATE_LIMIT_READ: '1000', BULWARK_API_KEY: OPERATOR_KEY },
      { listen: true, file: { mcp: { rateLimits: { tools: { echo: 5 } }, sessions: { maxPerKey: 40 } } } },
    );
    b.runtime.mcpRegistry.add(testSource);
    admin = (await b.createKey(['admin'])).key;
    reader = (await b.createKey(['read'])).key;
    writer = await b.createKey(['write']);
    deployer = (await b.createKey(['write', 'tool:deploy'])).key;
    other = await b.createKey(['write']);
  });

  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
    await b?.close();
  });

  const mcpUrl = () => new URL('/mcp', b.publicUrl);

  async function connect(key: string, header: 'authorization' | 'x-api-key' = 'authorization'): Promise<{ client: Client; transport: StreamableHTTPClientTransport }> {
    const headers: Record<string, string> = header === 'authorization' ? { authorization: `Bearer ${key}` } : { 'x-api-key': key };
    const transport = new StreamableHTTPClientTransport(mcpUrl(), { requestInit: { headers } });
    const client = new Client({ name: 'bulwark-test', version: '1.0.0' });
    await client.connect(transport);
    clients.push(client);
    return { client, transport };
  }

  /** A raw JSON-RPC POST, for what the SDK client would not let us send. */
  function post(key: string | undefined, body: unknown, sessionId?: string): Promise<Response> {
    return fetch(mcpUrl(), {
      method: 'POST',
      headers: {
        accept: 'application/json, text/event-stream',
        'content-type': 'application/json',
        'mcp-protocol-version': PROTOCOL,
        ...(key ? { authorization: `Bearer ${key}` } : {}),
        ...(sessionId ? { 'mcp-session-id': sessionId } : {}),
      },
      body: JSON.stringify(body),
    });
  }

  async function auditEvents(type: string) {
    await b.runtime.flush();
    return b.runtime.auditReader.tail({ type, limit: 200 });
  }

  describe('authentication', () => {
    it('refuses a request without a credential with 401 and the resource-metadata challenge', async () => {
      const response = await post(undefined, { jsonrpc: '2.0', id: 1, method: 'tools/list' });
      expect(response.status).toBe(401);
      const challenge = response.headers.get('www-authenticate') ?? '';
      expect(challenge).toMatch(/^Bearer /);
      expect(challenge).toContain(`resource_metadata="${b.publicUrl}/.well-known/oauth-protected-resource/mcp"`);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
    });

    it('serves the RFC 9728 metadata the challenge points to, without a credential', async () => {
      for (const path of ['/.well-known/oauth-protected-resource/mcp', '/.well-known/oauth-protected-resource']) {
        const response = await fetch(new URL(path, b.publicUrl));
        expect(response.status).toBe(200);
        const doc = (await response.json()) as Record<string, unknown>;
        expect(doc.resource).toBe(`${b.publicUrl}/mcp`);
        expect(doc.bearer_methods_supported).toEqual(['header']);
        expect(doc.scopes_supported).toEqual(expect.arrayContaining(['read', 'write', 'admin', 'tool:deploy']));
      }
    });

    it('refuses a wrong key with 401 and audits it', async () => {
      const response = await post('bwk_test_wrongwrongwrongwrongwrongwrongwrong', { jsonrpc: '2.0', id: 1, method: 'tools/list' });
      expect(response.status).toBe(401);
      expect(response.headers.get('www-authenticate')).toContain('error="invalid_token"');
      expect((await auditEvents('auth.failure')).some((e) => e.path === '/mcp')).toBe(true);
    });

    it('accepts a key as X-API-Key and a JWT from /auth/token', async () => {
      const viaHeader = await connect(writer.key, 'x-api-key');
      expect((await viaHeader.client.listTools()).tools.map((t) => t.name)).toContain('echo');
      const tokenResponse = await fetch(new URL('/auth/token', b.publicUrl), { method: 'POST', headers: { authorization: `Bearer ${writer.key}` } });
      const { access_token: token } = (await tokenResponse.json()) as { access_token: string };
      const viaJwt = await connect(token);
      const result = await viaJwt.client.callTool({ name: 'echo', arguments: { text: 'via jwt' } });
      expect(result.content).toEqual([{ type: 'text', text: 'echo: via jwt' }]);
    });
  });

  describe('scopes', () => {
    it('shows each caller only what its scopes allow', async () => {
      const names = async (key: string) => (await (await connect(key)).client.listTools()).tools.map((t) => t.name).sort();
      expect(await names(reader)).toEqual(['usage_summary']);
      expect(await names(writer.key)).toEqual(['countdown', 'echo', 'usage_summary']);
      expect(await names(deployer)).toEqual(['countdown', 'deploy', 'echo', 'usage_summary']);
      expect(await names(admin)).toEqual(['audit_search', 'countdown', 'deploy', 'echo', 'status', 'usage_summary']);
      const { client } = await connect(writer.key);
      expect((await client.listResources()).resources).toEqual([]);
      expect((await client.listPrompts()).prompts).toEqual([]);
    });

    it('answers a call outside the scopes with HTTP 403 insufficient_scope, and audits it', async () => {
      const { transport } = await connect(reader);
      const response = await post(reader, { jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'echo', arguments: { text: 'x' } } }, transport.sessionId);
      expect(response.status).toBe(403);
      const challenge = response.headers.get('www-authenticate') ?? '';
      expect(challenge).toContain('error="insufficient_scope"');
      expect(challenge).toContain('scope="write"');
      expect(challenge).toContain('resource_metadata=');
      const denied = (await auditEvents('authz.denied')).find((e) => (e.details as { target?: string }).target === 'tools/call echo');
      expect(denied).toMatchObject({ outcome: 'denied', path: '/mcp', details: { required: 'write' } });
    });

    it('lets a write key call a tool, and audits the call', async () => {
      const { client } = await connect(writer.key);
      const result = await client.callTool({ name: 'echo', arguments: { text: 'hello' } });
      expect(result).toMatchObject({ content: [{ type: 'text', text: 'echo: hello' }] });
      const call = (await auditEvents('mcp.tool_call')).findLast((e) => (e.details as { tool?: string }).tool === 'echo');
      expect(call).toMatchObject({ outcome: 'success', keyId: writer.id, details: { scope: 'write', source: 'test' } });
      // Body storage is off: no payload, not even encrypted.
      expect(call?.details).not.toHaveProperty('payload');
      expect(JSON.stringify(call)).not.toContain('hello');
    });

    it('keeps admin tools from a write key: invisible, and 403 when called anyway', async () => {
      const { client, transport } = await connect(writer.key);
      expect((await client.listTools()).tools.map((t) => t.name)).not.toContain('status');
      const response = await post(writer.key, { jsonrpc: '2.0', id: 8, method: 'tools/call', params: { name: 'status', arguments: {} } }, transport.sessionId);
      expect(response.status).toBe(403);
      expect(response.headers.get('www-authenticate')).toContain('scope="admin"');
    });

    it('asks for a custom scope by name (tool:deploy)', async () => {
      const { transport } = await connect(writer.key);
      const response = await post(writer.key, { jsonrpc: '2.0', id: 9, method: 'tools/call', params: { name: 'deploy', arguments: {} } }, transport.sessionId);
      expect(response.status).toBe(403);
      expect(response.headers.get('www-authenticate')).toContain('scope="tool:deploy"');
      const { client } = await connect(deployer);
      expect((await client.callTool({ name: 'deploy', arguments: {} })).content).toEqual([{ type: 'text', text: 'deployed' }]);
    });

    it('gives operators the built-in tools, resource and prompt', async () => {
      const { client } = await connect(OPERATOR_KEY);
      const status = await client.callTool({ name: 'status', arguments: {} });
      expect(status.structuredContent).toMatchObject({ store: { ok: true }, version: expect.any(String) });
      const policy = await client.readResource({ uri: 'bulwark://security-policy' });
      const text = (policy.contents[0] as { text: string }).text;
      expect(JSON.parse(text)).toHaveProperty('mcp.sessions.idleMinutes', 30);
      const prompt = await client.getPrompt({ name: 'security-review', arguments: { focus: 'rate limits' } });
      expect(JSON.stringify(prompt.messages)).toContain('rate limits');
      const search = await client.callTool({ name: 'audit_search', arguments: { type: 'mcp.', limit: 5 } });
      expect((search.structuredContent as { events: unknown[] }).events.length).toBeGreaterThan(0);
    });

    it("keeps a tenant's admin key to its tenant: no deployment policy, no other tenant's audit events", async () => {
      await b.runtime.keyService.createTenant(OPERATOR, 'acme');
      const acmeAdmin = (await b.createKey(['admin'], { tenant: 'acme' })).key;
      const { client } = await connect(acmeAdmin);
      expect((await client.listResources()).resources).toEqual([]);
      expect((await client.listPrompts()).prompts).toEqual([]);
      await expect(client.readResource({ uri: 'bulwark://security-policy' })).rejects.toThrow(/not found/);
      const search = await client.callTool({ name: 'audit_search', arguments: { tenant: 'default', limit: 50 } });
      const events = (search.structuredContent as { events: Array<{ tenantId: string | null }> }).events;
      expect(events.every((e) => e.tenantId === 'acme')).toBe(true);
    });

    it('needs every scope that guards a URI: a broad template does not open a narrower one', async () => {
      const { client, transport } = await connect(reader);
      expect((await client.readResource({ uri: 'files://docs/readme' })).contents).toEqual([{ uri: 'files://docs/readme', text: 'contents of files://docs/readme' }]);
      const response = await post(reader, { jsonrpc: '2.0', id: 11, method: 'resources/read', params: { uri: 'files://secret/1' } }, transport.sessionId);
      expect(response.status).toBe(403);
      expect(response.headers.get('www-authenticate')).toContain('scope="tool:secrets"');
    });

    it('refuses a whole batch when one request in it is outside the scopes', async () => {
      const { transport } = await connect(reader);
      const batch = [
        { jsonrpc: '2.0', id: 21, method: 'tools/list' },
        { jsonrpc: '2.0', id: 22, method: 'tools/call', params: { name: 'echo', arguments: { text: 'sneaky' } } },
      ];
      const response = await post(reader, batch, transport.sessionId);
      expect(response.status).toBe(403);
      expect(await response.text()).not.toContain('sneaky');
    });

    it('answers tools named like Object.prototype properties, and clips long names in errors', async () => {
      const { transport } = await connect(reader);
      for (const name of ['constructor', '__proto__', 'toString']) {
        const response = await post(reader, { jsonrpc: '2.0', id: 31, method: 'tools/call', params: { name, arguments: {} } }, transport.sessionId);
        expect(response.status).toBe(200);
        expect(messagesOf(await readSse(response))).toContainEqual(expect.objectContaining({ id: 31, error: expect.objectContaining({ message: expect.stringContaining('not found') }) }));
      }
      const llmOnly = (await b.createKey(['llm'])).key;
      const longName = 'x'.repeat(100_000);
      const refused = await post(llmOnly, { jsonrpc: '2.0', id: 32, method: longName });
      expect(refused.status).toBe(403);
      expect((await refused.text()).length).toBeLessThan(2_000);
    });

    it('refuses to open a session for a credential that may use nothing here', async () => {
      const llmOnly = (await b.createKey(['llm'])).key;
      const response = await post(llmOnly, { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: PROTOCOL, capabilities: {}, clientInfo: { name: 'x', version: '1' } } });
      expect(response.status).toBe(403);
      expect(response.headers.get('www-authenticate')).toContain('scope="read"');
    });

    it('limits calls per tool per key with 429 and Retry-After', async () => {
      const { transport } = await connect(other.key);
      const statuses: number[] = [];
      let refused: Response | undefined;
      for (let i = 0; i < 7; i++) {
        const response = await post(other.key, { jsonrpc: '2.0', id: 100 + i, method: 'tools/call', params: { name: 'echo', arguments: { text: String(i) } } }, transport.sessionId);
        statuses.push(response.status);
        if (response.status === 429) refused ??= response;
        await response.body?.cancel();
      }
      expect(statuses.slice(0, 5)).toEqual([200, 200, 200, 200, 200]);
      expect(statuses.slice(5)).toEqual([429, 429]);
      expect(Number(refused?.headers.get('retry-after'))).toBeGreaterThan(0);
    });
  });

  describe('sessions', () => {
    it('issues 256-bit random session ids', async () => {
      const { transport } = await connect(writer.key);
      expect(transport.sessionId).toMatch(/^[A-Za-z0-9_-]{43}$/);
      const { transport: second } = await connect(writer.key);
      expect(second.sessionId).not.toBe(transport.sessionId);
    });

    it("answers another key's use or deletion of a session with 404, as if it did not exist, and audits it", async () => {
      const { transport } = await connect(writer.key);
      const sessionId = transport.sessionId as string;
      const unknown = await post(other.key, { jsonrpc: '2.0', id: 1, method: 'tools/list' }, 'A'.repeat(43));
      const stolen = await post(other.key, { jsonrpc: '2.0', id: 1, method: 'tools/list' }, sessionId);
      expect(stolen.status).toBe(404);
      expect(await stolen.json()).toEqual(await unknown.json());
      const deleted = await fetch(mcpUrl(), { method: 'DELETE', headers: { authorization: `Bearer ${other.key}`, 'mcp-session-id': sessionId } });
      expect(deleted.status).toBe(404);
      const violations = (await auditEvents('mcp.session_violation')).filter((e) => e.keyId === other.id);
      expect(violations.length).toBeGreaterThanOrEqual(2);
      expect(violations[0]).toMatchObject({ outcome: 'denied', details: { ownerKeyId: writer.id } });
      // The owner's session is untouched.
      expect((await post(writer.key, { jsonrpc: '2.0', id: 2, method: 'ping' }, sessionId)).status).toBe(200);
    });

    it('caps the sessions one key may have open', async () => {
      const capped = (await b.createKey(['read'])).key;
      for (let i = 0; i < 40; i++) await connect(capped);
      const response = await post(capped, { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: PROTOCOL, capabilities: {}, clientInfo: { name: 'x', version: '1' } } });
      expect(response.status).toBe(429);
      expect(response.headers.get('retry-after')).toBe('60');
      const refused = (await auditEvents('rate_limit.exceeded')).find((e) => (e.details as { limit: string }).limit === 'mcp_sessions');
      expect(refused).toMatchObject({ outcome: 'denied', path: '/mcp', ip: '127.0.0.1', details: { perKey: 40 } });
    });

    it('answers 503, without internals, when the store cannot take a new session', async () => {
      const db = b.runtime.database.db;
      await sql`alter table mcp_sessions rename to mcp_sessions_away`.execute(db);
      try {
        const response = await post(writer.key, { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: PROTOCOL, capabilities: {}, clientInfo: { name: 'x', version: '1' } } });
        expect(response.status).toBe(503);
        expect(response.headers.get('retry-after')).toBe('1');
        expect(await response.text()).not.toMatch(/relation|mcp_sessions/);
      } finally {
        await sql`alter table mcp_sessions_away rename to mcp_sessions`.execute(db);
      }
    });

    it('ends a session on DELETE; its id then gets 404', async () => {
      const { transport } = await connect(writer.key);
      const sessionId = transport.sessionId as string;
      await transport.terminateSession();
      const after = await post(writer.key, { jsonrpc: '2.0', id: 1, method: 'ping' }, sessionId);
      expect(after.status).toBe(404);
    });

    it('lets an operator list and terminate sessions through the admin API; the next request gets 404', async () => {
      const { transport } = await connect(other.key);
      const auth = { authorization: `Bearer ${admin}` };
      const listed = (await (await fetch(new URL(`/api/mcp/sessions?key=${other.id}`, b.adminUrl), { headers: auth })).json()) as { sessions: Array<{ ref: string; keyId: string; client: string }> };
      expect(listed.sessions.length).toBeGreaterThan(0);
      expect(listed.sessions[0]).toMatchObject({ keyId: other.id, client: 'bulwark-test/1.0.0' });
      expect(JSON.stringify(listed)).not.toContain(transport.sessionId);
      const refs = listed.sessions.map((s) => s.ref);
      for (const ref of refs) {
        const ended = await fetch(new URL(`/api/mcp/sessions/${ref}`, b.adminUrl), { method: 'DELETE', headers: auth });
        expect(ended.status).toBe(200);
      }
      expect((await post(other.key, { jsonrpc: '2.0', id: 1, method: 'ping' }, transport.sessionId)).status).toBe(404);
      const again = await fetch(new URL(`/api/mcp/sessions/${refs[0]}`, b.adminUrl), { method: 'DELETE', headers: auth });
      expect(again.status).toBe(404);
      expect((await auditEvents('mcp.session_terminated')).map((e) => (e.details as { ref: string }).ref)).toEqual(expect.arrayContaining(refs));
    });

    it('ends the sessions of a revoked key', async () => {
      const doomed = await b.createKey(['write']);
      await connect(doomed.key);
      expect(await b.runtime.mcp.listSessions(OPERATOR, { keyId: doomed.id })).toHaveLength(1);
      await b.runtime.keyService.revokeKey(OPERATOR, doomed.id);
      await vi.waitFor(async () => expect(await b.runtime.mcp.listSessions(OPERATOR, { keyId: doomed.id })).toEqual([]));
    });

    it('picks a stored session up after a restart (a second instance on the same store)', async () => {
      const { client, transport } = await connect(writer.key);
      await client.callTool({ name: 'echo', arguments: { text: 'before' } });
      // A fresh runtime and app on the same database: nothing in memory, everything in the store.
      const runtime = createRuntime({ config: b.runtime.config, logger: createLogger({ level: 'silent' }), database: b.runtime.database, flushIntervalMs: 20 });
      runtime.mcpRegistry.add(testSource);
      const server: ServerType = await new Promise((resolve) => {
        const s = serve({ fetch: createPublicApp(runtime).fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
      });
      try {
        const url = new URL('/mcp', `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
        const response = await fetch(url, {
          method: 'POST',
          headers: { accept: 'application/json, text/event-stream', 'content-type': 'application/json', 'mcp-protocol-version': PROTOCOL, authorization: `Bearer ${writer.key}`, 'mcp-session-id': transport.sessionId as string },
          body: JSON.stringify({ jsonrpc: '2.0', id: 5, method: 'tools/call', params: { name: 'echo', arguments: { text: 'after' } } }),
        });
        expect(response.status).toBe(200);
        expect(messagesOf(await readSse(response))).toContainEqual(expect.objectContaining({ id: 5, result: { content: [{ type: 'text', text: 'echo: after' }] } }));
        // Still bound to its key on the new instance.
        const foreign = await fetch(url, { method: 'POST', headers: { accept: 'application/json, text/event-stream', 'content-type': 'application/json', authorization: `Bearer ${other.key}`, 'mcp-session-id': transport.sessionId as string }, body: JSON.stringify({ jsonrpc: '2.0', id: 6, method: 'ping' }) });
        expect(foreign.status).toBe(404);
        // A DELETE on the instance that does not hold the session ends it everywhere.
        const { transport: elsewhere } = await connect(writer.key);
        const deleted = await fetch(url, { method: 'DELETE', headers: { authorization: `Bearer ${writer.key}`, 'mcp-session-id': elsewhere.sessionId as string, 'mcp-protocol-version': PROTOCOL } });
        expect(deleted.status).toBe(200);
        expect((await post(writer.key, { jsonrpc: '2.0', id: 7, method: 'ping' }, elsewhere.sessionId)).status).toBe(404);
        // Ended on the first instance, its open stream on this one closes at this one's next purge.
        const stream = await fetch(url, { headers: { accept: 'text/event-stream', authorization: `Bearer ${writer.key}`, 'mcp-session-id': transport.sessionId as string, 'mcp-protocol-version': PROTOCOL } });
        expect(stream.status).toBe(200);
        const ref = hashSessionId(transport.sessionId as string).slice(0, 16);
        expect((await b.runtime.mcp.terminateSession(OPERATOR, ref)).ok).toBe(true);
        await runtime.mcp.purge();
        await expect(stream.text()).resolves.not.toContain('"jsonrpc"');
      } finally {
        await runtime.mcp.close();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        await runtime.drain(2_000);
        await runtime.stop();
      }
    });
  });

  describe('resumability', () => {
    it('resumes a dropped stream from Last-Event-ID without loss or duplicates', async () => {
      const { transport } = await connect(writer.key);
      const sessionId = transport.sessionId as string;
      const call = { jsonrpc: '2.0', id: 42, method: 'tools/call', params: { name: 'countdown', arguments: { steps: 5, delayMs: 40 } } };
      const first = await readSse(await post(writer.key, call, sessionId), (events) => messagesOf(events).length >= 2);
      const lastId = first.at(-1)?.id as string;
      expect(lastId).toMatch(/^[A-Za-z0-9_-]{22,}$/);
      await sleep(400); // the tool finishes while nobody listens
      const resumed = await fetch(mcpUrl(), {
        headers: { accept: 'text/event-stream', authorization: `Bearer ${writer.key}`, 'mcp-session-id': sessionId, 'mcp-protocol-version': PROTOCOL, 'last-event-id': lastId },
      });
      expect(resumed.status).toBe(200);
      const rest = await readSse(resumed, (events) => messagesOf(events).some((m) => m.id === 42));
      const all = [...messagesOf(first), ...messagesOf(rest)];
      const logLines = all.filter((m) => m.method === 'notifications/message').map((m) => (m.params as { data: string }).data);
      expect(logLines).toEqual([5, 4, 3, 2, 1].map((i) => `${SECRET_WORD} ${i}`));
      expect(all.filter((m) => m.id === 42)).toHaveLength(1);
      // Another key cannot replay the stream, even with the session id and the event id.
      const foreign = await fetch(mcpUrl(), { headers: { accept: 'text/event-stream', authorization: `Bearer ${other.key}`, 'mcp-session-id': sessionId, 'mcp-protocol-version': PROTOCOL, 'last-event-id': lastId } });
      expect(foreign.status).toBe(404);
    });

    it('stores events encrypted, and refuses and audits a tampered one', async () => {
      const { transport } = await connect(writer.key);
      const sessionId = transport.sessionId as string;
      const call = { jsonrpc: '2.0', id: 43, method: 'tools/call', params: { name: 'countdown', arguments: { steps: 3, delayMs: 40 } } };
      const first = await readSse(await post(writer.key, call, sessionId), (events) => messagesOf(events).length >= 1);
      const lastId = first.at(-1)?.id as string;
      await sleep(300);
      const db = b.runtime.database.db;
      const rows = await db.selectFrom('mcp_events').select(['id', 'payload']).execute();
      expect(rows.length).toBeGreaterThan(0);
      expect(rows.some((r) => r.payload.includes(SECRET_WORD) || r.payload.includes('liftoff'))).toBe(false);
      // Flip one byte of every later event of this stream.
      const later = await db.selectFrom('mcp_events').select(['id', 'payload']).where('seq', '>', db.selectFrom('mcp_events').select('seq').where('id', '=', lastId)).execute();
      expect(later.length).toBeGreaterThan(0);
      for (const row of later) {
        const flipped = row.payload.slice(0, -3) + (row.payload.at(-3) === 'A' ? 'B' : 'A') + row.payload.slice(-2);
        await sql`update mcp_events set payload = ${flipped} where id = ${row.id}`.execute(db);
      }
      const resumed = await fetch(mcpUrl(), { headers: { accept: 'text/event-stream', authorization: `Bearer ${writer.key}`, 'mcp-session-id': sessionId, 'mcp-protocol-version': PROTOCOL, 'last-event-id': lastId } });
      expect(resumed.status).toBeGreaterThanOrEqual(400);
      expect(await resumed.text()).not.toContain(SECRET_WORD);
      const tampered = await auditEvents('mcp.event_tampered');
      expect(tampered.length).toBeGreaterThan(0);
      expect(tampered.at(-1)).toMatchObject({ outcome: 'failure', details: { reason: 'authentication_failed' } });
    });
  });
});
