/**
 * The fixture upstream MCP server itself, driven by the official SDK client and by raw HTTP where
 * the wire matters: its tools, the upstream credential it can demand, the headers it records, its
 * DNS rebinding guard, sessions, and SEP-1699 resumability. Other suites trust it as "an MCP
 * server", and the conformance baseline leans on the resumability test below.
 */
import { request as httpRequest } from 'node:http';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { afterEach, describe, expect, it } from 'vitest';
import { FIXTURE_TOOL_NAMES, type FixtureUpstream, type FixtureUpstreamOptions, startFixtureUpstream } from './fixtures/mcp-upstream.js';

const CREDENTIAL = { name: 'x-upstream-key', value: 'fixture-upstream-credential' };
const PROTOCOL_VERSION = '2025-11-25';

const started: FixtureUpstream[] = [];
const clients: Client[] = [];

afterEach(async () => {
  await Promise.allSettled(clients.splice(0).map((client) => client.close()));
  await Promise.allSettled(started.splice(0).map((upstream) => upstream.close()));
});

async function start(options?: FixtureUpstreamOptions): Promise<FixtureUpstream> {
  const upstream = await startFixtureUpstream(options);
  started.push(upstream);
  return upstream;
}

async function connect(url: string, headers: Record<string, string> = {}): Promise<Client> {
  const client = new Client({ name: 'fixture-test', version: '1.0.0' });
  clients.push(client);
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } }));
  return client;
}

const jsonHeaders = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };

function rpc(id: number | undefined, method: string, params?: unknown): string {
  return JSON.stringify({ jsonrpc: '2.0', ...(id === undefined ? {} : { id }), method, ...(params === undefined ? {} : { params }) });
}

/** Opens a session by hand (initialize + initialized) and returns the headers later requests need. */
async function openRawSession(url: string): Promise<Record<string, string>> {
  const init = await fetch(url, {
    method: 'POST',
    headers: jsonHeaders,
    body: rpc(0, 'initialize', { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: 'raw', version: '1' } }),
  });
  await init.text();
  const sessionId = init.headers.get('mcp-session-id');
  expect(sessionId).toBeTruthy();
  const headers = { ...jsonHeaders, 'mcp-session-id': sessionId as string, 'mcp-protocol-version': PROTOCOL_VERSION };
  const initialized = await fetch(url, { method: 'POST', headers, body: rpc(undefined, 'notifications/initialized') });
  expect(initialized.status).toBe(202);
  return headers;
}

interface SseEvent {
  id?: string;
  retry?: string;
  data: string;
}

function parseSse(text: string): SseEvent[] {
  return text
    .split('\n\n')
    .filter((block) => block.trim() !== '')
    .map((block) => {
      const event: SseEvent = { data: '' };
      for (const line of block.split('\n')) {
        const [field, ...rest] = line.split(':');
        const value = rest.join(':').replace(/^ /, '');
        if (field === 'id') event.id = value;
        else if (field === 'retry') event.retry = value;
        else if (field === 'data') event.data += value;
      }
      return event;
    });
}

/** POST with a forged Host header, which fetch does not allow. */
function postWithHost(url: string, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', headers: { ...jsonHeaders, host } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end(rpc(1, 'initialize', { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: 'rebind', version: '1' } }));
  });
}

describe('fixture upstream MCP server', () => {
  it('lists every fixture tool with a description and an input schema, 2020-12 keywords intact', async () => {
    const upstream = await start();
    const client = await connect(upstream.url);
    const { tools } = await client.listTools();
    expect(tools.map((tool) => tool.name).sort()).toEqual([...FIXTURE_TOOL_NAMES].sort());
    for (const tool of tools) {
      expect(tool.description).toBeTruthy();
      expect(tool.inputSchema.type).toBe('object');
    }
    const schema = tools.find((tool) => tool.name === 'json_schema_2020_12_tool')?.inputSchema;
    expect(schema).toMatchObject({ $schema: 'https://json-schema.org/draft/2020-12/schema', $defs: { address: { type: 'object' } }, additionalProperties: false });
  });

  it('calls a tool and returns its content', async () => {
    const upstream = await start();
    const client = await connect(upstream.url);
    const result = await client.callTool({ name: 'test_simple_text' });
    expect(result.isError).toBeFalsy();
    expect(result.content).toEqual([{ type: 'text', text: 'This is a simple text response for testing.' }]);
  });

  it('returns arguments that break the input schema as a tool error, not a protocol error', async () => {
    const upstream = await start();
    const client = await connect(upstream.url);
    const result = await client.callTool({ name: 'json_schema_2020_12_tool', arguments: { name: 'x', unexpected: true } });
    expect(result.isError).toBe(true);
    expect(JSON.stringify(result.content)).toContain('Input validation error');
  });

  it('refuses a client without the upstream credential with 401', async () => {
    const upstream = await start({ requireHeader: CREDENTIAL });
    await expect(connect(upstream.url)).rejects.toMatchObject({ code: 401 });
    await expect(connect(upstream.url, { [CREDENTIAL.name]: `${CREDENTIAL.value}-wrong` })).rejects.toMatchObject({ code: 401 });
    const raw = await fetch(upstream.url, { method: 'POST', headers: jsonHeaders, body: rpc(1, 'ping') });
    expect(raw.status).toBe(401);
    expect(await raw.text()).not.toContain(CREDENTIAL.value);
  });

  it('accepts a client that sends the upstream credential', async () => {
    const upstream = await start({ requireHeader: CREDENTIAL });
    const client = await connect(upstream.url, { [CREDENTIAL.name]: CREDENTIAL.value });
    const result = await client.callTool({ name: 'test_simple_text' });
    expect(result.content).toEqual([{ type: 'text', text: 'This is a simple text response for testing.' }]);
  });

  it('records the headers of every request it receives, refused ones included', async () => {
    const upstream = await start({ requireHeader: CREDENTIAL });
    await expect(connect(upstream.url, { 'x-client-marker': 'refused' })).rejects.toMatchObject({ code: 401 });
    await connect(upstream.url, { [CREDENTIAL.name]: CREDENTIAL.value, 'x-client-marker': 'accepted' });
    const markers = upstream.received.headers.map((headers) => headers['x-client-marker']);
    expect(markers[0]).toBe('refused');
    expect(markers).toContain('accepted');
    expect(upstream.received.headers.filter((headers) => headers[CREDENTIAL.name] === CREDENTIAL.value).length).toBeGreaterThan(0);
  });

  it('refuses a non-loopback Host or Origin with 403 (DNS rebinding) and accepts loopback ones', async () => {
    const upstream = await start();
    const { port } = new URL(upstream.url);
    expect(await postWithHost(upstream.url, 'evil.example.com')).toBe(403);
    expect(await postWithHost(upstream.url, `evil.example.com:${port}`)).toBe(403);
    expect(await postWithHost(upstream.url, `localhost:${port}`)).toBe(200);
    const forbiddenOrigin = await fetch(upstream.url, { method: 'POST', headers: { ...jsonHeaders, origin: 'http://evil.example.com' }, body: rpc(1, 'ping') });
    expect(forbiddenOrigin.status).toBe(403);
  });

  it('answers 404 for an unknown or terminated session and 400 for a request without one', async () => {
    const upstream = await start();
    const headers = await openRawSession(upstream.url);
    const unknown = await fetch(upstream.url, { method: 'POST', headers: { ...headers, 'mcp-session-id': 'no-such-session' }, body: rpc(1, 'ping') });
    expect(unknown.status).toBe(404);
    const missing = await fetch(upstream.url, { method: 'POST', headers: jsonHeaders, body: rpc(1, 'ping') });
    expect(missing.status).toBe(400);
    expect((await fetch(upstream.url, { method: 'DELETE', headers })).status).toBe(200);
    expect((await fetch(upstream.url, { method: 'POST', headers, body: rpc(2, 'ping') })).status).toBe(404);
  });

  it('primes SSE streams with an id and retry, and replays a result after a Last-Event-ID resume (SEP-1699)', async () => {
    const upstream = await start();
    const headers = await openRawSession(upstream.url);
    const call = await fetch(upstream.url, { method: 'POST', headers, body: rpc(7, 'tools/call', { name: 'test_reconnection', arguments: {} }) });
    expect(call.headers.get('content-type')).toContain('text/event-stream');
    // test_reconnection closes its stream before answering: only the priming event arrives.
    const primed = parseSse(await call.text());
    expect(primed).toHaveLength(1);
    expect(primed[0]).toMatchObject({ data: '', retry: expect.stringMatching(/^\d+$/) });
    const lastEventId = primed[0]?.id;
    expect(lastEventId).toBeTruthy();

    const resumed = await fetch(upstream.url, { headers: { ...headers, accept: 'text/event-stream', 'last-event-id': lastEventId as string } });
    expect(resumed.status).toBe(200);
    const reader = (resumed.body as ReadableStream<Uint8Array>).pipeThrough(new TextDecoderStream()).getReader();
    let text = '';
    while (!text.includes('\n\n')) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    await reader.cancel();
    const [replayed] = parseSse(text);
    expect(JSON.parse(replayed?.data ?? 'null')).toMatchObject({ id: 7, result: { content: [{ type: 'text', text: 'Reconnection test completed successfully' }] } });
  });
});
