/**
 * `GET /openapi.json`: an OpenAPI 3.1 document of every public-listener route, generated from
 * the zod schemas the routes validate with (request bodies through `z.toJSONSchema`, JSON
 * Schema 2020-12, which OpenAPI 3.1 uses as is). A route added without an entry here fails
 * `test/openapi.test.ts`, which compares the document with the routes the app registers.
 *
 * `/v1/*` is Anthropic's API passed through: Bulwark reads only `model`, `stream` and
 * `max_tokens` of a Messages request, so those are what its schema says; the rest goes upstream
 * as sent. Errors there use Anthropic's shape; everywhere else, Bulwark's envelope.
 */
import type { Context } from 'hono';
import { Hono } from 'hono';
import { z } from 'zod';
import { MessageBody, SwitchBody } from '../agent/routes.js';
import { publicOrigin } from '../mcp/metadata.js';
import type { BulwarkEnv } from './context.js';
import { TokenRequestSchema } from './routes/auth-token.js';

type Method = 'get' | 'post' | 'delete';

interface Operation {
  method: Method;
  path: string;
  summary: string;
  tag: string;
  /** The scopes any one of which the route needs; absent for public routes. */
  scopes?: readonly string[];
  body?: z.ZodType;
  /** What a success is: JSON, SSE, or nothing. */
  produces?: 'json' | 'sse' | 'json-or-sse' | 'empty';
  /** `anthropic` for /v1 routes, whose errors are in Anthropic's shape. */
  errors?: 'bulwark' | 'anthropic' | 'jsonrpc';
  parameters?: ReadonlyArray<{ name: string; in: 'path' | 'query' | 'header'; required?: boolean; description: string }>;
  /** Failure statuses beyond the ones every authenticated route has (401, 403, 429). */
  failures?: readonly number[];
  /** Served only when Bulwark issues JWTs (`POST /auth/token`, its JWKS). */
  jwt?: boolean;
  /** Also authenticated by a ticket in the query (`/api/events`). */
  ticket?: boolean;
}

/** What each extra failure status means, for the document. */
const FAILURE_DESCRIPTION: Readonly<Record<number, string>> = {
  404: 'No such thing for this caller',
  409: 'The conversation changed meanwhile',
  413: 'The body is larger than the limit',
  502: 'The upstream failed, or refused the credential Bulwark holds',
  503: 'Bulwark cannot reach its store right now (Retry-After)',
  504: 'The upstream did not answer in time',
};
const UPSTREAM_FAILURES = [413, 502, 503, 504] as const;

/** The fields of a Messages request Bulwark reads (model allow-lists, budgets, usage); the rest passes through. */
const MessagesRequest = z.looseObject({
  model: z.string().describe('Checked against the key and tenant model allow-lists; priced from `prices`.'),
  max_tokens: z.number().int().positive().describe('Reserved against token and dollar budgets before the call.'),
  messages: z.array(z.looseObject({ role: z.enum(['user', 'assistant']), content: z.unknown() })),
  stream: z.boolean().optional().describe('Stream the answer as Anthropic SSE, byte for byte.'),
});

const OPERATIONS: readonly Operation[] = [
  { method: 'get', path: '/health', summary: 'Liveness: status and version', tag: 'public' },
  { method: 'get', path: '/openapi.json', summary: 'This document', tag: 'public' },
  { method: 'get', path: '/.well-known/agent-card.json', summary: 'The A2A agent card', tag: 'public' },
  { method: 'get', path: '/.well-known/jwks.json', summary: "Public keys of Bulwark's JWTs", tag: 'public', jwt: true },
  { method: 'get', path: '/.well-known/oauth-protected-resource', summary: 'RFC 9728 metadata of the MCP resource', tag: 'public' },
  { method: 'get', path: '/.well-known/oauth-protected-resource/mcp', summary: 'RFC 9728 metadata of the MCP resource', tag: 'public' },
  { method: 'get', path: '/api/whoami', summary: "The caller's principal, never the key", tag: 'auth', scopes: [] },
  { method: 'post', path: '/auth/token', summary: 'Exchange a key for a short-lived JWT', tag: 'auth', scopes: [], body: TokenRequestSchema, jwt: true },
  { method: 'post', path: '/api/message', summary: 'Run the agent on a message', tag: 'agent', scopes: ['write'], body: MessageBody, produces: 'json-or-sse', failures: [404, 409, ...UPSTREAM_FAILURES] },
  { method: 'get', path: '/api/llm/current', summary: "The agent's provider, model and settings", tag: 'agent', scopes: ['read'] },
  { method: 'post', path: '/api/llm/switch', summary: "Change the agent's model within the configured list", tag: 'agent', scopes: ['admin'], body: SwitchBody },
  { method: 'get', path: '/api/sessions', summary: "The tenant's conversations", tag: 'agent', scopes: ['read'] },
  { method: 'get', path: '/api/sessions/{id}', summary: "One conversation's history", tag: 'agent', scopes: ['read'], failures: [404], parameters: [{ name: 'id', in: 'path', required: true, description: 'Session id' }] },
  { method: 'delete', path: '/api/sessions/{id}', summary: 'Delete a conversation', tag: 'agent', scopes: ['write'], failures: [404], parameters: [{ name: 'id', in: 'path', required: true, description: 'Session id' }] },
  {
    method: 'get',
    path: '/api/events',
    summary: "SSE feed of the tenant's agent events",
    tag: 'agent',
    scopes: ['read'],
    produces: 'sse',
    ticket: true,
    parameters: [
      { name: 'Last-Event-ID', in: 'header', description: 'Replay what was missed after this event' },
      { name: 'lastEventId', in: 'query', description: 'The same, for an EventSource opened with a new ticket' },
    ],
  },
  { method: 'post', path: '/api/events/ticket', summary: 'A single-use ticket for GET /api/events', tag: 'agent', scopes: ['read'] },
  { method: 'post', path: '/mcp', summary: 'MCP Streamable HTTP: JSON-RPC messages', tag: 'mcp', scopes: ['read', 'write', 'admin'], produces: 'json-or-sse', errors: 'jsonrpc' },
  { method: 'get', path: '/mcp', summary: "MCP Streamable HTTP: the server's event stream", tag: 'mcp', scopes: ['read', 'write', 'admin'], produces: 'sse', errors: 'jsonrpc' },
  { method: 'delete', path: '/mcp', summary: 'MCP Streamable HTTP: end the session', tag: 'mcp', scopes: ['read', 'write', 'admin'], produces: 'empty', errors: 'jsonrpc' },
  { method: 'post', path: '/v1/messages', summary: 'Anthropic Messages API, through Bulwark', tag: 'llm', scopes: ['llm', 'write'], body: MessagesRequest, produces: 'json-or-sse', errors: 'anthropic', failures: UPSTREAM_FAILURES },
  { method: 'post', path: '/v1/messages/count_tokens', summary: 'Anthropic token counting, through Bulwark', tag: 'llm', scopes: ['llm', 'write'], body: MessagesRequest.omit({ max_tokens: true, stream: true }), errors: 'anthropic', failures: UPSTREAM_FAILURES },
  { method: 'get', path: '/v1/models', summary: 'Anthropic models list, through Bulwark', tag: 'llm', scopes: ['llm', 'read'], errors: 'anthropic', failures: [502, 503, 504] },
  { method: 'get', path: '/v1/models/{id}', summary: 'One Anthropic model, through Bulwark', tag: 'llm', scopes: ['llm', 'read'], errors: 'anthropic', failures: [404, 502, 503, 504], parameters: [{ name: 'id', in: 'path', required: true, description: 'Model id' }] },
  ...(['get', 'post', 'delete'] as const).map(
    (method): Operation => ({
      method,
      path: '/v1/{path}',
      summary: 'Another Anthropic API path (any method): 404 unless `upstream.allowPaths` names it',
      tag: 'llm',
      scopes: ['llm', 'write'],
      errors: 'anthropic',
      failures: [404, ...UPSTREAM_FAILURES],
      parameters: [{ name: 'path', in: 'path', required: true, description: 'The rest of the path' }],
    }),
  ),
];

function served(jwt: boolean): readonly Operation[] {
  return OPERATIONS.filter((op) => !op.jwt || jwt);
}

/** The documented routes, as `METHOD /path` with Hono's `:param` syntax, for the completeness test. */
export function documentedRoutes(options: { jwt: boolean }): string[] {
  return served(options.jwt).map((op) => `${op.method.toUpperCase()} ${op.path.replace(/\{([^}]+)\}/g, ':$1')}`);
}

const ErrorEnvelope = {
  type: 'object',
  required: ['error'],
  properties: { error: { type: 'object', required: ['code', 'message', 'requestId'], properties: { code: { type: 'string' }, message: { type: 'string' }, requestId: { type: 'string' } } } },
};
const AnthropicError = {
  type: 'object',
  required: ['type', 'error'],
  properties: { type: { const: 'error' }, error: { type: 'object', properties: { type: { type: 'string' }, message: { type: 'string' } } }, request_id: { type: 'string' } },
};
const JsonRpcError = {
  type: 'object',
  properties: { jsonrpc: { const: '2.0' }, id: {}, error: { type: 'object', properties: { code: { type: 'integer' }, message: { type: 'string' } } } },
};

function jsonSchema(schema: z.ZodType): Record<string, unknown> {
  const { $schema: _dialect, ...rest } = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  return rest;
}

function operationObject(op: Operation): Record<string, unknown> {
  const errorSchema = { $ref: `#/components/schemas/${op.errors === 'anthropic' ? 'AnthropicError' : op.errors === 'jsonrpc' ? 'JsonRpcError' : 'Error'}` };
  const errorResponse = (description: string) => ({ description, content: { 'application/json': { schema: errorSchema } } });
  const success =
    op.produces === 'empty'
      ? { description: 'Done' }
      : {
          description: 'Success',
          content: {
            ...(op.produces === 'sse' ? {} : { 'application/json': { schema: {} } }),
            ...(op.produces === 'sse' || op.produces === 'json-or-sse' ? { 'text/event-stream': { schema: { type: 'string' } } } : {}),
          },
        };
  const responses: Record<string, unknown> = { [op.path === '/api/events/ticket' ? '201' : '200']: success };
  if (op.scopes) {
    responses['401'] = errorResponse('No valid credential (WWW-Authenticate says why)');
    responses['403'] = errorResponse('The credential lacks the scope (WWW-Authenticate: insufficient_scope)');
    responses['429'] = errorResponse('Over a rate limit or budget (Retry-After)');
  }
  if (op.body) responses['400'] = errorResponse('The body is not valid');
  for (const status of op.failures ?? []) responses[String(status)] = errorResponse(FAILURE_DESCRIPTION[status] ?? 'Failure');
  return {
    summary: op.summary,
    tags: [op.tag],
    operationId: `${op.method}${op.path.replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ? c.toUpperCase() : ''))}`,
    ...(op.scopes
      ? {
          security: [{ bearer: [...op.scopes] }, { apiKey: [...op.scopes] }, ...(op.ticket ? [{ eventTicket: [] }] : [])],
          ...(op.scopes.length > 0 ? { 'x-bulwark-scopes': `any one of: ${op.scopes.join(', ')}` } : {}),
        }
      : { security: [] }),
    ...(op.parameters ? { parameters: op.parameters.map((p) => ({ name: p.name, in: p.in, required: p.required ?? false, description: p.description, schema: { type: 'string' } })) } : {}),
    ...(op.body ? { requestBody: { required: true, content: { 'application/json': { schema: jsonSchema(op.body) } } } } : {}),
    responses,
  };
}

export function openApiDocument(options: { version: string; serverUrl: string; jwt: boolean }): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const op of served(options.jwt)) (paths[op.path] ??= {})[op.method] = operationObject(op);
  return {
    openapi: '3.1.0',
    info: { title: 'Bulwark', version: options.version, description: 'The public listener of Bulwark, a security gateway for AI agents.' },
    servers: [{ url: options.serverUrl }],
    paths,
    components: {
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', description: 'A Bulwark key, a JWT from POST /auth/token, or an accepted OIDC access token.' },
        apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key', description: 'A Bulwark key.' },
        eventTicket: { type: 'apiKey', in: 'query', name: 'ticket', description: 'A single-use ticket from POST /api/events/ticket, on GET /api/events only. Never a key.' },
      },
      schemas: { Error: ErrorEnvelope, AnthropicError, JsonRpcError },
    },
  };
}

export function openApiRoutes(options: { version: string; publicUrl: string | undefined; jwt: boolean }): Hono<BulwarkEnv> {
  return new Hono<BulwarkEnv>().get('/openapi.json', (c: Context<BulwarkEnv>) =>
    c.json(openApiDocument({ version: options.version, serverUrl: publicOrigin(c, options.publicUrl), jwt: options.jwt }), 200, { 'cache-control': 'public, max-age=300' }),
  );
}
