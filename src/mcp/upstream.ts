/**
 * Upstream MCP servers, served through `/mcp` (issue #6, federation). For each configured
 * upstream:
 *
 * - One discovery connection lists its tools, resources, templates and prompts, and listens
 *   for `list_changed` to list them again. While the upstream is down, its entries are gone
 *   from the lists and it is retried with backoff; a call to it meanwhile gets a JSON-RPC
 *   error at once, never a hang.
 * - Each Bulwark session that uses it gets its own upstream session, opened on first use and
 *   closed with the Bulwark session, so per-session state upstream (log level, subscriptions,
 *   sampling and elicitation) belongs to one client. It declares the capabilities the
 *   client declared to Bulwark; the upstream's requests (sampling, elicitation, roots) are
 *   relayed to that client on the stream of the call that caused them, and its notifications
 *   (progress, log lines, resource updates) are passed on.
 * - Bulwark holds the credential: static headers, or an OAuth client-credentials token
 *   (RFC 6749 §4.4, with an RFC 8707 `resource`) fetched and renewed here. Nothing the client
 *   sent to Bulwark — its key above all — is forwarded.
 *
 * Names are `<upstream>__<name>` unless the upstream is configured `unprefixed`; resource
 * URIs are served as they are (a URI names its own scheme).
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UriTemplate } from '@modelcontextprotocol/sdk/shared/uriTemplate.js';
import {
  type ClientCapabilities,
  CreateMessageRequestSchema,
  CreateMessageResultSchema,
  ElicitRequestSchema,
  ElicitResultSchema,
  ErrorCode,
  ListRootsRequestSchema,
  ListRootsResultSchema,
  LoggingMessageNotificationSchema,
  McpError,
  type Prompt,
  PromptListChangedNotificationSchema,
  type Resource,
  ResourceListChangedNotificationSchema,
  type ResourceTemplate,
  ResourceUpdatedNotificationSchema,
  type ServerNotification,
  type Tool,
  ToolListChangedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import type { FileConfig } from '../config/schema.js';
import type { Logger } from '../http/logger.js';
import { VERSION } from '../version.js';
import { ClientCredentialsToken } from './client-credentials.js';
import type { CallContext, McpExtra, McpSource, PromptEntry, ResourceEntry, ResourceTemplateEntry, ToolEntry } from './registry.js';

export type UpstreamConfig = FileConfig['mcp']['upstreams'][number];

export interface UpstreamOptions {
  config: UpstreamConfig;
  logger: Logger;
  /** Lists changed (connected, disconnected, `list_changed`): the registry re-reads its sources. */
  onListsChanged(): void;
  /** Sends a notification to one Bulwark session (a resource update outside any call). */
  notifySession(sessionHash: string, notification: ServerNotification): void;
  /** First retry after a failed discovery connection; doubles up to a minute. */
  retryMs?: number;
}

const SEPARATOR = '__';
const MAX_RETRY_MS = 60_000;
const LIST_PAGES = 50;
/** How often a connected upstream is pinged, so one that went away leaves the lists. */
const PROBE_INTERVAL_MS = 30_000;

/** An upstream session of one Bulwark session, and the calls in flight through it. */
interface SessionLink {
  client: Promise<Client>;
  /** The requests of the Bulwark client that are waiting on this upstream; the newest gets relayed requests. */
  active: McpExtra[];
}

export class UpstreamSource implements McpSource {
  readonly name: string;
  readonly #o: UpstreamOptions;
  readonly #log: Logger;
  readonly #token: ClientCredentialsToken | undefined;
  #discovery: Client | undefined;
  #tools: ToolEntry[] = [];
  #resources: ResourceEntry[] = [];
  #templates: ResourceTemplateEntry[] = [];
  #prompts: PromptEntry[] = [];
  readonly #sessions = new Map<string, SessionLink>();
  #retryMs: number;
  #retryTimer: NodeJS.Timeout | undefined;
  #probeTimer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(options: UpstreamOptions) {
    this.#o = options;
    this.name = options.config.name;
    this.#log = options.logger.child({ upstream: this.name });
    this.#token = options.config.oauth ? new ClientCredentialsToken(options.config.oauth, options.config.timeoutMs) : undefined;
    this.#retryMs = options.retryMs ?? 1_000;
  }

  tools(): readonly ToolEntry[] {
    return this.#tools;
  }
  resources(): readonly ResourceEntry[] {
    return this.#resources;
  }
  resourceTemplates(): readonly ResourceTemplateEntry[] {
    return this.#templates;
  }
  prompts(): readonly PromptEntry[] {
    return this.#prompts;
  }

  /** Connects the discovery session and lists what the upstream offers; retries in the background on failure. */
  async start(): Promise<void> {
    try {
      const client = await this.#connect(undefined);
      if (this.#stopped) {
        await client.close();
        return;
      }
      this.#discovery = client;
      for (const schema of [ToolListChangedNotificationSchema, ResourceListChangedNotificationSchema, PromptListChangedNotificationSchema]) {
        client.setNotificationHandler(schema, () => void this.#list().catch((err: unknown) => this.#lost(err)));
      }
      client.onclose = () => {
        if (this.#discovery === client) this.#lost(new Error('connection closed'));
      };
      await this.#list();
      this.#retryMs = this.#o.retryMs ?? 1_000;
      clearInterval(this.#probeTimer);
      this.#probeTimer = setInterval(() => void this.#probe(), PROBE_INTERVAL_MS);
      this.#probeTimer.unref();
      this.#log.info({ tools: this.#tools.length, resources: this.#resources.length, prompts: this.#prompts.length }, 'mcp upstream connected');
    } catch (err) {
      this.#lost(err);
    }
  }

  /**
   * Whether the upstream still answers. A server that shuts down only ends the discovery
   * session's event stream, which the SDK client then tries to re-open, so a failed call
   * triggers this check, as does a timer.
   */
  async #probe(): Promise<void> {
    const discovery = this.#discovery;
    if (!discovery) return;
    try {
      await discovery.ping({ timeout: Math.min(this.#o.config.timeoutMs, 10_000) });
    } catch (err) {
      if (this.#discovery === discovery) this.#lost(err);
    }
  }

  /** The upstream went away: its entries leave the lists until a reconnect lists them again. */
  #lost(err: unknown): void {
    if (this.#stopped) return;
    const discovery = this.#discovery;
    this.#discovery = undefined;
    clearInterval(this.#probeTimer);
    void discovery?.close().catch(() => {});
    if (this.#tools.length + this.#resources.length + this.#templates.length + this.#prompts.length > 0) {
      this.#tools = [];
      this.#resources = [];
      this.#templates = [];
      this.#prompts = [];
      this.#o.onListsChanged();
    }
    this.#log.warn({ error: (err as Error).message, retryInMs: this.#retryMs }, 'mcp upstream unavailable; will retry');
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => void this.start(), this.#retryMs);
    this.#retryTimer.unref();
    this.#retryMs = Math.min(this.#retryMs * 2, MAX_RETRY_MS);
  }

  async #list(): Promise<void> {
    const client = this.#discovery;
    if (!client) return;
    const capabilities = client.getServerCapabilities() ?? {};
    const timeout = this.#o.config.timeoutMs;
    const tools = capabilities.tools ? await paged((cursor) => client.listTools({ cursor }, { timeout }), (r) => r.tools) : [];
    const resources = capabilities.resources ? await paged((cursor) => client.listResources({ cursor }, { timeout }), (r) => r.resources) : [];
    const templates = capabilities.resources ? await paged((cursor) => client.listResourceTemplates({ cursor }, { timeout }), (r) => r.resourceTemplates) : [];
    const prompts = capabilities.prompts ? await paged((cursor) => client.listPrompts({ cursor }, { timeout }), (r) => r.prompts) : [];
    this.#tools = tools.map((t) => this.#tool(t));
    this.#resources = resources.map((r) => this.#resource(r));
    this.#templates = templates.map((t) => this.#template(t));
    this.#prompts = prompts.map((p) => this.#prompt(p));
    this.#o.onListsChanged();
  }

  #listed(name: string): string {
    return this.#o.config.unprefixed ? name : `${this.name}${SEPARATOR}${name}`;
  }

  #tool(tool: Tool): ToolEntry {
    const upstreamName = tool.name;
    return {
      scope: this.#o.config.toolScope,
      source: this.name,
      definition: { ...tool, name: this.#listed(upstreamName) },
      call: (args, context) =>
        this.#through(context, (client, extra) => {
          const progressToken = extra._meta?.progressToken;
          return client.callTool({ name: upstreamName, arguments: args }, undefined, {
            ...this.#requestOptions(extra),
            // The upstream's progress goes to the client under the client's own token.
            ...(progressToken !== undefined
              ? {
                  onprogress: (progress) => void extra.sendNotification({ method: 'notifications/progress', params: { ...progress, progressToken } }).catch(() => {}),
                  resetTimeoutOnProgress: true,
                }
              : {}),
          }) as Promise<Awaited<ReturnType<ToolEntry['call']>>>;
        }),
    };
  }

  #resource(resource: Resource): ResourceEntry {
    return {
      scope: 'read',
      source: this.name,
      definition: resource,
      read: (context) => this.#through(context, (client, extra) => client.readResource({ uri: resource.uri }, this.#requestOptions(extra))),
    };
  }

  #template(template: ResourceTemplate): ResourceTemplateEntry {
    let parsed: UriTemplate | undefined;
    try {
      parsed = new UriTemplate(template.uriTemplate);
    } catch {
      this.#log.warn({ uriTemplate: template.uriTemplate }, 'mcp upstream resource template does not parse; it will match nothing');
    }
    return {
      scope: 'read',
      source: this.name,
      definition: template,
      matches: (uri) => parsed?.match(uri) != null,
      read: (uri, context) => this.#through(context, (client, extra) => client.readResource({ uri }, this.#requestOptions(extra))),
      complete: (argument, contextArguments, context) =>
        this.#through(context, (client, extra) =>
          client.complete({ ref: { type: 'ref/resource', uri: template.uriTemplate }, argument, ...(contextArguments ? { context: { arguments: contextArguments } } : {}) }, this.#requestOptions(extra)),
        ),
    };
  }

  #prompt(prompt: Prompt): PromptEntry {
    const upstreamName = prompt.name;
    return {
      scope: 'read',
      source: this.name,
      definition: { ...prompt, name: this.#listed(upstreamName) },
      get: (args, context) => this.#through(context, (client, extra) => client.getPrompt({ name: upstreamName, ...(args ? { arguments: args } : {}) }, this.#requestOptions(extra))),
      complete: (argument, contextArguments, context) =>
        this.#through(context, (client, extra) =>
          client.complete({ ref: { type: 'ref/prompt', name: upstreamName }, argument, ...(contextArguments ? { context: { arguments: contextArguments } } : {}) }, this.#requestOptions(extra)),
        ),
    };
  }

  async subscribe(uri: string, context: CallContext): Promise<void> {
    await this.#through(context, (client, extra) => client.subscribeResource({ uri }, this.#requestOptions(extra)));
  }

  async unsubscribe(uri: string, context: CallContext): Promise<void> {
    await this.#through(context, (client, extra) => client.unsubscribeResource({ uri }, this.#requestOptions(extra)));
  }

  #requestOptions(extra: McpExtra) {
    // The client cancelling its request cancels ours upstream (the SDK sends notifications/cancelled).
    return { signal: extra.signal, timeout: this.#o.config.timeoutMs };
  }

  /**
   * Runs one request through the session's upstream connection, with the calling request
   * registered for relayed requests. Failures become JSON-RPC errors that name the upstream
   * and say nothing of its credential.
   */
  async #through<T>(context: CallContext, run: (client: Client, extra: McpExtra) => Promise<T>): Promise<T> {
    const link = this.#link(context);
    link.active.push(context.extra);
    try {
      const client = await link.client;
      return await run(client, context.extra);
    } catch (err) {
      // The client cancelled: the SDK has told the upstream; the session there is fine.
      if (context.extra.signal.aborted) throw err;
      if (err instanceof McpError && err.code === ErrorCode.RequestTimeout) {
        // One slow call says nothing of the session's other calls; whether the server is there at all is checked.
        void this.#probe();
        throw new McpError(ErrorCode.RequestTimeout, `Upstream ${this.name} did not answer within ${this.#o.config.timeoutMs} ms`);
      }
      if (err instanceof McpError && err.code !== ErrorCode.ConnectionClosed) throw err;
      // The upstream session is unusable (closed, expired, unreachable): the next request opens a
      // new one, and the discovery session is checked, so a server that is gone leaves the lists.
      this.#drop(context.sessionHash);
      void this.#probe();
      this.#log.warn({ error: (err as Error).message }, 'mcp upstream request failed');
      throw new McpError(ErrorCode.InternalError, `Upstream ${this.name} is unavailable`);
    } finally {
      link.active.splice(link.active.indexOf(context.extra), 1);
    }
  }

  #link(context: CallContext): SessionLink {
    if (this.#stopped) throw new McpError(ErrorCode.ConnectionClosed, `Upstream ${this.name} is stopping`);
    const existing = this.#sessions.get(context.sessionHash);
    if (existing) return existing;
    const link: SessionLink = { active: [], client: Promise.resolve(undefined as unknown as Client) };
    const capabilities = relayableCapabilities(context.clientCapabilities);
    link.client = this.#connect(capabilities, (client) => this.#relay(client, link, context.sessionHash, capabilities));
    // A failed connect is not kept: the next request tries again.
    link.client.catch(() => {
      if (this.#sessions.get(context.sessionHash) === link) this.#sessions.delete(context.sessionHash);
    });
    this.#sessions.set(context.sessionHash, link);
    return link;
  }

  /** Handlers on a session's upstream client: what the upstream asks or tells goes to the Bulwark client. */
  #relay(client: Client, link: SessionLink, sessionHash: string, capabilities: ClientCapabilities): void {
    // The newest call still waiting; a cancelled one can carry nothing back.
    const current = () => link.active.filter((extra) => !extra.signal.aborted).at(-1);
    const caller = () => {
      const extra = current();
      if (!extra) throw new McpError(ErrorCode.InvalidRequest, 'No client request is in progress to relay this request to');
      return extra;
    };
    if (capabilities.sampling) client.setRequestHandler(CreateMessageRequestSchema, (request) => caller().sendRequest(request, CreateMessageResultSchema));
    if (capabilities.elicitation) client.setRequestHandler(ElicitRequestSchema, (request) => caller().sendRequest(request, ElicitResultSchema));
    if (capabilities.roots) client.setRequestHandler(ListRootsRequestSchema, (request) => caller().sendRequest(request, ListRootsResultSchema));
    client.setNotificationHandler(LoggingMessageNotificationSchema, (notification) => {
      const extra = current();
      const params = { ...notification.params, logger: notification.params.logger ?? this.name };
      if (extra) void extra.sendNotification({ method: 'notifications/message', params }).catch(() => {});
      else this.#o.notifySession(sessionHash, { method: 'notifications/message', params });
    });
    client.setNotificationHandler(ResourceUpdatedNotificationSchema, (notification) => this.#o.notifySession(sessionHash, notification));
  }

  async #connect(capabilities: ClientCapabilities | undefined, configure?: (client: Client) => void): Promise<Client> {
    const { config } = this.#o;
    const token = this.#token;
    const transport = new StreamableHTTPClientTransport(new URL(config.url), {
      fetch: async (url, init) => {
        const headers = new Headers(init?.headers);
        for (const [name, value] of Object.entries(config.headers)) headers.set(name, value);
        if (token) headers.set('authorization', `Bearer ${await token.get()}`);
        // Bulwark's credential headers must not follow a redirect to wherever it points.
        const response = await fetch(url, { ...init, headers, redirect: 'error' });
        // An expired or revoked upstream token: fetch a new one for the next request.
        if (response.status === 401 && token) token.invalidate();
        return response;
      },
    });
    const client = new Client({ name: 'bulwark', title: 'Bulwark MCP gateway', version: VERSION }, { capabilities: capabilities ?? {} });
    configure?.(client);
    client.onerror = (err) => this.#log.debug({ error: err.message }, 'mcp upstream protocol error');
    await client.connect(transport, { timeout: config.timeoutMs });
    return client;
  }

  #drop(sessionHash: string): void {
    const link = this.#sessions.get(sessionHash);
    if (!link) return;
    this.#sessions.delete(sessionHash);
    void link.client.then((client) => closeUpstreamSession(client)).catch(() => {});
  }

  /** The Bulwark session ended: end its upstream session too. */
  closeSession(sessionHash: string): void {
    this.#drop(sessionHash);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    clearInterval(this.#probeTimer);
    const sessions = [...this.#sessions.keys()];
    for (const hash of sessions) this.#drop(hash);
    await this.#discovery?.close().catch(() => {});
  }
}

/** Ends an upstream session politely (DELETE), then closes its streams. */
async function closeUpstreamSession(client: Client): Promise<void> {
  const transport = client.transport as StreamableHTTPClientTransport | undefined;
  await transport?.terminateSession().catch(() => {});
  await client.close();
}

/** The client's capabilities Bulwark can relay: sampling, elicitation and roots; nothing experimental. */
function relayableCapabilities(capabilities: ClientCapabilities | undefined): ClientCapabilities {
  const relayed: ClientCapabilities = {};
  if (capabilities?.sampling) relayed.sampling = capabilities.sampling;
  if (capabilities?.elicitation) relayed.elicitation = capabilities.elicitation;
  if (capabilities?.roots) relayed.roots = { listChanged: false };
  return relayed;
}

async function paged<R extends { nextCursor?: string | undefined }, T>(fetchPage: (cursor: string | undefined) => Promise<R>, items: (page: R) => T[]): Promise<T[]> {
  const all: T[] = [];
  let cursor: string | undefined;
  for (let page = 0; page < LIST_PAGES; page++) {
    const result = await fetchPage(cursor);
    all.push(...items(result));
    cursor = result.nextCursor;
    if (!cursor) break;
  }
  return all;
}
