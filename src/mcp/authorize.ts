/**
 * The scope each JSON-RPC request to `/mcp` needs, decided before the SDK sees it so that a
 * refusal can be an HTTP 403 with `WWW-Authenticate: Bearer error="insufficient_scope"` — the
 * step-up signal of the MCP authorization spec — rather than a JSON-RPC error a client cannot
 * act on. The SDK's handlers check again (./server.ts), so nothing depends on this alone.
 */
import type { McpRegistry } from './registry.js';

/** What a request needs, and what it is about (for the audit event and the message). */
export interface Requirement {
  /** Every one of these; usually one. */
  scopes: string[];
  /** `tools/call deploy`, `resources/read bulwark://security-policy`, `tools/list`. */
  target: string;
  /** The tool a `tools/call` names, for per-tool rate limits. */
  tool?: string;
}

interface JsonRpcRequestLike {
  method: string;
  params?: Record<string, unknown>;
}

/** Requests any credential that may use something here may send: the handshake and liveness. */
const OPEN_METHODS = new Set(['initialize', 'ping']);
/** Names and URIs echoed in messages and audit events are cut to this. */
const TARGET_MAX = 200;

function stringParam(params: Record<string, unknown> | undefined, name: string): string | undefined {
  const value = params?.[name];
  return typeof value === 'string' ? value : undefined;
}

/**
 * The requirement of one request, or undefined when any authenticated caller may send it.
 * Unknown names need the family's base scope, so the SDK answers "not found" only to callers
 * who could have listed the thing had it existed.
 */
export function requirementOf(request: JsonRpcRequestLike, registry: McpRegistry): Requirement | undefined {
  const { method, params } = request;
  if (OPEN_METHODS.has(method)) return undefined;
  const needs = (scopes: string[], target: string, tool?: string): Requirement => ({
    scopes: scopes.length > 0 ? scopes : ['read'],
    target: target.length > TARGET_MAX ? `${target.slice(0, TARGET_MAX)}…` : target,
    ...(tool !== undefined ? { tool } : {}),
  });
  switch (method) {
    case 'tools/call': {
      const name = stringParam(params, 'name') ?? '';
      const tool = registry.tool(name);
      return needs(tool ? [tool.scope] : [], `tools/call ${name}`, tool ? name : undefined);
    }
    case 'resources/read':
    case 'resources/subscribe':
    case 'resources/unsubscribe': {
      const uri = stringParam(params, 'uri') ?? '';
      return needs(registry.resourceScopes(uri), `${method} ${uri}`);
    }
    case 'prompts/get': {
      const name = stringParam(params, 'name') ?? '';
      const prompt = registry.prompt(name);
      return needs(prompt ? [prompt.scope] : [], `prompts/get ${name}`);
    }
    case 'completion/complete': {
      const ref = params?.ref as { type?: unknown; name?: unknown; uri?: unknown } | undefined;
      if (ref?.type === 'ref/prompt' && typeof ref.name === 'string') {
        const prompt = registry.prompt(ref.name);
        return needs(prompt ? [prompt.scope] : [], `completion/complete prompt ${ref.name}`);
      }
      if (ref?.type === 'ref/resource' && typeof ref.uri === 'string') {
        const template = registry.resourceTemplate(ref.uri);
        return needs(template ? [template.scope] : [], `completion/complete resource ${ref.uri}`);
      }
      return needs([], method);
    }
    default:
      // Listing, logging/setLevel, and methods the SDK will answer "not found" to.
      return needs([], method);
  }
}
