/**
 * The A2A Agent Card of Bulwark's own agent, at `GET /.well-known/agent-card.json` (A2A §8.2),
 * public like every discovery document: it describes, it grants nothing.
 *
 * Schema: A2A 1.0, the version `@a2a-js/sdk` 1.3.0 implements (its `A2A_PROTOCOL_VERSION` is
 * `1.0`; a2a.proto `AgentCard`). 1.0 dropped 0.3's `url`, `preferredTransport`,
 * `additionalInterfaces`, top-level `protocolVersion` and `security`; their places are taken by
 * `supportedInterfaces[]` (`url`, `protocolBinding`, `protocolVersion`) and
 * `securityRequirements[]`, so the card carries exactly the fields the issue names, by name.
 *
 * Wire form: ProtoJSON (A2A §5.5, ADR-001), the form the SDK's resolver decodes with
 * `AgentCard.fromJSON`. It differs from the SDK's in-memory `AgentCard` type in two ways, which
 * is why the types below are `Pick`s of the SDK's types rather than the type itself: a proto
 * `oneof` is written as the one field that is set (`{ "httpAuthSecurityScheme": {…} }`, not the
 * SDK's `{ scheme: { $case, value } }`), and fields left at their default (`tenant: ""`,
 * `examples: []`, `signatures: []`) are left out. The SDK is a development dependency, so only
 * its types are imported here; test/agent-card.test.ts proves the served JSON decodes and
 * re-encodes through the SDK unchanged.
 *
 * Choices:
 * - One interface: the public base URL + `/api/message`, binding `HTTP+JSON`, because that
 *   route is plain JSON over HTTP (SSE with `stream: true`). It is Bulwark's own message API,
 *   not A2A §11's REST binding (`POST {url}/message:send`); the card describes where to call,
 *   not a claim that an A2A client's transport can speak to it unchanged.
 * - Two security schemes, either one sufficing (A2A's requirements are OR'd; the schemes inside
 *   one requirement are AND'd): `Authorization: Bearer <key>` and `X-API-Key: <key>`, each
 *   naming the `write` scope `/api/message` needs.
 * - Skills: the configured ones (id, name, description, tags only); with none configured, one
 *   `chat` skill made from the agent's name and description.
 * - Only named fields are copied out of the agent's config: its prompt, model and anything
 *   added to it later stay out of a public document.
 */
import { createHash } from 'node:crypto';
import type { APIKeySecurityScheme, AgentCapabilities, AgentCard, AgentInterface, AgentSkill, HTTPAuthSecurityScheme, SecurityRequirement } from '@a2a-js/sdk';
import { type Context, Hono } from 'hono';
import type { BulwarkEnv } from '../http/context.js';
import { publicOrigin } from '../mcp/metadata.js';

/** A2A §8.2: the well-known URI (RFC 8615) clients look for. */
export const AGENT_CARD_PATH = '/.well-known/agent-card.json';
/** The agent's message endpoint (src/agent/routes.ts). */
const MESSAGE_PATH = '/api/message';
/** The A2A version whose card this is (a2a.proto, `AgentInterface.protocol_version`: Major.Minor). */
const A2A_PROTOCOL_VERSION = '1.0';
/** A2A §8.6.1: clients may cache the card; five minutes bounds how stale a changed skill list is. */
const CACHE_CONTROL = 'public, max-age=300';

export interface AgentCardOptions {
  /** The agent's public description: `Config['agent']` fits; only these fields are read. */
  agent: { name: string; description: string; skills: ReadonlyArray<{ id: string; name: string; description: string; tags: readonly string[] }> };
  /** Bulwark's version (src/version.ts). */
  version: string;
  /** `server.publicUrl`; without it, the origin the request came to (its Host was checked). */
  publicUrl: string | undefined;
}

/** ProtoJSON of the SDK's types, restricted to the fields this card sets. */
type SecuritySchemeJson = { httpAuthSecurityScheme: Pick<HTTPAuthSecurityScheme, 'scheme' | 'description'> } | { apiKeySecurityScheme: APIKeySecurityScheme };

export interface AgentCardJson extends Pick<AgentCard, 'name' | 'description' | 'version' | 'defaultInputModes' | 'defaultOutputModes' | 'securityRequirements'> {
  supportedInterfaces: Array<Pick<AgentInterface, 'url' | 'protocolBinding' | 'protocolVersion'>>;
  capabilities: Pick<AgentCapabilities, 'streaming' | 'pushNotifications'>;
  securitySchemes: Record<string, SecuritySchemeJson>;
  skills: Array<Pick<AgentSkill, 'id' | 'name' | 'description' | 'tags'>>;
}

const SECURITY_SCHEMES: Record<string, SecuritySchemeJson> = {
  bearer: { httpAuthSecurityScheme: { scheme: 'Bearer', description: 'A Bulwark API key, or an access token Bulwark accepts, as "Authorization: Bearer <token>".' } },
  apiKey: { apiKeySecurityScheme: { location: 'header', name: 'X-API-Key', description: 'A Bulwark API key in the X-API-Key header.' } },
};

/** Either scheme alone is enough; each key needs the `write` scope to send a message. */
const SECURITY_REQUIREMENTS: SecurityRequirement[] = Object.keys(SECURITY_SCHEMES).map((name) => ({ schemes: { [name]: { list: ['write'] } } }));

function skillsOf(agent: AgentCardOptions['agent']): AgentCardJson['skills'] {
  if (agent.skills.length === 0) return [{ id: 'chat', name: agent.name, description: agent.description, tags: ['assistant'] }];
  const seen = new Set<string>();
  return agent.skills.map((skill, index) => {
    if (seen.has(skill.id)) throw new Error(`agentCardRoutes: agent.skills[${index}].id '${skill.id}' is used by an earlier skill.`);
    seen.add(skill.id);
    return { id: skill.id, name: skill.name, description: skill.description, tags: [...skill.tags] };
  });
}

function checkPublicUrl(publicUrl: string | undefined): void {
  if (publicUrl === undefined) return;
  let url: URL;
  try {
    url = new URL(publicUrl);
  } catch {
    throw new Error('agentCardRoutes: publicUrl must be an absolute URL.');
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error('agentCardRoutes: publicUrl must be an http(s) URL.');
  if (url.username || url.password || url.search || url.hash) throw new Error('agentCardRoutes: publicUrl must carry no credentials, query or fragment.');
}

/** RFC 9110 §13.1.2: If-None-Match compares weakly (compression turns the tag into `W/"…"`). */
function notModified(ifNoneMatch: string | undefined, etag: string): boolean {
  if (ifNoneMatch === undefined) return false;
  if (ifNoneMatch.trim() === '*') return true;
  return ifNoneMatch.split(',').some((tag) => tag.trim().replace(/^W\//, '') === etag);
}

export function agentCardRoutes(options: AgentCardOptions): Hono<BulwarkEnv> {
  const { agent, version, publicUrl } = options;
  if (!agent.name.trim()) throw new Error('agentCardRoutes: agent.name must not be empty.');
  if (!agent.description.trim()) throw new Error('agentCardRoutes: agent.description must not be empty.');
  if (!version.trim()) throw new Error('agentCardRoutes: version must not be empty.');
  checkPublicUrl(publicUrl);

  // Everything but the interface URL is fixed at start-up.
  const skills = skillsOf(agent);
  const cardFor = (origin: string): AgentCardJson => ({
    name: agent.name,
    description: agent.description,
    supportedInterfaces: [{ url: `${origin}${MESSAGE_PATH}`, protocolBinding: 'HTTP+JSON', protocolVersion: A2A_PROTOCOL_VERSION }],
    version,
    capabilities: { streaming: true, pushNotifications: false },
    securitySchemes: SECURITY_SCHEMES,
    securityRequirements: SECURITY_REQUIREMENTS,
    defaultInputModes: ['text/plain'],
    defaultOutputModes: ['text/plain'],
    skills,
  });

  return new Hono<BulwarkEnv>().get(AGENT_CARD_PATH, (c: Context<BulwarkEnv>) => {
    const body = JSON.stringify(cardFor(publicOrigin(c, publicUrl)));
    // A2A §8.6.1: an ETag from the content, so a client's conditional request costs no body.
    const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
    const headers = { 'cache-control': CACHE_CONTROL, etag };
    if (notModified(c.req.header('if-none-match'), etag)) return c.body(null, 304, headers);
    return c.body(body, 200, { ...headers, 'content-type': 'application/json; charset=utf-8' });
  });
}
