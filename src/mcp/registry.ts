/**
 * What `/mcp` serves: tools, resources, resource templates and prompts, each with the scope a
 * caller needs for it. Entries come from sources (Bulwark's own, one per upstream server);
 * the registry merges them under their listed names and answers two questions for every
 * request: what may this caller see, and what scope does this call need.
 *
 * Defaults (issue #6): listing needs `read`, calling a tool needs `write`, Bulwark's admin
 * tools need `admin`; `mcp.scopes` in config overrides any entry by its listed name (a tool or
 * prompt name, or a resource URI / URI template).
 */
import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type {
  CallToolResult,
  ClientCapabilities,
  CompleteResult,
  GetPromptResult,
  Prompt,
  ReadResourceResult,
  Resource,
  ResourceTemplate,
  ServerNotification,
  ServerRequest,
  Tool,
} from '@modelcontextprotocol/sdk/types.js';
import { type Principal, crossesTenants } from '../auth/principal.js';
import { hasScope } from '../auth/scopes.js';

/** What the SDK hands a request handler: the cancellation signal, progress token, and the way back to the client. */
export type McpExtra = RequestHandlerExtra<ServerRequest, ServerNotification>;

/** Who is asking, on which session, through which request. */
export interface CallContext {
  readonly principal: Principal;
  /** SHA-256 (hex) of the session id: the key of per-session state (upstream connections). */
  readonly sessionHash: string;
  readonly extra: McpExtra;
  /** What the client declared at initialize (sampling, elicitation, roots): what may be relayed to it. */
  readonly clientCapabilities: ClientCapabilities | undefined;
}

interface Entry {
  /** The scope a caller needs to see and use it. */
  readonly scope: string;
  /** Only for operators (who manage every tenant): deployment-wide views a tenant's admin key must not get. */
  readonly operatorOnly?: boolean;
  /** `bulwark` or the upstream's name, for audit events. */
  readonly source: string;
}

export interface ToolEntry extends Entry {
  readonly definition: Tool;
  call(args: Record<string, unknown>, context: CallContext): Promise<CallToolResult>;
}

export interface ResourceEntry extends Entry {
  readonly definition: Resource;
  read(context: CallContext): Promise<ReadResourceResult>;
}

export interface ResourceTemplateEntry extends Entry {
  readonly definition: ResourceTemplate;
  /** Whether a concrete URI belongs to this template. */
  matches(uri: string): boolean;
  read(uri: string, context: CallContext): Promise<ReadResourceResult>;
  complete?(argument: { name: string; value: string }, contextArguments: Record<string, string> | undefined, context: CallContext): Promise<CompleteResult>;
}

export interface PromptEntry extends Entry {
  readonly definition: Prompt;
  get(args: Record<string, string> | undefined, context: CallContext): Promise<GetPromptResult>;
  complete?(argument: { name: string; value: string }, contextArguments: Record<string, string> | undefined, context: CallContext): Promise<CompleteResult>;
}

/** Where entries come from. A source re-announces its lists through `onChange`. */
export interface McpSource {
  readonly name: string;
  tools(): readonly ToolEntry[];
  resources(): readonly ResourceEntry[];
  resourceTemplates(): readonly ResourceTemplateEntry[];
  prompts(): readonly PromptEntry[];
  /** Resource subscriptions, for sources that support them. */
  subscribe?(uri: string, context: CallContext): Promise<void>;
  unsubscribe?(uri: string, context: CallContext): Promise<void>;
}

export type ListKind = 'tools' | 'resources' | 'prompts';

/** The merged view of every source. Rebuilt on `refresh()`; lookups are map reads. */
export class McpRegistry {
  readonly #sources: McpSource[] = [];
  readonly #overrides: Readonly<Record<string, string>>;
  #tools = new Map<string, ToolEntry>();
  #resources = new Map<string, ResourceEntry>();
  #templates: ResourceTemplateEntry[] = [];
  #prompts = new Map<string, PromptEntry>();
  readonly #listeners = new Set<(kind: ListKind) => void>();

  /** `overrides`: listed name (or URI) → scope, from `mcp.scopes`. */
  constructor(overrides: Readonly<Record<string, string>> = {}) {
    this.#overrides = overrides;
  }

  add(source: McpSource): void {
    if (this.#sources.some((s) => s.name === source.name)) throw new Error(`mcp: two sources are named ${source.name}`);
    this.#sources.push(source);
    this.refresh();
  }

  /** Re-reads every source's lists and tells listeners which lists changed. */
  refresh(): void {
    const before = this.#fingerprints();
    const tools = new Map<string, ToolEntry>();
    const resources = new Map<string, ResourceEntry>();
    const templates: ResourceTemplateEntry[] = [];
    const prompts = new Map<string, PromptEntry>();
    for (const source of this.#sources) {
      // The first source to claim a name keeps it (Bulwark's own come first), so an upstream cannot shadow a built-in.
      for (const tool of source.tools()) if (!tools.has(tool.definition.name)) tools.set(tool.definition.name, this.#scoped(tool, tool.definition.name));
      for (const resource of source.resources()) if (!resources.has(resource.definition.uri)) resources.set(resource.definition.uri, this.#scoped(resource, resource.definition.uri));
      for (const template of source.resourceTemplates()) templates.push(this.#scoped(template, template.definition.uriTemplate));
      for (const prompt of source.prompts()) if (!prompts.has(prompt.definition.name)) prompts.set(prompt.definition.name, this.#scoped(prompt, prompt.definition.name));
    }
    this.#tools = tools;
    this.#resources = resources;
    this.#templates = templates;
    this.#prompts = prompts;
    const after = this.#fingerprints();
    for (const kind of ['tools', 'resources', 'prompts'] as const) {
      if (before[kind] !== after[kind]) for (const listener of this.#listeners) listener(kind);
    }
  }

  /** What each list holds, definitions included: a changed description or schema is a change too. */
  #fingerprints(): Record<ListKind, string> {
    const of = (entries: Iterable<{ definition: unknown; scope: string }>) => JSON.stringify([...entries].map((e) => [e.definition, e.scope]));
    return { tools: of(this.#tools.values()), resources: of([...this.#resources.values(), ...this.#templates]), prompts: of(this.#prompts.values()) };
  }

  /** Called when a list's membership changes (for `notifications/<kind>/list_changed`). */
  onListChanged(listener: (kind: ListKind) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #scoped<T extends Entry>(entry: T, listedName: string): T {
    const override = Object.hasOwn(this.#overrides, listedName) ? this.#overrides[listedName] : undefined;
    return override === undefined || override === entry.scope ? entry : Object.assign(Object.create(entry) as T, { scope: override });
  }

  tool(name: string): ToolEntry | undefined {
    return this.#tools.get(name);
  }

  prompt(name: string): PromptEntry | undefined {
    return this.#prompts.get(name);
  }

  /** A resource by exact URI, else the first template it matches. */
  resource(uri: string): ResourceEntry | ResourceTemplateEntry | undefined {
    return this.#resources.get(uri) ?? this.#templates.find((t) => t.matches(uri));
  }

  /**
   * Every scope reading this URI needs: the exact resource's and that of each template it
   * matches. Requiring all of them means a URI a stricter entry guards cannot be read through a
   * broader template that happens to match it too.
   */
  resourceScopes(uri: string): string[] {
    const scopes = new Set<string>();
    const exact = this.#resources.get(uri);
    if (exact) scopes.add(exact.scope);
    for (const template of this.#templates) if (template.matches(uri)) scopes.add(template.scope);
    return [...scopes];
  }

  resourceTemplate(uriTemplate: string): ResourceTemplateEntry | undefined {
    return this.#templates.find((t) => t.definition.uriTemplate === uriTemplate);
  }

  sourceOf(entry: Entry): McpSource | undefined {
    return this.#sources.find((s) => s.name === entry.source);
  }

  /** Every scope some entry needs, with the base ones: what a client may ask an authorization server for. */
  scopes(): string[] {
    const all = new Set(['read', 'write', 'admin']);
    for (const entries of [this.#tools.values(), this.#resources.values(), this.#templates.values(), this.#prompts.values()]) {
      for (const entry of entries) all.add(entry.scope);
    }
    return [...all].sort();
  }

  /** What this caller may see and use. */
  visibleTools(principal: Principal): ToolEntry[] {
    return [...this.#tools.values()].filter((e) => mayUse(principal, e));
  }

  visibleResources(principal: Principal): ResourceEntry[] {
    return [...this.#resources.values()].filter((e) => mayUse(principal, e));
  }

  visibleResourceTemplates(principal: Principal): ResourceTemplateEntry[] {
    return this.#templates.filter((e) => mayUse(principal, e));
  }

  visiblePrompts(principal: Principal): PromptEntry[] {
    return [...this.#prompts.values()].filter((e) => mayUse(principal, e));
  }
}

/** The caller's scopes cover the entry's, and an operator-only entry is asked for by an operator. */
export function mayUse(principal: Principal, entry: Entry): boolean {
  return hasScope(principal.scopes, entry.scope) && (!entry.operatorOnly || crossesTenants(principal));
}
