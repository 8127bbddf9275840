/**
 * Bulwark's own MCP tools, resource and prompt: what an operator's agent asks the gateway
 * about itself. Each reads through a narrow function the runtime supplies, so this file knows
 * nothing of HTTP or the store's tables.
 *
 *   status          admin  version, uptime, memory, store health, live MCP sessions (of the
 *                          caller's tenant, unless an operator asks)
 *   usage_summary   read   the caller's tenant's calls, tokens and cost per model since a time
 *   audit_search    admin  recent audit events, filtered by type family, tenant, outcome; a
 *                          tenant's admin key sees only its tenant, as in the admin API
 *   bulwark://security-policy   admin, operators only  the effective configuration, secrets masked
 *   security-review             admin, operators only  a prompt asking the model to review it
 *
 * The policy covers the whole deployment (every tenant's limits, every upstream), so a
 * tenant's admin key neither sees nor reads it.
 */
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import type { StoredAuditEvent, TailOptions } from '../audit/log.js';
import { crossesTenants } from '../auth/principal.js';
import type { UsageRow } from '../proxy/management.js';
import type { CallContext, McpSource, PromptEntry, ResourceEntry, ToolEntry } from './registry.js';

export const BUILTIN_SOURCE = 'bulwark';
export const SECURITY_POLICY_URI = 'bulwark://security-policy';

export interface BuiltinDependencies {
  version: string;
  startedAt: Date;
  /** Pings the store; never throws. */
  storeHealth(): Promise<{ kind: string; ok: boolean; ms: number }>;
  /** Live MCP sessions, of one tenant or (undefined) of all. */
  liveSessions(tenant: string | undefined): Promise<number>;
  usage(tenant: string, since: Date): Promise<UsageRow[]>;
  auditTail(options: TailOptions): Promise<StoredAuditEvent[]>;
  /** The effective configuration with every secret masked. */
  securityPolicy(): Record<string, unknown>;
}

const DURATION = /^(\d{1,4})([mhd])$/;
const UNIT_MS = { m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

const UsageArgs = z.strictObject({
  since: z.string().regex(DURATION, 'must be a duration such as 30m, 24h or 7d').default('24h').describe('How far back: 30m, 24h, 7d (at most 9999 units).'),
});

const AuditArgs = z.strictObject({
  type: z
    .string()
    .regex(/^[a-z][a-z0-9_.]*\*?$/, 'must be an event type or family such as auth. or mcp.*')
    .max(100)
    .optional()
    .describe('An event type (auth.failure) or a family ending in . or * (mcp.).'),
  tenant: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/).optional().describe('Only this tenant.'),
  outcome: z.enum(['success', 'failure', 'denied', 'info']).optional(),
  limit: z.number().int().min(1).max(200).default(50),
});

const StatusArgs = z.strictObject({});

function tool<S extends z.ZodType<Record<string, unknown>>>(
  name: string,
  scope: string,
  description: string,
  schema: S,
  run: (args: z.infer<S>, context: CallContext) => Promise<unknown>,
): ToolEntry {
  const { $schema: _drop, ...inputSchema } = z.toJSONSchema(schema, { io: 'input' }) as Record<string, unknown>;
  return {
    scope,
    source: BUILTIN_SOURCE,
    definition: { name, description, inputSchema: { ...inputSchema, type: 'object' }, annotations: { readOnlyHint: true, openWorldHint: false } },
    async call(args, context): Promise<CallToolResult> {
      const parsed = schema.safeParse(args);
      // Invalid arguments are a tool error the model can read and correct (MCP 2025-11-25, SEP-1303).
      if (!parsed.success) return errorResult(`Invalid arguments: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(arguments)'} ${i.message}`).join('; ')}`);
      const value = await run(parsed.data, context);
      return { content: [{ type: 'text', text: JSON.stringify(value, null, 2) }], structuredContent: value as Record<string, unknown> };
    },
  };
}

export function errorResult(message: string): CallToolResult {
  return { isError: true, content: [{ type: 'text', text: message }] };
}

export function builtinSource(deps: BuiltinDependencies): McpSource {
  const tools: ToolEntry[] = [
    tool('status', 'admin', "Bulwark's version, uptime, memory use, store health and number of live MCP sessions.", StatusArgs, async (_args, { principal }) => {
      const memory = process.memoryUsage();
      const tenant = crossesTenants(principal) ? undefined : principal.tenant;
      const [store, sessions] = await Promise.all([deps.storeHealth(), deps.liveSessions(tenant).catch(() => null)]);
      return {
        version: deps.version,
        startedAt: deps.startedAt.toISOString(),
        uptimeSeconds: Math.round((Date.now() - deps.startedAt.getTime()) / 1000),
        memory: { rssBytes: memory.rss, heapUsedBytes: memory.heapUsed },
        store,
        mcpSessions: sessions,
      };
    }),
    tool('usage_summary', 'read', "Your tenant's LLM calls, errors, tokens and cost per model since a time.", UsageArgs, async ({ since }, context) => {
      const match = DURATION.exec(since) as RegExpExecArray;
      const from = new Date(Date.now() - Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS]);
      const rows = await deps.usage(context.principal.tenant, from);
      return { tenant: context.principal.tenant, since: from.toISOString(), models: rows.map(({ tenant: _t, ...row }) => row) };
    }),
    tool('audit_search', 'admin', 'Recent audit events, newest last: filter by type or family, tenant and outcome.', AuditArgs, async ({ type, tenant, outcome, limit }, { principal }) => {
      const tenantId = crossesTenants(principal) ? tenant : principal.tenant;
      // The outcome filter is applied after the tail, over a wider window, so a rare outcome still shows up.
      const events = await deps.auditTail({ type, tenantId, limit: outcome ? Math.min(limit * 10, 1000) : limit });
      const matching = outcome ? events.filter((e) => e.outcome === outcome).slice(-limit) : events;
      return { events: matching };
    }),
  ];

  const policy: ResourceEntry = {
    scope: 'admin',
    operatorOnly: true,
    source: BUILTIN_SOURCE,
    definition: { uri: SECURITY_POLICY_URI, name: 'security-policy', title: 'Effective security policy', description: "Bulwark's effective configuration, secrets masked.", mimeType: 'application/json' },
    async read() {
      return { contents: [{ uri: SECURITY_POLICY_URI, mimeType: 'application/json', text: JSON.stringify(deps.securityPolicy(), null, 2) }] };
    },
  };

  const review: PromptEntry = {
    scope: 'admin',
    operatorOnly: true,
    source: BUILTIN_SOURCE,
    definition: {
      name: 'security-review',
      title: 'Review the security policy',
      description: "Asks the model to review Bulwark's effective security policy and name risks, most serious first.",
      arguments: [{ name: 'focus', description: 'An area to look at first (e.g. "rate limits", "MCP upstreams").', required: false }],
    },
    async get(args) {
      const focus = args?.focus?.trim();
      return {
        description: 'Security review of the effective Bulwark policy',
        messages: [
          {
            role: 'user',
            content: {
              type: 'text',
              text:
                'You are reviewing the configuration of Bulwark, a security gateway for AI agents. ' +
                'Read the policy below and list concrete risks, most serious first; for each, name the setting, the threat, and the change that removes it. ' +
                'Secrets are masked as ********; a masked value means it is set, not that it is weak.' +
                (focus ? ` Look at ${focus.slice(0, 200)} first.` : ''),
            },
          },
          { role: 'user', content: { type: 'resource', resource: { uri: SECURITY_POLICY_URI, mimeType: 'application/json', text: JSON.stringify(deps.securityPolicy(), null, 2) } } },
        ],
      };
    },
  };

  return {
    name: BUILTIN_SOURCE,
    tools: () => tools,
    resources: () => [policy],
    resourceTemplates: () => [],
    prompts: () => [review],
  };
}
