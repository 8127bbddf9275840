/**
 * Upstream MCP servers through `/mcp`: the fixture upstream demands a credential only Bulwark
 * holds (a static header, or an OAuth client-credentials token from a local token endpoint);
 * its tools appear namespaced and scoped, calls and relayed requests work, the client's key
 * never reaches the upstream and the upstream's credential never reaches the client, and an
 * upstream that goes away gives a prompt JSON-RPC error.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CreateMessageRequestSchema, ResourceUpdatedNotificationSchema, ToolListChangedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FixtureUpstream, startFixtureUpstream } from './fixtures/mcp-upstream.js';
import { type TestBulwark, startTestBulwark } from './helpers/runtime.js';

const HEADER_SECRET = 'upstream-header-secret-0b1c';
const OAUTH_SECRET = 'upstream-client-secret-9d2e';
const OAUTH_TOKEN = 'upstream-access-token-4a7f';
/** The bootstrap key: an operator, who may read the deployment's policy. */
const OPERATOR_KEY = `bwk_test_${'o'.repeat(40)}`;

/** A minimal RFC 6749 §4.4 token endpoint: client_secret_basic in, a bearer token out. */
async function startTokenEndpoint(): Promise<{ url: string; requests: URLSearchParams[]; close(): Promise<void> }> {
  const requests: URLSearchParams[] = [];
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk: Buffer) => (body += chunk.toString()));
    req.on('end', () => {
      const form = new URLSearchParams(body);
      requests.push(form);
      const expected = `Basic ${Buffer.from(`bulwark:${OAUTH_SECRET}`).toString('base64')}`;
      res.setHeader('content-type', 'application/json');
      if (req.headers.authorization !== expected || form.get('grant_type') !== 'client_credentials') {
        res.statusCode = 401;
        return res.end(JSON.stringify({ error: 'invalid_client' }));
      }
      res.end(JSON.stringify({ access_token: OAUTH_TOKEN, token_type: 'Bearer', expires_in: 3600 }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`,
    requests,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe('MCP federation', () => {
  let headerUpstream: FixtureUpstream;
  let oauthUpstream: FixtureUpstream;
  let doomedUpstream: FixtureUpstream;
  let tokens: Awaited<ReturnType<typeof startTokenEndpoint>>;
  let b: TestBulwark;
  let writer: string;
  let reader: string;
  const clients: Client[] = [];

  beforeAll(async () => {
    tokens = await startTokenEndpoint();
    headerUpstream = await startFixtureUpstream({ requireHeader: { name: 'authorization', value: `Bearer ${HEADER_SECRET}` } });
    oauthUpstream = await startFixtureUpstream({ requireHeader: { name: 'authorization', value: `Bearer ${OAUTH_TOKEN}` } });
    doomedUpstream = await startFixtureUpstream();
    b = await startTestBulwark(
      'postgres',
      { BULWARK_RATE_LIMIT_WRITE: '1000', BULWARK_RATE_LIMIT_READ: '1000', BULWARK_API_KEY: OPERATOR_KEY },
      {
        listen: true,
        file: {
          mcp: {
            scopes: { 'fixture__test_error_handling': 'tool:errors' },
            upstreams: [
              { name: 'fixture', url: headerUpstream.url, headers: { authorization: `Bearer ${HEADER_SECRET}` } },
              { name: 'viaoauth', url: oauthUpstream.url, oauth: { tokenUrl: tokens.url, clientId: 'bulwark', clientSecret: OAUTH_SECRET, resource: oauthUpstream.url } },
              { name: 'doomed', url: doomedUpstream.url, timeoutMs: 2000 },
            ],
          },
        },
      },
    );
    writer = (await b.createKey(['write'])).key;
    reader = (await b.createKey(['read'])).key;
  });

  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
    await b?.close();
    await Promise.all([headerUpstream?.close(), oauthUpstream?.close(), doomedUpstream?.close().catch(() => {}), tokens?.close()]);
  });

  async function connect(key: string, capabilities: Record<string, unknown> = {}): Promise<Client> {
    const client = new Client({ name: 'federation-test', version: '1.0.0' }, { capabilities });
    await client.connect(new StreamableHTTPClientTransport(new URL('/mcp', b.publicUrl), { requestInit: { headers: { authorization: `Bearer ${key}` } } }));
    clients.push(client);
    return client;
  }

  it("lists upstream tools namespaced, under the upstream's scope", async () => {
    const writerTools = (await (await connect(writer)).listTools()).tools.map((t) => t.name);
    expect(writerTools).toEqual(expect.arrayContaining(['fixture__test_simple_text', 'viaoauth__test_simple_text', 'doomed__test_simple_text']));
    // A scope override by listed name takes the tool out of a plain write key's view.
    expect(writerTools).not.toContain('fixture__test_error_handling');
    // Upstream tools default to `write`: a read key does not see them.
    const readerTools = (await (await connect(reader)).listTools()).tools.map((t) => t.name);
    expect(readerTools.some((name) => name.includes('__'))).toBe(false);
    // Resources and prompts need `read`.
    const resources = (await (await connect(reader)).listResources()).resources.map((r) => r.uri);
    expect(resources).toContain('test://static-text');
    const prompts = (await (await connect(reader)).listPrompts()).prompts.map((p) => p.name);
    expect(prompts).toContain('fixture__test_simple_prompt');
  });

  it('forwards a call with the credential Bulwark holds, never the client key', async () => {
    const before = headerUpstream.received.headers.length;
    const client = await connect(writer);
    const result = await client.callTool({ name: 'fixture__test_simple_text', arguments: {} });
    expect(result.isError).toBeFalsy();
    expect(result.content).toEqual([{ type: 'text', text: expect.any(String) }]);
    const seen = headerUpstream.received.headers.slice(before);
    expect(seen.length).toBeGreaterThan(0);
    for (const headers of seen) {
      expect(headers.authorization).toBe(`Bearer ${HEADER_SECRET}`);
      expect(JSON.stringify(headers)).not.toContain(writer);
    }
  });

  it('gets its own upstream token by OAuth client credentials, with the RFC 8707 resource', async () => {
    const client = await connect(writer);
    const result = await client.callTool({ name: 'viaoauth__test_simple_text', arguments: {} });
    expect(result.isError).toBeFalsy();
    expect(tokens.requests.length).toBeGreaterThan(0);
    expect(tokens.requests[0]?.get('resource')).toBe(oauthUpstream.url);
    expect(oauthUpstream.received.headers.at(-1)?.authorization).toBe(`Bearer ${OAUTH_TOKEN}`);
  });

  it("never shows the upstream's credentials to clients", async () => {
    const client = await connect(OPERATOR_KEY);
    const policy = await client.readResource({ uri: 'bulwark://security-policy' });
    const everything = JSON.stringify([policy, await client.listTools(), await client.listResources(), await client.callTool({ name: 'fixture__test_simple_text', arguments: {} })]);
    for (const secret of [HEADER_SECRET, OAUTH_SECRET, OAUTH_TOKEN]) expect(everything).not.toContain(secret);
    expect(everything).toContain('fixture');
  });

  it("relays the upstream's sampling request to the calling client, and the answer back", async () => {
    const client = await connect(writer, { sampling: {} });
    const prompts: string[] = [];
    client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
      const content = request.params.messages[0]?.content as { text?: string };
      prompts.push(content.text ?? '');
      return { role: 'assistant', content: { type: 'text', text: 'relayed answer' }, model: 'test-model' };
    });
    const result = await client.callTool({ name: 'fixture__test_sampling', arguments: { prompt: 'what is up' } });
    expect(prompts).toEqual(['what is up']);
    expect(result.content).toEqual([{ type: 'text', text: 'LLM response: relayed answer' }]);
  });

  it("passes the upstream's resource updates on to the subscribed client", async () => {
    const client = await connect(reader);
    const updated: string[] = [];
    client.setNotificationHandler(ResourceUpdatedNotificationSchema, (notification) => {
      updated.push(notification.params.uri);
    });
    await client.subscribeResource({ uri: 'test://watched-resource' });
    await expect.poll(() => updated, { timeout: 5_000 }).toContain('test://watched-resource');
  });

  it("passes the upstream's progress on under the client's own token", async () => {
    const client = await connect(writer);
    const progress: number[] = [];
    await client.callTool({ name: 'fixture__test_tool_with_progress', arguments: {} }, undefined, { onprogress: (p) => progress.push(p.progress) });
    expect(progress).toEqual([0, 50, 100]);
  });

  it("cancels one call without disturbing the session's others", async () => {
    const client = await connect(writer);
    const abort = new AbortController();
    const cancelled = client.callTool({ name: 'fixture__test_tool_with_progress', arguments: {} }, undefined, { signal: abort.signal, onprogress: () => {} });
    const kept = client.callTool({ name: 'fixture__test_tool_with_progress', arguments: {} }, undefined, { onprogress: () => {} });
    setTimeout(() => abort.abort(), 20);
    await expect(cancelled).rejects.toThrow();
    expect((await kept).isError).toBeFalsy();
    // The session's upstream connection is still the same good one.
    expect((await client.callTool({ name: 'fixture__test_simple_text', arguments: {} })).isError).toBeFalsy();
  });

  it("lists an upstream's new tool after its list_changed, and tells the clients", async () => {
    const client = await connect(writer);
    let told = 0;
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
      told += 1;
    });
    await headerUpstream.addTool('test_added_later', 'added later');
    await expect.poll(async () => (await client.listTools()).tools.map((t) => t.name), { timeout: 5_000 }).toContain('fixture__test_added_later');
    expect((await client.callTool({ name: 'fixture__test_added_later', arguments: {} })).content).toEqual([{ type: 'text', text: 'added later' }]);
    await expect.poll(() => told, { timeout: 5_000 }).toBeGreaterThan(0);
  });

  it('audits upstream calls with the upstream as source', async () => {
    await b.runtime.flush();
    const calls = await b.runtime.auditReader.tail({ type: 'mcp.tool_call', limit: 100 });
    expect(calls.find((e) => (e.details as { tool: string }).tool === 'fixture__test_simple_text')).toMatchObject({ outcome: 'success', details: { source: 'fixture', scope: 'write' } });
  });

  it('answers a call to an upstream that went away with a prompt JSON-RPC error, and drops its tools', async () => {
    const client = await connect(writer);
    expect((await client.callTool({ name: 'doomed__test_simple_text', arguments: {} })).isError).toBeFalsy();
    await doomedUpstream.close();
    const started = Date.now();
    await expect(client.callTool({ name: 'doomed__test_simple_text', arguments: {} })).rejects.toThrow(/Upstream doomed (is unavailable|did not answer)/);
    expect(Date.now() - started).toBeLessThan(5_000);
    await expect
      .poll(async () => (await (await connect(writer)).listTools()).tools.some((t) => t.name.startsWith('doomed__')), { timeout: 10_000 })
      .toBe(false);
  });
});
