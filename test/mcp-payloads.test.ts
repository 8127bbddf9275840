/**
 * Tool-call payloads in the audit log: kept only with body storage on, and then only masked and
 * encrypted; readable by operators (`audit tail --payloads`, the admin API), by nobody else,
 * and not at all once moved to another event.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StoredAuditEvent } from '../src/audit/log.js';
import { openToolPayloads } from '../src/mcp/payloads.js';
import type { McpSource } from '../src/mcp/registry.js';
import { type TestBulwark, startTestBulwark } from './helpers/runtime.js';

const CANARY = 'payload-canary-51c9';
const UPSTREAM_SECRET = `sk-ant-api03-${'x'.repeat(40)}`;

const echoSource: McpSource = {
  name: 'test',
  tools: () => [
    {
      scope: 'write',
      source: 'test',
      definition: { name: 'echo', inputSchema: { type: 'object' } },
      call: async (args) => ({ content: [{ type: 'text', text: `echo: ${String(args.text)}` }] }),
    },
  ],
  resources: () => [],
  resourceTemplates: () => [],
  prompts: () => [],
};

describe('MCP tool-call payloads with body storage on', () => {
  let b: TestBulwark;
  let events: StoredAuditEvent[];

  beforeAll(async () => {
    b = await startTestBulwark('postgres', { BULWARK_STORE_BODIES: 'true' }, { listen: true });
    b.runtime.mcpRegistry.add(echoSource);
    const writer = (await b.createKey(['write'])).key;
    const client = new Client({ name: 'payload-test', version: '1' });
    await client.connect(new StreamableHTTPClientTransport(new URL('/mcp', b.publicUrl), { requestInit: { headers: { authorization: `Bearer ${writer}` } } }));
    await client.callTool({ name: 'echo', arguments: { text: `${CANARY} ${UPSTREAM_SECRET}` } });
    await client.close();
    await b.runtime.flush();
    events = await b.runtime.auditReader.tail({ type: 'mcp.tool_call', limit: 10 });
  });

  afterAll(async () => {
    await b?.close();
  });

  it('stores the payload only encrypted', () => {
    expect(events).toHaveLength(1);
    const details = events[0]?.details as { payload: string; callId: string };
    expect(details.payload).toMatch(/^v1\./);
    expect(details.callId).toMatch(/^[0-9a-f-]{36}$/);
    expect(JSON.stringify(events)).not.toContain(CANARY);
  });

  it('opens it for an operator through the admin API, with secrets masked', async () => {
    const response = await fetch(new URL('/api/audit/events?type=mcp.tool_call&payloads=true', b.adminUrl), { headers: { authorization: `Bearer ${b.runtime.adminToken}` } });
    expect(response.status).toBe(200);
    const [event] = ((await response.json()) as { events: StoredAuditEvent[] }).events;
    const payload = (event?.details as { payload: { arguments: { text: string }; result: { content: Array<{ text: string }> } } }).payload;
    expect(payload.arguments.text).toContain(CANARY);
    expect(payload.result.content[0]?.text).toContain(CANARY);
    expect(JSON.stringify(payload)).not.toContain(UPSTREAM_SECRET);
  });

  it("refuses an admin-scoped key, which manages only its tenant's keys", async () => {
    const admin = (await b.createKey(['admin'])).key;
    const response = await fetch(new URL('/api/audit/events?payloads=true', b.adminUrl), { headers: { authorization: `Bearer ${admin}` } });
    expect(response.status).toBe(403);
  });

  it('does not open a payload moved to another event', () => {
    const [event] = events as [StoredAuditEvent];
    const moved = { ...event, details: { ...event.details, callId: '00000000-0000-4000-8000-000000000000' } };
    expect(openToolPayloads(b.runtime.keyRing, [moved])[0]?.details).toMatchObject({ payload: { unreadable: 'authentication_failed' } });
  });
});
