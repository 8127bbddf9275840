/**
 * A local stand-in for the Anthropic API, on loopback only, speaking the real wire format so that
 * Bulwark's proxy can be tested without reaching Anthropic: the Messages API (JSON and SSE),
 * token counting, the Models API, the OAuth refresh grant used by Claude subscriptions, and
 * injectable faults (error statuses, slow headers, stalled and reset streams, JSON answers
 * stalled or cut off mid-body, refused refreshes).
 *
 * Wire details follow Anthropic's documentation and the official TypeScript SDK's captured
 * fixtures:
 * - SSE event flow and payloads: https://docs.claude.com/en/api/messages-streaming and
 *   anthropics/anthropic-sdk-typescript tests/lib/fixtures/basic_response.txt (message_start with
 *   empty content and output_tokens 1, content_block_start, ping, content_block_delta ×N,
 *   content_block_stop, message_delta with stop_reason and cumulative output_tokens, message_stop).
 * - Error statuses and the `{type:'error', error:{type,message}, request_id}` shape, and the
 *   `request-id` header on every response: https://docs.claude.com/en/api/errors
 * - `anthropic-ratelimit-*` headers (RFC 3339 resets) and `retry-after` on 429:
 *   https://docs.claude.com/en/api/rate-limits
 * - Models list shape (`data`, `has_more`, `first_id`, `last_id`; newest first):
 *   https://docs.claude.com/en/api/models-list
 * - Token counting answers `{ input_tokens }`: https://docs.claude.com/en/api/messages-count-tokens
 * - API version 2026-10-21 and its stricter validation, and API keys sent as `Authorization: Bearer`
 *   by the SDK majors that default to it: https://platform.claude.com/docs/en/api/migration-2026-10-21
 * - Tool use: https://docs.claude.com/en/docs/agents-and-tools/tool-use/overview (tool definitions,
 *   `tool_use` and `tool_result` blocks, stop_reason `tool_use`; `caller: {type:'direct'}` as the
 *   official SDK's `ToolUseBlock` type requires). Streamed as `content_block_start` with
 *   `{type:'tool_use', id, name, input:{}, caller}`, an empty `input_json_delta` first (as in the
 *   recorded fixture in npm @ai-sdk/anthropic 3.0.21, src/__fixtures__/anthropic-json-tool.1.chunks.txt),
 *   then the input's JSON in `partial_json` chunks: https://docs.claude.com/en/api/messages-streaming
 *
 * Scripted replies, all deterministic (one output token per word of text and per input JSON chunk):
 * - The last message is a user message with `tool_result` blocks: text, for each result,
 *   `Result of <tool_use_id>: <its text>` (whitespace collapsed), plus ` (error)` when `is_error`.
 * - Else, the request has `tools` and the last message is a user message whose text has
 *   `use <name>` naming a custom tool in `tools` (the first such mention; other names are skipped,
 *   so a tool the model was not given is never called): text `Calling <name>.`, then a `tool_use`
 *   block for it, stop_reason `tool_use`. Its input is the JSON object right after the name
 *   (`use echo {"text":"hi"}`), or `{}` if none follows or it is not a valid object. If the whole
 *   reply does not fit in max_tokens, only the text is sent, cut, with stop_reason `max_tokens`:
 *   the stand-in never sends a partial tool call.
 * - Else: "Echo: " + the last user message's text, cut at max_tokens words.
 * Input tokens are ceil(prompt characters / 4) + 3, the prompt being the system and message text,
 * tool calls and results, and the tool definitions' JSON; count_tokens answers the same number.
 *
 * Validation follows the API's own messages: `tools[]` entries need a `name` matching
 * `^[a-zA-Z0-9_-]{1,64}$` (the pattern Anthropic documents and answers with; 128 is MCP's limit,
 * not Anthropic's), unique, and an `input_schema` of `type: 'object'`; typed tools (`type` other
 * than 'custom', e.g. server tools) are accepted unchecked and never called. Every `tool_result` must answer a
 * `tool_use` of the message right before it, and every `tool_use` followed by a message must be
 * answered there, else 400 invalid_request_error.
 *
 * Deliberately node:http rather than Hono: each SSE event is its own `write()`, awaited until it
 * is flushed to the socket, with a short pause between events, so chunking is real on the wire,
 * and `reset-stream` can destroy the socket mid-body.
 */
import { randomBytes } from 'node:crypto';
import { type IncomingMessage, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * Path of the OAuth token endpoint. Claude Code refreshes against
 * `https://console.anthropic.com/v1/oauth/token` (newer builds: `https://platform.claude.com/v1/oauth/token`),
 * a different host from `api.anthropic.com`; the stand-in serves both on one origin. The endpoint is
 * undocumented: the path and the `{grant_type:'refresh_token', refresh_token, client_id}` body come
 * from public clients of it (e.g. sst/opencode-anthropic-auth).
 */
export const OAUTH_TOKEN_PATH = '/v1/oauth/token';
/** The `anthropic-beta` flag without which Anthropic refuses OAuth bearer tokens. */
export const OAUTH_BETA = 'oauth-2025-04-20';
/**
 * API versions the stand-in accepts in `anthropic-version` (https://platform.claude.com/docs/en/api/versioning).
 * 2026-10-21 is what the SDK majors from 21 Oct 2026 on send (TypeScript SDK 1.0.0+); it rejects sampling
 * parameters and some message content that 2023-06-01 accepts (see `versionRuleError`).
 */
export const ANTHROPIC_VERSIONS: readonly string[] = ['2023-01-01', '2023-06-01', '2026-10-21'];

export interface StandInOptions {
  /** 0 (default) picks a free port. The listener is always 127.0.0.1. */
  port?: number;
  /** Pause between SSE events in ms, so that each event is its own read for the client. Default 2. */
  eventIntervalMs?: number;
  /** Request bodies above this many bytes get 413 request_too_large. Default 32 MiB, as Anthropic. */
  maxBodyBytes?: number;
}

export interface RecordedRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  /** Parsed JSON (or form fields for the token endpoint); the raw text if it did not parse. */
  body: unknown;
  /** Set when the client went away before the response was complete. */
  aborted?: boolean;
}

export type Fault =
  | { kind: 'status'; status: number; type: string; message?: string; times?: number; retryAfterSeconds?: number }
  | { kind: 'delay-headers'; ms: number; times?: number }
  | { kind: 'stall-stream'; afterEvents: number; times?: number }
  | { kind: 'reset-stream'; afterEvents: number; times?: number }
  /** A non-streaming answer: headers (with the full Content-Length), the first `afterBytes` bytes, then the socket is destroyed. */
  | { kind: 'reset-body'; afterBytes: number; times?: number }
  /** The same, but then silence with the socket left open. */
  | { kind: 'stall-body'; afterBytes: number; times?: number }
  | { kind: 'refuse-oauth'; times?: number };

export interface StandIn {
  /** http://127.0.0.1:PORT */
  url: string;
  /** Every request received, in arrival order (headers lower-cased). */
  requests: RecordedRequest[];
  /** Accepted upstream credentials: API keys (x-api-key) and OAuth access tokens (Authorization: Bearer). */
  apiKeys: Set<string>;
  accessTokens: Set<string>;
  /** OAuth refresh tokens currently valid; each refresh grant consumes one and issues a new one. */
  refreshTokens: Set<string>;
  /** Lifetime (`expires_in`) of access tokens issued by the token endpoint; they stop working after it. Default 3600. */
  accessTokenLifetimeSeconds: number;
  /** How many refresh grants were served successfully. */
  tokenRequests: number;
  /** Streaming responses whose client disconnected before the stream was complete. */
  abortedStreams: number;
  /** Injected fault for the next matching requests; cleared after `times` (default 1) uses. */
  fault: Fault | undefined;
  close(): Promise<void>;
}

const STATUS_FOR_TYPE: Record<string, number> = {
  invalid_request_error: 400,
  authentication_error: 401,
  permission_error: 403,
  not_found_error: 404,
  request_too_large: 413,
  rate_limit_error: 429,
  api_error: 500,
  overloaded_error: 529,
};

const DEFAULT_MESSAGE: Record<string, string> = {
  invalid_request_error: 'Invalid request',
  authentication_error: 'invalid x-api-key',
  permission_error: 'Your API key does not have permission to use the specified resource.',
  not_found_error: 'Not found',
  request_too_large: 'Request exceeds the maximum allowed number of bytes.',
  rate_limit_error: 'Number of requests has exceeded your per-minute rate limit',
  api_error: 'Internal server error',
  overloaded_error: 'Overloaded',
};

const MODELS = [
  { type: 'model', id: 'claude-haiku-4-5-20251001', display_name: 'Claude Haiku 4.5', created_at: '2025-10-01T00:00:00Z' },
  { type: 'model', id: 'claude-sonnet-4-5-20250929', display_name: 'Claude Sonnet 4.5', created_at: '2025-09-29T00:00:00Z' },
  { type: 'model', id: 'claude-opus-4-1-20250805', display_name: 'Claude Opus 4.1', created_at: '2025-08-05T00:00:00Z' },
] as const;

const ORGANIZATION_ID = '00000000-0000-4000-8000-00000000b01a';
const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
/** Custom tool names (Messages API reference, `tools[].name`; the API's 400 quotes this pattern). */
const TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

/** Anthropic-style identifier: prefix + 24 base62 characters (e.g. req_011CSHa1FurUZv2Lu8mxQdXf). */
function anthropicId(prefix: string): string {
  const bytes = randomBytes(24);
  let out = '';
  for (const b of bytes) out += BASE62[b % 62];
  return `${prefix}_01${out.slice(2)}`;
}

function opaqueToken(prefix: string): string {
  return `${prefix}${randomBytes(32).toString('base64url')}`;
}

// ---------------------------------------------------------------------------------------------
// Pure core: validation, the deterministic reply, token counts, SSE framing.
// ---------------------------------------------------------------------------------------------

interface ApiError {
  status: number;
  type: string;
  message: string;
}

function invalid(message: string): ApiError {
  return { status: 400, type: 'invalid_request_error', message };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Text of a `content` (or `system`) value: a string, or the text blocks of an array, space-joined. */
function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content
    .filter((block): block is { type: 'text'; text: string } => isObject(block) && block.type === 'text' && typeof block.text === 'string')
    .map((block) => block.text)
    .join(' ');
}

interface MessagesRequest {
  model: string;
  maxTokens: number;
  messages: Array<{ role: string; content: unknown }>;
  system: unknown;
  /** The `tools` definitions as sent (validated); empty when absent. */
  tools: Array<Record<string, unknown>>;
  stream: boolean;
}

function validateMessages(messages: unknown): ApiError | undefined {
  if (messages === undefined) return invalid('messages: Field required');
  if (!Array.isArray(messages)) return invalid('messages: Input should be a valid list');
  if (messages.length === 0) return invalid('messages: at least one message is required');
  for (const [i, message] of messages.entries()) {
    if (!isObject(message)) return invalid(`messages.${i}: Input should be a valid dictionary`);
    if (message.role !== 'user' && message.role !== 'assistant') return invalid(`messages.${i}.role: Input should be 'user' or 'assistant'`);
    if (typeof message.content !== 'string' && !Array.isArray(message.content)) return invalid(`messages.${i}.content: Field required`);
  }
  return undefined;
}

function parseMessagesRequest(body: unknown, { needMaxTokens, version }: { needMaxTokens: boolean; version: string }): MessagesRequest | ApiError {
  if (typeof body === 'string') return invalid('There was an issue with the format of your request body: invalid JSON');
  if (!isObject(body)) return invalid('There was an issue with the format of your request body: expected a JSON object');
  if (body.model === undefined) return invalid('model: Field required');
  if (typeof body.model !== 'string' || body.model === '') return invalid('model: Input should be a valid string');
  if (needMaxTokens) {
    if (body.max_tokens === undefined) return invalid('max_tokens: Field required');
    if (typeof body.max_tokens !== 'number' || !Number.isInteger(body.max_tokens)) return invalid('max_tokens: Input should be a valid integer');
    if (body.max_tokens < 1) return invalid('max_tokens: Input should be greater than or equal to 1');
  }
  const messagesError = validateMessages(body.messages) ?? validateTools(body.tools) ?? validateToolPairs(body.messages as MessagesRequest['messages']);
  if (messagesError) return messagesError;
  if (body.stream !== undefined && typeof body.stream !== 'boolean') return invalid('stream: Input should be a valid boolean');
  const versionError = versionRuleError(body, version);
  if (versionError) return versionError;
  return {
    model: body.model,
    maxTokens: typeof body.max_tokens === 'number' ? body.max_tokens : 0,
    messages: body.messages as MessagesRequest['messages'],
    system: body.system,
    tools: (body.tools ?? []) as MessagesRequest['tools'],
    stream: body.stream === true,
  };
}

/** Custom tools carry no `type` (or 'custom'); typed ones are Anthropic-defined (server tools and the like). */
function isCustomTool(tool: Record<string, unknown>): boolean {
  return tool.type === undefined || tool.type === 'custom';
}

/** The custom tool definition rules, in the API's words (`tools.N.custom.<field>: …`). */
function validateTools(tools: unknown): ApiError | undefined {
  if (tools === undefined) return undefined;
  if (!Array.isArray(tools)) return invalid('tools: Input should be a valid list');
  const names = new Set<string>();
  for (const [i, tool] of tools.entries()) {
    if (!isObject(tool)) return invalid(`tools.${i}: Input should be a valid dictionary`);
    if (!isCustomTool(tool)) continue;
    const at = `tools.${i}.custom`;
    if (tool.name === undefined) return invalid(`${at}.name: Field required`);
    if (typeof tool.name !== 'string') return invalid(`${at}.name: Input should be a valid string`);
    if (!TOOL_NAME.test(tool.name)) return invalid(`${at}.name: String should match pattern '${TOOL_NAME.source}'`);
    if (tool.input_schema === undefined) return invalid(`${at}.input_schema: Field required`);
    if (!isObject(tool.input_schema)) return invalid(`${at}.input_schema: Input should be a valid dictionary`);
    if (tool.input_schema.type === undefined) return invalid(`${at}.input_schema.type: Field required`);
    if (tool.input_schema.type !== 'object') return invalid(`${at}.input_schema.type: Input should be 'object'`);
    if (names.has(tool.name)) return invalid('tools: Tool names must be unique.');
    names.add(tool.name);
  }
  return undefined;
}

function blocksOf(content: unknown, type: string): Array<Record<string, unknown>> {
  return Array.isArray(content) ? content.filter((block): block is Record<string, unknown> => isObject(block) && block.type === type) : [];
}

/**
 * Tool calls and results must pair up across adjacent messages: each `tool_result` answers a
 * `tool_use` of the message right before it, and a `tool_use` followed by a message is answered
 * there. A trailing assistant `tool_use` (nothing after it yet) is left alone.
 */
function validateToolPairs(messages: MessagesRequest['messages']): ApiError | undefined {
  for (const [i, message] of messages.entries()) {
    if (!Array.isArray(message.content)) continue;
    const previous = messages[i - 1];
    const offered = new Set(previous?.role === 'assistant' ? blocksOf(previous.content, 'tool_use').map((block) => block.id) : []);
    for (const [j, block] of message.content.entries()) {
      if (!isObject(block) || block.type !== 'tool_result') continue;
      if (typeof block.tool_use_id !== 'string') return invalid(`messages.${i}.content.${j}.tool_result.tool_use_id: Field required`);
      if (message.role !== 'user' || !offered.has(block.tool_use_id)) {
        return invalid(
          `messages.${i}.content.${j}: unexpected \`tool_use_id\` found in \`tool_result\` blocks: ${block.tool_use_id}. ` +
            'Each `tool_result` block must have a corresponding `tool_use` block in the previous message.',
        );
      }
    }
    const next = messages[i + 1];
    if (message.role !== 'assistant' || next === undefined) continue;
    const answered = new Set(blocksOf(next.content, 'tool_result').map((block) => block.tool_use_id));
    const unanswered = blocksOf(message.content, 'tool_use').map((block) => String(block.id)).filter((id) => !answered.has(id));
    if (unanswered.length > 0) {
      return invalid(
        `messages.${i}: \`tool_use\` ids were found without \`tool_result\` blocks immediately after: ${unanswered.join(', ')}. ` +
          'Each `tool_use` block must have a corresponding `tool_result` block in the next message.',
      );
    }
  }
  return undefined;
}

/**
 * What API version 2026-10-21 refuses that 2023-06-01 accepts, on Messages and token counting:
 * sampling parameters (even at their defaults), a `document` block placed directly in an assistant
 * message, and a user `text` block carrying non-empty `citations` (also inside `search_result`).
 */
function versionRuleError(body: Record<string, unknown>, version: string): ApiError | undefined {
  if (version < '2026-10-21') return undefined;
  for (const parameter of ['temperature', 'top_p', 'top_k']) {
    if (parameter in body) return invalid(`${parameter}: Extra inputs are not permitted`);
  }
  const messages = body.messages as Array<{ role: string; content: unknown }>;
  for (const [i, message] of messages.entries()) {
    if (!Array.isArray(message.content)) continue;
    for (const [j, block] of message.content.entries()) {
      if (!isObject(block)) continue;
      if (message.role === 'assistant' && block.type === 'document') {
        return invalid(`messages.${i}.content.${j}: document blocks are not permitted in assistant messages`);
      }
      if (message.role === 'user' && hasUserCitations(block)) {
        return invalid(`messages.${i}.content.${j}: citations are not permitted on text blocks in user messages`);
      }
    }
  }
  return undefined;
}

function hasUserCitations(block: Record<string, unknown>): boolean {
  if (block.type === 'text') return Array.isArray(block.citations) && block.citations.length > 0;
  if (block.type === 'search_result' && Array.isArray(block.content)) return block.content.some((inner) => isObject(inner) && hasUserCitations(inner));
  return false;
}

/** Characters a message's content adds to the prompt: its text, its tool calls (name and input JSON) and its tool results' text. */
function promptChars(content: unknown): number {
  let chars = textOf(content).length;
  for (const call of blocksOf(content, 'tool_use')) chars += String(call.name).length + JSON.stringify(call.input ?? {}).length;
  for (const result of blocksOf(content, 'tool_result')) chars += textOf(result.content).length;
  return chars;
}

/** The stand-in's deterministic token count: ceil(characters of the prompt / 4) + 3 (see the module comment). */
function countInputTokens(request: Pick<MessagesRequest, 'messages' | 'system' | 'tools'>): number {
  let chars = textOf(request.system).length;
  for (const message of request.messages) chars += promptChars(message.content);
  if (request.tools.length > 0) chars += JSON.stringify(request.tools).length;
  return Math.ceil(chars / 4) + 3;
}

function hasCacheControl(system: unknown): boolean {
  return Array.isArray(system) && system.some((block) => isObject(block) && isObject(block.cache_control));
}

interface ToolCall {
  id: string;
  name: string;
  input: Record<string, unknown>;
  /** The input's JSON as streamed in `input_json_delta` events, one output token each. */
  jsonChunks: string[];
}

interface Reply {
  /** The leading text block, one output token per word. */
  words: string[];
  /** A tool call after the text, when the tool-use rule fired and the call fits in max_tokens. */
  toolCall?: ToolCall;
  stopReason: 'end_turn' | 'max_tokens' | 'tool_use';
}

/** Code points of the input's JSON per `input_json_delta` chunk (never splitting a surrogate pair). */
const JSON_CHUNK_CHARS = 8;

function outputTokensOf(reply: Reply): number {
  return reply.words.length + (reply.toolCall?.jsonChunks.length ?? 0);
}

function textReply(text: string, maxTokens: number): Reply {
  const all = text.split(/\s+/).filter((word) => word !== '');
  const words = all.slice(0, maxTokens);
  return { words, stopReason: words.length < all.length ? 'max_tokens' : 'end_turn' };
}

/** The JSON object starting at the first non-space character at or after `from`, if there is a valid one. */
function jsonObjectAt(text: string, from: number): Record<string, unknown> | undefined {
  const start = from + text.slice(from).search(/\S|$/);
  if (text[start] !== '{') return undefined;
  // The shortest prefix that parses is the object itself; any later `}` belongs to the prose.
  for (let end = text.indexOf('}', start); end !== -1; end = text.indexOf('}', end + 1)) {
    try {
      const value: unknown = JSON.parse(text.slice(start, end + 1));
      return isObject(value) ? value : undefined;
    } catch {
      // not complete yet
    }
  }
  return undefined;
}

/** The first `use <name>` in `text` that names a callable tool, with its input. */
function requestedToolCall(text: string, toolNames: ReadonlySet<string>): { name: string; input: Record<string, unknown> } | undefined {
  for (const match of text.matchAll(/\buse\s+([a-zA-Z0-9_-]+)/g)) {
    const name = match[1]!;
    if (toolNames.has(name)) return { name, input: jsonObjectAt(text, match.index + match[0].length) ?? {} };
  }
  return undefined;
}

/** The scripted reply (see the module comment): tool results, else a tool call, else the echo. */
function buildReply(request: MessagesRequest): Reply {
  const last = request.messages.at(-1)!;
  const results = last.role === 'user' ? blocksOf(last.content, 'tool_result') : [];
  if (results.length > 0) {
    const lines = results.map((result) => `Result of ${String(result.tool_use_id)}: ${textOf(result.content)}${result.is_error === true ? ' (error)' : ''}`);
    return textReply(lines.join(' '), request.maxTokens);
  }

  const toolNames = new Set(request.tools.filter(isCustomTool).map((tool) => tool.name as string));
  const requested = last.role === 'user' && toolNames.size > 0 ? requestedToolCall(textOf(last.content), toolNames) : undefined;
  if (requested) {
    const text = textReply(`Calling ${requested.name}.`, request.maxTokens);
    const codePoints = Array.from(JSON.stringify(requested.input));
    const jsonChunks: string[] = [];
    for (let i = 0; i < codePoints.length; i += JSON_CHUNK_CHARS) jsonChunks.push(codePoints.slice(i, i + JSON_CHUNK_CHARS).join(''));
    if (text.words.length + jsonChunks.length > request.maxTokens) return { ...text, stopReason: 'max_tokens' };
    return { words: text.words, toolCall: { id: anthropicId('toolu'), ...requested, jsonChunks }, stopReason: 'tool_use' };
  }

  const lastUser = [...request.messages].reverse().find((message) => message.role === 'user');
  return textReply(`Echo: ${textOf(lastUser?.content)}`, request.maxTokens);
}

/** The Message `content` of a reply. */
function contentOf(reply: Reply): Array<Record<string, unknown>> {
  const content: Array<Record<string, unknown>> = [{ type: 'text', text: reply.words.join(' ') }];
  const call = reply.toolCall;
  if (call) content.push({ type: 'tool_use', id: call.id, name: call.name, input: call.input, caller: { type: 'direct' } });
  return content;
}

function sseEvent(type: string, data: unknown): string {
  // The API's own ping payload is written with a space (`{"type": "ping"}`); keep it verbatim.
  const payload = type === 'ping' ? '{"type": "ping"}' : JSON.stringify(data);
  return `event: ${type}\ndata: ${payload}\n\n`;
}

interface Usage {
  input_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
  output_tokens: number;
  service_tier: 'standard';
}

function streamEvents(id: string, model: string, reply: Reply, usage: Usage): string[] {
  const events = [
    sseEvent('message_start', {
      type: 'message_start',
      message: { id, type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, usage: { ...usage, output_tokens: 1 } },
    }),
    sseEvent('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
    sseEvent('ping', { type: 'ping' }),
  ];
  reply.words.forEach((word, i) => {
    events.push(sseEvent('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: i === 0 ? word : ` ${word}` } }));
  });
  events.push(sseEvent('content_block_stop', { type: 'content_block_stop', index: 0 }));
  const call = reply.toolCall;
  if (call) {
    const toolUse = { type: 'tool_use', id: call.id, name: call.name, input: {}, caller: { type: 'direct' } };
    events.push(sseEvent('content_block_start', { type: 'content_block_start', index: 1, content_block: toolUse }));
    for (const partial of ['', ...call.jsonChunks]) {
      events.push(sseEvent('content_block_delta', { type: 'content_block_delta', index: 1, delta: { type: 'input_json_delta', partial_json: partial } }));
    }
    events.push(sseEvent('content_block_stop', { type: 'content_block_stop', index: 1 }));
  }
  events.push(
    sseEvent('message_delta', { type: 'message_delta', delta: { stop_reason: reply.stopReason, stop_sequence: null }, usage: { output_tokens: usage.output_tokens } }),
    sseEvent('message_stop', { type: 'message_stop' }),
  );
  return events;
}

// ---------------------------------------------------------------------------------------------
// HTTP edge.
// ---------------------------------------------------------------------------------------------

function flattenHeaders(req: IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) out[name.toLowerCase()] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

function rateLimitHeaders(): Record<string, string> {
  const reset = new Date(Math.ceil(Date.now() / 60_000) * 60_000).toISOString().replace(/\.\d{3}Z$/, 'Z');
  const headers: Record<string, string> = {};
  for (const [kind, limit] of [['requests', 4000], ['tokens', 2_000_000], ['input-tokens', 2_000_000], ['output-tokens', 400_000]] as const) {
    headers[`anthropic-ratelimit-${kind}-limit`] = String(limit);
    headers[`anthropic-ratelimit-${kind}-remaining`] = String(limit - 1);
    headers[`anthropic-ratelimit-${kind}-reset`] = reset;
  }
  return headers;
}

class BodyTooLarge extends Error {}

function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.removeAllListeners('data');
        req.resume();
        reject(new BodyTooLarge());
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseBody(raw: string, contentType: string | undefined): unknown {
  if (raw === '') return undefined;
  if (contentType?.startsWith('application/x-www-form-urlencoded')) return Object.fromEntries(new URLSearchParams(raw));
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

export async function startAnthropicStandIn(options: StandInOptions = {}): Promise<StandIn> {
  const { port = 0, eventIntervalMs = 2, maxBodyBytes = 32 * 1024 * 1024 } = options;
  if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new Error(`startAnthropicStandIn: options.port must be an integer 0–65535, got ${port}`);
  if (!(eventIntervalMs >= 0)) throw new Error(`startAnthropicStandIn: options.eventIntervalMs must be >= 0, got ${eventIntervalMs}`);
  if (!(maxBodyBytes > 0)) throw new Error(`startAnthropicStandIn: options.maxBodyBytes must be > 0, got ${maxBodyBytes}`);

  let closing = false;
  const timers = new Set<NodeJS.Timeout>();
  const faultUsesLeft = new WeakMap<Fault, number>();
  /** Expiry (ms since epoch) of access tokens this stand-in issued; seeded tokens never expire. */
  const accessTokenExpiry = new Map<string, number>();
  /** System prompts already "cached", so a repeat reads the cache instead of writing it. */
  const cachedSystems = new Set<string>();
  /** Responses whose connection has closed (finished, aborted by the client, or reset by us). */
  const closedResponses = new WeakSet<ServerResponse>();
  const isGone = (res: ServerResponse) => closing || closedResponses.has(res);
  /** Responses whose socket the stand-in destroyed itself (reset-stream), which is no client abort. */
  const resetResponses = new WeakSet<ServerResponse>();
  const clientAborted = (res: ServerResponse) => !res.writableFinished && !closing && !resetResponses.has(res);

  const standIn: StandIn = {
    url: '',
    requests: [],
    apiKeys: new Set(),
    accessTokens: new Set(),
    refreshTokens: new Set(),
    accessTokenLifetimeSeconds: 3600,
    tokenRequests: 0,
    abortedStreams: 0,
    fault: undefined,
    close,
  };

  /** Consumes one use of the current fault if it is one of `kinds`. */
  function takeFault<K extends Fault['kind']>(...kinds: K[]): Extract<Fault, { kind: K }> | undefined {
    const fault = standIn.fault;
    if (!fault || !(kinds as string[]).includes(fault.kind)) return undefined;
    const left = (faultUsesLeft.get(fault) ?? fault.times ?? 1) - 1;
    if (left <= 0) standIn.fault = undefined;
    else faultUsesLeft.set(fault, left);
    return fault as Extract<Fault, { kind: K }>;
  }

  function sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        timers.delete(timer);
        resolve();
      }, ms);
      timers.add(timer);
    });
  }

  function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    if (isGone(res) || res.headersSent) return;
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
    res.end(text);
  }

  function sendError(res: ServerResponse, error: ApiError, headers: Record<string, string> = {}): void {
    const requestId = res.getHeader('request-id') as string;
    sendJson(res, error.status, { type: 'error', error: { type: error.type, message: error.message }, request_id: requestId }, headers);
  }

  /**
   * Which credential failed, in Anthropic's words; undefined when the request may proceed.
   * An API key may come as `x-api-key` or, as SDKs for API version 2026-10-21 send it, as
   * `Authorization: Bearer`; with both present the API uses x-api-key. An OAuth access token comes
   * only as Bearer, and only with the oauth beta.
   */
  function authenticate(headers: Record<string, string>): ApiError | undefined {
    const unauthorized = (message: string): ApiError => ({ status: 401, type: 'authentication_error', message });
    const apiKey = headers['x-api-key'];
    if (apiKey !== undefined) return standIn.apiKeys.has(apiKey) ? undefined : unauthorized('invalid x-api-key');
    const bearer = /^Bearer\s+(.+)$/i.exec(headers.authorization ?? '')?.[1]?.trim();
    if (bearer === undefined) return unauthorized('x-api-key header is required');
    if (standIn.apiKeys.has(bearer)) return undefined;
    const isOAuthToken = standIn.accessTokens.has(bearer) || bearer.startsWith('sk-ant-oat');
    if (!isOAuthToken) return unauthorized('invalid x-api-key');
    const betas = (headers['anthropic-beta'] ?? '').split(',').map((beta) => beta.trim());
    if (!betas.includes(OAUTH_BETA)) return unauthorized('OAuth authentication is currently not supported.');
    if (!standIn.accessTokens.has(bearer)) return unauthorized('Invalid bearer token');
    const expiry = accessTokenExpiry.get(bearer);
    if (expiry !== undefined && Date.now() >= expiry) return unauthorized('OAuth token has expired. Please obtain a new token or refresh your existing token.');
    return undefined;
  }

  function checkVersion(headers: Record<string, string>): ApiError | undefined {
    const version = headers['anthropic-version'];
    if (version === undefined) return invalid('anthropic-version: header is required');
    if (!ANTHROPIC_VERSIONS.includes(version)) return invalid(`anthropic-version: "${version}" is not a valid version`);
    return undefined;
  }

  function usageFor(request: MessagesRequest, outputTokens: number): Usage {
    let creation = 0;
    let read = 0;
    if (hasCacheControl(request.system)) {
      const key = JSON.stringify(request.system);
      const cachedTokens = Math.ceil(textOf(request.system).length / 4) + 1;
      if (cachedSystems.has(key)) read = cachedTokens;
      else {
        cachedSystems.add(key);
        creation = cachedTokens;
      }
    }
    return { input_tokens: countInputTokens(request), cache_creation_input_tokens: creation, cache_read_input_tokens: read, output_tokens: outputTokens, service_tier: 'standard' };
  }

  /** Resolves once `chunk` is flushed to the socket, or the response is gone (then false). */
  function writeFlushed(res: ServerResponse, chunk: string | Uint8Array): Promise<boolean> {
    if (isGone(res)) return Promise.resolve(false);
    return new Promise((resolve) => {
      const onClose = () => resolve(false);
      res.once('close', onClose);
      // The callback fires once the chunk has left for the kernel, which is also the backpressure wait.
      res.write(chunk, (error) => {
        res.off('close', onClose);
        resolve(!error && !isGone(res));
      });
    });
  }

  async function streamMessage(res: ServerResponse, events: string[], fault: Extract<Fault, { kind: 'stall-stream' | 'reset-stream' }> | undefined): Promise<void> {
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
    res.flushHeaders();
    for (const [i, event] of events.entries()) {
      if (fault && i >= fault.afterEvents) break;
      if (!(await writeFlushed(res, event))) return;
      if (eventIntervalMs > 0) await sleep(eventIntervalMs);
      if (isGone(res)) return;
    }
    if (fault?.kind === 'stall-stream') return; // Silent from here on; the socket stays open.
    if (fault?.kind === 'reset-stream') {
      resetResponses.add(res);
      res.socket?.destroy();
      return;
    }
    res.end();
  }

  async function handleMessages(res: ServerResponse, recorded: RecordedRequest): Promise<void> {
    const request = parseMessagesRequest(recorded.body, { needMaxTokens: true, version: recorded.headers['anthropic-version']! });
    if ('status' in request) return sendError(res, request);

    const statusFault = takeFault('status');
    if (statusFault) {
      const type = statusFault.type;
      const extra: Record<string, string> = {};
      if (statusFault.status === 429) extra['retry-after'] = String(statusFault.retryAfterSeconds ?? 1);
      return sendError(res, { status: statusFault.status, type, message: statusFault.message ?? DEFAULT_MESSAGE[type] ?? type }, extra);
    }
    const delay = takeFault('delay-headers');
    if (delay) {
      await sleep(delay.ms);
      if (isGone(res)) return;
    }

    const reply = buildReply(request);
    const usage = usageFor(request, outputTokensOf(reply));
    const id = anthropicId('msg');
    if (!request.stream) {
      const message = { id, type: 'message', role: 'assistant', model: request.model, content: contentOf(reply), stop_reason: reply.stopReason, stop_sequence: null, usage };
      const cut = takeFault('reset-body', 'stall-body');
      if (cut) {
        const text = Buffer.from(JSON.stringify(message));
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': text.byteLength });
        await writeFlushed(res, text.subarray(0, cut.afterBytes));
        if (cut.kind === 'stall-body') return; // Silent from here on; the socket stays open.
        resetResponses.add(res);
        res.socket?.destroy();
        return;
      }
      return sendJson(res, 200, message);
    }

    const streamFault = takeFault('stall-stream', 'reset-stream');
    res.once('close', () => {
      if (clientAborted(res)) standIn.abortedStreams += 1;
    });
    await streamMessage(res, streamEvents(id, request.model, reply, usage), streamFault);
  }

  function handleCountTokens(res: ServerResponse, recorded: RecordedRequest): void {
    const request = parseMessagesRequest(recorded.body, { needMaxTokens: false, version: recorded.headers['anthropic-version']! });
    if ('status' in request) return sendError(res, request);
    sendJson(res, 200, { input_tokens: countInputTokens(request) });
  }

  function handleListModels(res: ServerResponse, query: URLSearchParams): void {
    const limit = query.has('limit') ? Number(query.get('limit')) : 20;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) return sendError(res, invalid('limit: Input should be greater than or equal to 1 and less than or equal to 1000'));
    let models: Array<(typeof MODELS)[number]> = [...MODELS];
    const afterId = query.get('after_id');
    const beforeId = query.get('before_id');
    let hasMore: boolean;
    if (beforeId !== null) {
      models = models.slice(0, Math.max(0, models.findIndex((model) => model.id === beforeId)));
      hasMore = models.length > limit;
      models = models.slice(-limit);
    } else {
      if (afterId !== null) models = models.slice(models.findIndex((model) => model.id === afterId) + 1);
      hasMore = models.length > limit;
      models = models.slice(0, limit);
    }
    sendJson(res, 200, { data: models, has_more: hasMore, first_id: models[0]?.id ?? null, last_id: models.at(-1)?.id ?? null });
  }

  function handleGetModel(res: ServerResponse, id: string): void {
    const model = MODELS.find((candidate) => candidate.id === id);
    if (!model) return sendError(res, { status: 404, type: 'not_found_error', message: `model: ${id}` });
    sendJson(res, 200, model);
  }

  /** RFC 6749 §5.2 error body, as the OAuth endpoint answers (not the API's error envelope). */
  function sendOAuthError(res: ServerResponse, error: string, description: string): void {
    sendJson(res, 400, { error, error_description: description }, { 'cache-control': 'no-store' });
  }

  function handleToken(res: ServerResponse, recorded: RecordedRequest): void {
    const body = isObject(recorded.body) ? recorded.body : {};
    if (body.grant_type !== 'refresh_token') return sendOAuthError(res, 'unsupported_grant_type', 'Only grant_type=refresh_token is supported');
    if (typeof body.refresh_token !== 'string' || body.refresh_token === '') return sendOAuthError(res, 'invalid_request', 'refresh_token is required');
    if (takeFault('refuse-oauth')) return sendOAuthError(res, 'invalid_grant', 'Refresh token is invalid or has been revoked');
    if (!standIn.refreshTokens.has(body.refresh_token)) return sendOAuthError(res, 'invalid_grant', 'Refresh token is invalid or has been revoked');

    // Rotation: the presented refresh token is spent; a reuse must fail.
    standIn.refreshTokens.delete(body.refresh_token);
    const accessToken = opaqueToken('sk-ant-oat01-');
    const refreshToken = opaqueToken('sk-ant-ort01-');
    const lifetime = standIn.accessTokenLifetimeSeconds;
    standIn.accessTokens.add(accessToken);
    accessTokenExpiry.set(accessToken, Date.now() + lifetime * 1000);
    standIn.refreshTokens.add(refreshToken);
    standIn.tokenRequests += 1;
    sendJson(
      res,
      200,
      { token_type: 'Bearer', access_token: accessToken, refresh_token: refreshToken, expires_in: lifetime, scope: 'user:inference user:profile' },
      { 'cache-control': 'no-store' },
    );
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    res.setHeader('request-id', anthropicId('req'));
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const method = req.method ?? 'GET';
    const headers = flattenHeaders(req);
    const recorded: RecordedRequest = { method, path: url.pathname + url.search, headers, body: undefined };
    standIn.requests.push(recorded);
    res.once('close', () => {
      closedResponses.add(res);
      if (clientAborted(res)) recorded.aborted = true;
    });

    try {
      recorded.body = parseBody(await readBody(req, maxBodyBytes), headers['content-type']);
    } catch (error) {
      if (error instanceof BodyTooLarge) {
        res.setHeader('connection', 'close');
        return sendError(res, { status: 413, type: 'request_too_large', message: DEFAULT_MESSAGE.request_too_large! });
      }
      throw error;
    }

    const path = url.pathname;
    if (method === 'POST' && path === OAUTH_TOKEN_PATH) return handleToken(res, recorded);

    const route =
      method === 'POST' && path === '/v1/messages' ? 'messages'
      : method === 'POST' && path === '/v1/messages/count_tokens' ? 'count_tokens'
      : method === 'GET' && path === '/v1/models' ? 'models'
      : method === 'GET' && /^\/v1\/models\/[^/]+$/.test(path) ? 'model'
      : undefined;
    if (route === undefined) return sendError(res, { status: 404, type: 'not_found_error', message: 'Not Found' });

    for (const [name, value] of Object.entries(rateLimitHeaders())) res.setHeader(name, value);
    res.setHeader('anthropic-organization-id', ORGANIZATION_ID);
    const refused = authenticate(headers) ?? checkVersion(headers);
    if (refused) return sendError(res, refused);

    switch (route) {
      case 'messages':
        return handleMessages(res, recorded);
      case 'count_tokens':
        return handleCountTokens(res, recorded);
      case 'models':
        return handleListModels(res, url.searchParams);
      case 'model':
        return handleGetModel(res, decodeURIComponent(path.slice('/v1/models/'.length)));
    }
  }

  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) sendError(res, { status: 500, type: 'api_error', message: DEFAULT_MESSAGE.api_error! });
      else res.destroy();
    });
  });

  async function close(): Promise<void> {
    if (closing) return;
    closing = true;
    for (const timer of timers) clearTimeout(timer);
    timers.clear();
    // Stalled streams keep their sockets open on purpose; end them so close() cannot hang.
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  standIn.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return standIn;
}
