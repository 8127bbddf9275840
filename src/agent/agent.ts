/**
 * Bulwark's own agent: a tool-use loop over Anthropic's Messages API (issue #7).
 *
 * - The model is called through `callModel`, which the HTTP layer points at Bulwark's own
 *   `/v1/messages` route in-process, as the caller: the tenant's upstream credential, its
 *   limits, budget, model allow-list and the `requests` row are exactly those of a
 *   `/v1/messages` call.
 * - The tools offered are the MCP tools (built-in and upstream) that the caller's scopes allow,
 *   and nothing else: a tool the caller may not use is never shown to the model.
 * - The loop stops at the model's final answer, or after `maxSteps` model turns, saying so,
 *   and at once when the client leaves. A message makes at most `MAX_TOOL_CALLS` tool calls.
 *   Tool calls meet `/mcp`'s per-tool limits and result cap; failures go back to the model as
 *   error results. A model call that fails ends the message with that error.
 * - A message's tool calls share one upstream MCP session per upstream, closed when the
 *   message ends.
 */
import { randomBytes } from 'node:crypto';
import { ErrorCode, McpError } from '@modelcontextprotocol/sdk/types.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type { AuditEventInput } from '../audit/log.js';
import type { Principal } from '../auth/principal.js';
import type { Logger } from '../http/logger.js';
import { type McpExtra, type McpRegistry, type ToolEntry, mayUse } from '../mcp/registry.js';
import { authInfoFor } from '../mcp/server.js';
import type { Turn } from './sessions.js';

/**
 * Turns a conversation keeps. Older ones are dropped from the front, at a user's own message,
 * so the history stays a valid conversation (no tool result without its call).
 */
export const MAX_HISTORY_TURNS = 100;
/** Tool calls one message may make, whatever the model asks for. */
export const MAX_TOOL_CALLS = 20;

/** Tool names the Messages API accepts; an MCP tool named otherwise is not offered. */
const ANTHROPIC_TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

export interface ModelMessage {
  content: Array<Record<string, unknown>>;
  stop_reason: string | null;
  model?: string;
  usage?: { input_tokens?: number; output_tokens?: number };
}

/** A model call's outcome: the message, or the error Bulwark's /v1 route answered with. */
export type ModelAnswer = { ok: true; message: ModelMessage } | { ok: false; status: number; type: string; message: string; headers: Record<string, string> };

/** The agent request a model call is made for: its id, address and user agent go on the call's row. */
export interface CallerFacts {
  requestId: string;
  ip: string | undefined;
  userAgent: string | undefined;
}

export type CallModel = (principal: Principal, body: Record<string, unknown>, signal: AbortSignal, facts: CallerFacts) => Promise<ModelAnswer>;

export type AgentEvent =
  | { type: 'message_started'; sessionId: string; model: string }
  | { type: 'chunk'; text: string }
  | { type: 'tool_called'; name: string; isError: boolean }
  | { type: 'message_finished'; reply: string; usage: AgentUsage; stopped: boolean };

export interface AgentUsage {
  inputTokens: number;
  outputTokens: number;
}

export interface ToolCallRecord {
  name: string;
  input: Record<string, unknown>;
  isError: boolean;
}

export interface AgentResult {
  reply: string;
  toolCalls: ToolCallRecord[];
  usage: AgentUsage;
  model: string;
  steps: number;
  /** True when the step limit ended the loop before the model's final answer. */
  stopped: boolean;
  /** The history to keep, this message's turns included. */
  history: Turn[];
}

/** The model call failed: the message ends with this, in Bulwark's terms. */
export class AgentModelError extends Error {
  constructor(readonly answer: Extract<ModelAnswer, { ok: false }>) {
    super(answer.message);
    this.name = 'AgentModelError';
  }
}

export interface AgentOptions {
  registry: McpRegistry;
  callModel: CallModel;
  /** The per-tool and per-scope limits of /mcp: a refusal message, or undefined to go ahead. */
  toolCallRefusal(principal: Principal, tool: { name: string; scope: string }): Promise<string | undefined>;
  /** Ends the upstream MCP sessions a message's tool calls opened. */
  closeToolSession(sessionHash: string): void;
  /** A tool result larger than this (bytes of JSON) reaches the model as an error instead. */
  maxResultBytes: number;
  systemPrompt: string;
  maxSteps: number;
  maxTokens: number;
  audit(event: AuditEventInput): void;
  logger: Logger;
}

export interface RunInput {
  principal: Principal;
  sessionId: string;
  model: string;
  message: string;
  history: readonly Turn[];
  signal: AbortSignal;
  facts: CallerFacts;
  emit?: (event: AgentEvent) => void;
}

export async function runAgent(options: AgentOptions, input: RunInput): Promise<AgentResult> {
  // Upstream sessions are per message (they hold nothing a later message needs) and never shared between callers.
  const toolSession = `agent:${randomBytes(16).toString('base64url')}`;
  try {
    return await loop(options, input, toolSession);
  } finally {
    options.closeToolSession(toolSession);
  }
}

async function loop(options: AgentOptions, input: RunInput, toolSession: string): Promise<AgentResult> {
  const { registry, callModel, maxSteps, maxTokens, systemPrompt } = options;
  const { principal, sessionId, model, signal } = input;
  const emit = input.emit ?? (() => {});
  const tools = new Map(registry.visibleTools(principal).filter((t) => ANTHROPIC_TOOL_NAME.test(t.definition.name)).map((t) => [t.definition.name, t]));
  const toolDefinitions = [...tools.values()].map((t) => ({ name: t.definition.name, description: t.definition.description ?? t.definition.name, input_schema: t.definition.inputSchema }));
  const history: Turn[] = trimmed([...input.history, { role: 'user', content: input.message }]);
  const usage: AgentUsage = { inputTokens: 0, outputTokens: 0 };
  const toolCalls: ToolCallRecord[] = [];
  emit({ type: 'message_started', sessionId, model });

  for (let step = 1; step <= maxSteps; step++) {
    signal.throwIfAborted();
    const answer = await callModel(
      principal,
      { model, max_tokens: maxTokens, system: systemPrompt, messages: history, ...(toolDefinitions.length > 0 ? { tools: toolDefinitions } : {}) },
      signal,
      input.facts,
    );
    if (!answer.ok) throw new AgentModelError(answer);
    const { message } = answer;
    usage.inputTokens += message.usage?.input_tokens ?? 0;
    usage.outputTokens += message.usage?.output_tokens ?? 0;
    history.push({ role: 'assistant', content: message.content });
    const text = message.content
      .filter((block) => block.type === 'text' && typeof block.text === 'string')
      .map((block) => block.text as string)
      .join('');
    if (text) emit({ type: 'chunk', text });
    const uses = message.content.filter((block) => block.type === 'tool_use');
    if (message.stop_reason !== 'tool_use' || uses.length === 0) {
      emit({ type: 'message_finished', reply: text, usage, stopped: false });
      return { reply: text, toolCalls, usage, model: message.model ?? model, steps: step, stopped: false, history };
    }
    const results: Array<Record<string, unknown>> = [];
    for (const use of uses) {
      signal.throwIfAborted();
      const name = String(use.name);
      const args = typeof use.input === 'object' && use.input !== null && !Array.isArray(use.input) ? (use.input as Record<string, unknown>) : {};
      const outcome =
        toolCalls.length >= MAX_TOOL_CALLS
          ? { text: `No more tool calls in this message (at most ${MAX_TOOL_CALLS}).`, isError: true }
          : await callTool(options, registry.tool(name), name, args, input, toolSession);
      toolCalls.push({ name, input: args, isError: outcome.isError });
      emit({ type: 'tool_called', name, isError: outcome.isError });
      results.push({ type: 'tool_result', tool_use_id: use.id, content: outcome.text, ...(outcome.isError ? { is_error: true } : {}) });
    }
    history.push({ role: 'user', content: results });
  }
  const reply = `Stopped after ${maxSteps} steps without a final answer.`;
  emit({ type: 'message_finished', reply, usage, stopped: true });
  return { reply, toolCalls, usage, model, steps: maxSteps, stopped: true, history };
}

function trimmed(history: Turn[]): Turn[] {
  if (history.length <= MAX_HISTORY_TURNS) return history;
  let start = history.length - MAX_HISTORY_TURNS;
  while (start < history.length - 1 && !(history[start]?.role === 'user' && typeof history[start]?.content === 'string')) start++;
  return history.slice(start);
}

/** Runs one tool the model asked for; every failure becomes an error result the model can read. */
async function callTool(
  options: AgentOptions,
  tool: ToolEntry | undefined,
  name: string,
  args: Record<string, unknown>,
  input: RunInput,
  toolSession: string,
): Promise<{ text: string; isError: boolean }> {
  const { principal, sessionId, signal } = input;
  // Looked up again at call time: the registry may have changed since the tools were offered.
  if (!tool || !ANTHROPIC_TOOL_NAME.test(name) || !mayUse(principal, tool)) return { text: `There is no tool named ${name} available to you.`, isError: true };
  const refused = await options.toolCallRefusal(principal, { name, scope: tool.scope });
  if (refused) return { text: refused, isError: true };
  const started = performance.now();
  let result: { text: string; isError: boolean };
  try {
    const answer = await tool.call(args, { principal, sessionHash: toolSession, extra: agentExtra(principal, signal), clientCapabilities: undefined });
    const bytes = Buffer.byteLength(JSON.stringify(answer));
    result =
      bytes > options.maxResultBytes
        ? { text: `The tool's result (${bytes} bytes) is larger than Bulwark's limit of ${options.maxResultBytes} bytes.`, isError: true }
        : { text: textOf(answer), isError: answer.isError === true };
  } catch (err) {
    if (!(err instanceof McpError)) options.logger.error({ err, tool: name }, 'agent tool failed');
    result = { text: err instanceof McpError ? err.message : `The tool ${name} failed.`, isError: true };
  }
  options.audit({
    type: 'agent.tool_call',
    outcome: result.isError ? 'failure' : 'success',
    tenantId: principal.tenant,
    keyId: principal.keyId,
    details: { tool: name, source: tool.source, scope: tool.scope, sessionId, durationMs: Math.round(performance.now() - started) },
  });
  return result;
}

/**
 * What a tool handler gets from the SDK, for a call that comes from the agent rather than an MCP
 * client: cancellation works; there is no client to notify or to ask (sampling, elicitation).
 */
function agentExtra(principal: Principal, signal: AbortSignal): McpExtra {
  return {
    signal,
    requestId: 0,
    authInfo: authInfoFor(principal),
    sendNotification: async () => {},
    sendRequest: async () => {
      throw new McpError(ErrorCode.MethodNotFound, 'Bulwark’s agent cannot answer a tool’s requests (sampling, elicitation, roots).');
    },
  } as unknown as McpExtra;
}

/** The text a model gets back from a tool: its text content, other content named. */
function textOf(result: CallToolResult): string {
  const parts = result.content.map((block) => (block.type === 'text' ? block.text : `[${block.type} content]`));
  if (parts.length === 0 && result.structuredContent) parts.push(JSON.stringify(result.structuredContent));
  return parts.join('\n') || '(no output)';
}
