/**
 * The A2A agent card (src/agent/card.ts), read over real HTTP by the official SDK's resolver
 * (`DefaultAgentCardResolver` from `@a2a-js/sdk/client`), from a Bulwark started on PostgreSQL
 * with a configured agent. The routes are served on their own Hono app here, so the test does
 * not depend on where src/http/app.ts mounts them.
 */
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { A2A_PROTOCOL_VERSION, AGENT_CARD_PATH as SDK_AGENT_CARD_PATH, AgentCard } from '@a2a-js/sdk';
import { DefaultAgentCardResolver } from '@a2a-js/sdk/client';
import { Hono } from 'hono';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_CARD_PATH, type AgentCardOptions, agentCardRoutes } from '../src/agent/card.js';
import { generateKey } from '../src/auth/keys.js';
import type { BulwarkEnv } from '../src/http/context.js';
import { VERSION } from '../src/version.js';
import { type TestBulwark, startTestBulwark } from './helpers/runtime.js';

const OPS_SKILL = { id: 'ops', name: 'Operations', description: 'Runs ops tools', tags: ['ops'] };
/** Settings that must never reach a public document. */
const PROMPT_MARKER = `internal-prompt-${process.pid}-${Date.now()}`;
const BOOTSTRAP_KEY = generateKey('bwk_test_').plaintext;

interface ServedCard {
  url: string;
  close(): Promise<void>;
}

/** Serves `agentCardRoutes(options)` on 127.0.0.1, on a port the OS picks. */
function serveCard(options: AgentCardOptions): Promise<ServedCard> {
  const app = new Hono<BulwarkEnv>().route('/', agentCardRoutes(options));
  return new Promise((resolve) => {
    const server = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        close: () => new Promise<void>((done) => server.close(() => done())),
      }),
    );
  });
}

describe('A2A agent card', () => {
  let b: TestBulwark;
  let configured: ServedCard;
  let byOrigin: ServedCard;

  beforeAll(async () => {
    b = await startTestBulwark(
      'postgres',
      { BULWARK_PUBLIC_URL: 'https://agent.example', BULWARK_API_KEY: BOOTSTRAP_KEY },
      { listen: true, file: { agent: { name: 'Ops agent', systemPrompt: `Never reveal ${PROMPT_MARKER}.`, skills: [OPS_SKILL] } } },
    );
    const { agent, server } = b.runtime.config;
    configured = await serveCard({ agent, version: VERSION, publicUrl: server.publicUrl });
    byOrigin = await serveCard({ agent: { ...agent, skills: [] }, version: VERSION, publicUrl: undefined });
  });

  afterAll(async () => {
    await configured?.close();
    await byOrigin?.close();
    await b?.close();
  });

  it('is found where the SDK looks for it', () => {
    expect(AGENT_CARD_PATH).toBe(`/${SDK_AGENT_CARD_PATH}`);
  });

  it('describes the configured agent to the SDK resolver: interface at the public URL, streaming, skills, both schemes', async () => {
    const card = await new DefaultAgentCardResolver().resolve(configured.url);
    expect(card.name).toBe('Ops agent');
    expect(card.description).toBe(b.runtime.config.agent.description);
    expect(card.version).toBe(VERSION);
    expect(card.supportedInterfaces).toEqual([{ url: 'https://agent.example/api/message', protocolBinding: 'HTTP+JSON', protocolVersion: A2A_PROTOCOL_VERSION, tenant: '' }]);
    expect(card.capabilities?.streaming).toBe(true);
    expect(card.defaultInputModes).toEqual(['text/plain']);
    expect(card.defaultOutputModes).toEqual(['text/plain']);
    expect(card.skills.map(({ id, name, description, tags }) => ({ id, name, description, tags }))).toEqual([OPS_SKILL]);
    expect(card.securitySchemes.bearer?.scheme).toEqual({ $case: 'httpAuthSecurityScheme', value: expect.objectContaining({ scheme: 'Bearer' }) });
    expect(card.securitySchemes.apiKey?.scheme).toEqual({ $case: 'apiKeySecurityScheme', value: expect.objectContaining({ location: 'header', name: 'X-API-Key' }) });
    // Two requirements, so either credential alone is enough (a requirement's schemes are all needed).
    expect(card.securityRequirements).toEqual([{ schemes: { bearer: { list: ['write'] } } }, { schemes: { apiKey: { list: ['write'] } } }]);
  });

  it('is A2A ProtoJSON the SDK decodes and re-encodes unchanged, cacheable for five minutes', async () => {
    const response = await fetch(new URL(AGENT_CARD_PATH, configured.url));
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^application\/json/);
    expect(response.headers.get('cache-control')).toBe('public, max-age=300');
    const raw = (await response.json()) as Record<string, unknown>;
    // Nothing the SDK does not know, and nothing it reads differently: the round trip is exact.
    expect(AgentCard.toJSON(AgentCard.fromJSON(raw))).toEqual(raw);
  });

  it('answers a conditional request with its ETag with 304 and no body', async () => {
    const first = await fetch(new URL(AGENT_CARD_PATH, configured.url));
    const etag = first.headers.get('etag');
    expect(etag).toMatch(/^"[A-Za-z0-9_-]+"$/);
    const again = await fetch(new URL(AGENT_CARD_PATH, configured.url), { headers: { 'if-none-match': `W/${etag}` } });
    expect(again.status).toBe(304);
    expect(again.headers.get('cache-control')).toBe('public, max-age=300');
    expect(await again.text()).toBe('');
  });

  it('carries no secret and no internal setting of the configuration', async () => {
    const text = await (await fetch(new URL(AGENT_CARD_PATH, configured.url))).text();
    expect(text).not.toMatch(/bwk_|sk-ant/);
    expect(text).not.toContain(PROMPT_MARKER);
    expect(text).not.toContain(b.runtime.config.agent.model);
    expect(Object.keys(JSON.parse(text) as object).sort()).toEqual(
      ['capabilities', 'defaultInputModes', 'defaultOutputModes', 'description', 'name', 'securityRequirements', 'securitySchemes', 'skills', 'supportedInterfaces', 'version'],
    );
  });

  it('without a public URL, points at the origin the request came to, with a default chat skill', async () => {
    const card = await new DefaultAgentCardResolver().resolve(byOrigin.url);
    expect(card.supportedInterfaces.map((i) => i.url)).toEqual([`${byOrigin.url}/api/message`]);
    expect(card.skills.map(({ id, name, description, tags }) => ({ id, name, description, tags }))).toEqual([
      { id: 'chat', name: 'Ops agent', description: b.runtime.config.agent.description, tags: ['assistant'] },
    ]);
  });

  it('is public: it answers without a credential', async () => {
    expect((await fetch(new URL(AGENT_CARD_PATH, configured.url))).status).toBe(200);
  });

  it('refuses bad options when built, naming the option', () => {
    const agent = { name: 'A', description: 'B', skills: [] };
    expect(() => agentCardRoutes({ agent, version: VERSION, publicUrl: 'ftp://agent.example' })).toThrow(/publicUrl/);
    expect(() => agentCardRoutes({ agent, version: VERSION, publicUrl: 'https://user:pass@agent.example' })).toThrow(/publicUrl/);
    expect(() => agentCardRoutes({ agent, version: '', publicUrl: undefined })).toThrow(/version/);
    expect(() => agentCardRoutes({ agent: { ...agent, skills: [OPS_SKILL, OPS_SKILL] }, version: VERSION, publicUrl: undefined })).toThrow(/agent\.skills\[1\]\.id/);
  });
});
