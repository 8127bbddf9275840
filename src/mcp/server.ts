/**
 * The SDK `Server` of one MCP session: the request handlers that turn the registry into
 * `tools/*`, `resources/*`, `prompts/*` and `completion/complete` answers for the principal of
 * each request. JSON-RPC framing, the handshake, version negotiation, `ping`, `logging/setLevel`
 * and cancellation are the SDK's; this file only decides what a caller sees and may use.
 *
 * Each handler reads the principal from the request's `authInfo` (set by ./gateway.ts from
 * the authenticated request), so lists follow the scopes of the credential used for that
 * request — a key and a narrower JWT of the same key share a session but not a view.
 */
import { randomUUID } from 'node:crypto';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import {
  CallToolRequestSchema,
  type CallToolResult,
  CompleteRequestSchema,
  ErrorCode,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  McpError,
  ReadResourceRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';
import type { AuditEventInput } from '../audit/log.js';
import type { Principal } from '../auth/principal.js';
import { hasScope } from '../auth/scopes.js';
import type { Logger } from '../http/logger.js';
import { VERSION } from '../version.js';
import { errorResult } from './builtin.js';
import type { ToolPayload } from './payloads.js';
import { type CallContext, type McpExtra, type McpRegistry, type ResourceEntry, type ResourceTemplateEntry, mayUse } from './registry.js';

export interface SessionServerOptions {
  registry: McpRegistry;
  sessionHash: string;
  audit(event: AuditEventInput): void;
  logger: Logger;
  maxResultBytes: number;
  /** With body storage on: seals a call's arguments and result for its audit event. */
  sealPayload?: ((tenant: string, callId: string, payload: ToolPayload) => string) | undefined;
}

/** The `authInfo` the gateway passes with each request: the principal rides in `extra`. */
export function authInfoFor(principal: Principal): AuthInfo {
  // `token` is required by the type; the credential itself never travels past authentication.
  return { token: '', clientId: principal.keyId, scopes: [...principal.scopes], extra: { principal } };
}

function principalOf(extra: McpExtra): Principal {
  const principal = (extra.authInfo?.extra as { principal?: Principal } | undefined)?.principal;
  // The gateway sets it on every request; a request without it is a bug, never a guest.
  if (!principal) throw new McpError(ErrorCode.InternalError, 'request without a principal');
  return principal;
}

/** An entry the caller may not use answers as if it did not exist, like one that does not. */
function notFound(what: string): McpError {
  return new McpError(ErrorCode.InvalidParams, `${what} not found`);
}

export function createSessionServer(options: SessionServerOptions): Server {
  const { registry, sessionHash, audit, logger, maxResultBytes, sealPayload } = options;
  const server = new Server(
    { name: 'bulwark', title: 'Bulwark', version: VERSION },
    {
      capabilities: {
        tools: { listChanged: true },
        resources: { subscribe: true, listChanged: true },
        prompts: { listChanged: true },
        logging: {},
        completions: {},
      },
      instructions: 'Bulwark: tools, resources and prompts you may use with this credential. Each call is authorised by scope and audited.',
    },
  );
  const contextFor = (extra: McpExtra): CallContext => ({ principal: principalOf(extra), sessionHash, extra, clientCapabilities: server.getClientCapabilities() });

  server.setRequestHandler(ListToolsRequestSchema, async (_request, extra) => ({
    tools: registry.visibleTools(principalOf(extra)).map((t) => t.definition),
  }));
  server.setRequestHandler(ListResourcesRequestSchema, async (_request, extra) => ({
    resources: registry.visibleResources(principalOf(extra)).map((r) => r.definition),
  }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async (_request, extra) => ({
    resourceTemplates: registry.visibleResourceTemplates(principalOf(extra)).map((t) => t.definition),
  }));
  server.setRequestHandler(ListPromptsRequestSchema, async (_request, extra) => ({
    prompts: registry.visiblePrompts(principalOf(extra)).map((p) => p.definition),
  }));

  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const context = contextFor(extra);
    const { name } = request.params;
    const tool = registry.tool(name);
    if (!tool || !mayUse(context.principal, tool)) throw notFound(`Tool ${name}`);
    const started = performance.now();
    let outcome: 'success' | 'failure' = 'failure';
    let error: string | undefined;
    let result: CallToolResult | undefined;
    try {
      result = await tool.call(request.params.arguments ?? {}, context);
      const bytes = Buffer.byteLength(JSON.stringify(result));
      if (bytes > maxResultBytes) {
        error = `result of ${bytes} bytes exceeds the limit of ${maxResultBytes}`;
        result = errorResult(`The tool's result (${bytes} bytes) is larger than Bulwark's limit of ${maxResultBytes} bytes.`);
      } else if (!result.isError) {
        outcome = 'success';
      }
      return result;
    } catch (err) {
      error = err instanceof McpError ? err.message : 'internal error';
      if (err instanceof McpError) throw err;
      logger.error({ err, tool: name, source: tool.source }, 'mcp tool failed');
      throw new McpError(ErrorCode.InternalError, `Tool ${name} failed`);
    } finally {
      const callId = randomUUID();
      const { tenant } = context.principal;
      audit({
        type: 'mcp.tool_call',
        outcome,
        tenantId: tenant,
        keyId: context.principal.keyId,
        details: {
          tool: name,
          source: tool.source,
          scope: tool.scope,
          durationMs: Math.round(performance.now() - started),
          ...(error ? { error } : {}),
          ...(sealPayload ? { callId, payload: sealPayload(tenant, callId, { arguments: request.params.arguments ?? {}, result: result ?? null }) } : {}),
        },
      });
    }
  });

  const resourceFor = (uri: string, extra: McpExtra): { entry: ResourceEntry | ResourceTemplateEntry; context: CallContext } => {
    const context = contextFor(extra);
    const entry = registry.resource(uri);
    const allowed = entry && mayUse(context.principal, entry) && registry.resourceScopes(uri).every((scope) => hasScope(context.principal.scopes, scope));
    if (!entry || !allowed) throw new McpError(-32002, `Resource ${uri} not found`, { uri });
    return { entry, context };
  };

  server.setRequestHandler(ReadResourceRequestSchema, async (request, extra) => {
    const { entry, context } = resourceFor(request.params.uri, extra);
    return 'matches' in entry ? entry.read(request.params.uri, context) : entry.read(context);
  });
  server.setRequestHandler(SubscribeRequestSchema, async (request, extra) => {
    const { entry, context } = resourceFor(request.params.uri, extra);
    await registry.sourceOf(entry)?.subscribe?.(request.params.uri, context);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, async (request, extra) => {
    const { entry, context } = resourceFor(request.params.uri, extra);
    await registry.sourceOf(entry)?.unsubscribe?.(request.params.uri, context);
    return {};
  });

  server.setRequestHandler(GetPromptRequestSchema, async (request, extra) => {
    const context = contextFor(extra);
    const prompt = registry.prompt(request.params.name);
    if (!prompt || !mayUse(context.principal, prompt)) throw notFound(`Prompt ${request.params.name}`);
    return prompt.get(request.params.arguments, context);
  });

  server.setRequestHandler(CompleteRequestSchema, async (request, extra) => {
    const context = contextFor(extra);
    const { ref, argument } = request.params;
    const contextArguments = request.params.context?.arguments;
    const entry = ref.type === 'ref/prompt' ? registry.prompt(ref.name) : registry.resourceTemplate(ref.uri);
    if (!entry || !mayUse(context.principal, entry)) throw notFound(ref.type === 'ref/prompt' ? `Prompt ${ref.name}` : `Resource template ${ref.uri}`);
    return entry.complete ? entry.complete(argument, contextArguments, context) : { completion: { values: [], hasMore: false } };
  });

  return server;
}
