/**
 * `/mcp`: the Streamable HTTP endpoint (MCP 2025-11-25) in front of the registry.
 *
 * The SDK's web-standard transport does the protocol: POST with JSON or SSE answers, GET for
 * the server's stream, DELETE, `MCP-Protocol-Version`, resumption through the event store.
 * This module decides everything around it:
 *
 * - Authorization before the SDK: each JSON-RPC request's scope (./authorize.ts). A caller
 *   without it gets HTTP 403 with `WWW-Authenticate: Bearer error="insufficient_scope",
 *   scope="…", resource_metadata="…"`, audited as `authz.denied`.
 * - Per-tool and per-scope limits through the shared rate limiter (429 with Retry-After).
 * - Sessions (./sessions.ts): one SDK transport and server per session, kept in memory; the
 *   session itself lives in the store. Every request checks the store, so a session ended
 *   anywhere (DELETE, an operator, the idle timer, another instance) is refused at once; a
 *   stream another instance still holds open for it closes at that instance's next purge
 *   (within a minute). A
 *   session presented by anyone but the key that opened it is answered exactly like an
 *   unknown one (404) and audited as `mcp.session_violation`.
 * - After a restart, or on another instance, a session found in the store but not in memory
 *   is rebuilt by replaying its stored `initialize` into a fresh transport, so the SDK holds
 *   the client's capabilities again. Streams open at the restart are lost; their history is
 *   still in the event store for `Last-Event-ID`.
 */
import { randomBytes } from 'node:crypto';
import { WebStandardStreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js';
import type { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { isJsonContentType } from '@modelcontextprotocol/sdk/shared/mediaType.js';
import { type ServerNotification, isJSONRPCRequest } from '@modelcontextprotocol/sdk/types.js';
import type { Context } from 'hono';
import { Hono } from 'hono';
import type { AuditEventInput } from '../audit/log.js';
import { type Actor, type Result, actorFacts } from '../auth/key-service.js';
import { type Principal, crossesTenants } from '../auth/principal.js';
import { hasScope } from '../auth/scopes.js';
import { requestFacts } from '../http/client-info.js';
import type { BulwarkEnv } from '../http/context.js';
import { ApiError } from '../http/errors.js';
import type { Logger } from '../http/logger.js';
import { parseJsonBody } from '../security/json.js';
import { crossedLimit, refusalHeaders } from '../security/rate-limit.js';
import type { RateLimiter, RateLimitResult } from '../security/rate-limiter.js';
import { type Requirement, requirementOf } from './authorize.js';
import type { EventHistory } from './event-store.js';
import type { McpRegistry } from './registry.js';
import { type SessionServerOptions, authInfoFor, createSessionServer } from './server.js';
import { hashSessionId } from '../auth/sessions.js';
import { type McpSession, type McpSessionView, McpSessionStore, describeMcpSession } from './sessions.js';

export interface McpGatewayOptions {
  registry: McpRegistry;
  sessions: McpSessionStore;
  history: EventHistory;
  limiter: RateLimiter;
  rateLimits: { tools: Readonly<Record<string, number>>; scopes: Readonly<Record<string, number>> };
  maxResultBytes: number;
  /** Most sessions one key may have open at once. */
  maxPerKey: number;
  /** With body storage on: seals a tool call's arguments and result into its audit event. */
  sealPayload?: SessionServerOptions['sealPayload'];
  /** The RFC 9728 metadata URL for this resource, named in every 401 and 403 challenge. */
  resourceMetadataUrl(c: Context<BulwarkEnv>): string;
  audit(event: AuditEventInput): void;
  logger: Logger;
  /** Told when a session ends here, for per-session state elsewhere (upstream connections). */
  onSessionClosed?: (sessionHash: string) => void;
  /** Counted into a metric (`mcp_tool`, `mcp_scope`). */
  onRefused?: (limit: string) => void;
}

interface LiveSession {
  readonly server: Server;
  readonly transport: WebStandardStreamableHTTPServerTransport;
}

const JSONRPC_HEADERS = { 'content-type': 'application/json' };
/** The initialize params kept to rebuild a session (capabilities and client info) are small; more is refused. */
const MAX_INIT_PARAMS_BYTES = 16 * 1024;

const storeUnavailable = () => new ApiError('service_unavailable', 'Bulwark cannot reach its store for MCP sessions right now; try again shortly.', { 'Retry-After': '1' });

/** A JSON-RPC error answer with no id, as the SDK's transport writes its own. */
function jsonRpcError(status: number, code: number, message: string, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }), { status, headers: { ...JSONRPC_HEADERS, ...headers } });
}

/** What the SDK answers for a session it does not know; an unknown, ended and foreign session all get exactly this. */
const sessionNotFound = () => jsonRpcError(404, -32001, 'Session not found');

export class McpGateway {
  readonly #o: McpGatewayOptions;
  readonly #live = new Map<string, LiveSession>();
  /** Rebuilds in progress, so two requests racing after a restart share one. */
  readonly #restoring = new Map<string, Promise<LiveSession>>();
  readonly #unsubscribe: () => void;

  constructor(options: McpGatewayOptions) {
    this.#o = options;
    this.#unsubscribe = options.registry.onListChanged((kind) => {
      for (const { server } of this.#live.values()) {
        const send = kind === 'tools' ? server.sendToolListChanged() : kind === 'resources' ? server.sendResourceListChanged() : server.sendPromptListChanged();
        void send.catch(() => {});
      }
    });
  }

  routes(): Hono<BulwarkEnv> {
    return new Hono<BulwarkEnv>().all('/mcp', (c) => this.#handle(c));
  }

  async #handle(c: Context<BulwarkEnv>): Promise<Response> {
    const principal = c.get('principal');
    if (!principal) throw new Error('mcp gateway used before authenticate');
    const method = c.req.method;
    if (method !== 'GET' && method !== 'POST' && method !== 'DELETE') {
      return jsonRpcError(405, -32000, 'Method not allowed.', { allow: 'GET, POST, DELETE' });
    }

    let parsedBody: unknown;
    if (method === 'POST' && isJsonContentType(c.req.header('content-type'))) {
      const text = await c.req.text();
      try {
        parsedBody = parseJsonBody(text);
      } catch (err) {
        if (err instanceof ApiError && err.code !== 'invalid_json') throw err;
        return jsonRpcError(400, -32700, 'Parse error: Invalid JSON');
      }
    }
    const messages: unknown[] = parsedBody === undefined ? [] : Array.isArray(parsedBody) ? parsedBody : [parsedBody];
    const requests = messages.filter(isJSONRPCRequest);
    const requirements = requests.map((r) => requirementOf(r, this.#o.registry)).filter((r): r is Requirement => r !== undefined);
    const initialize = requests.find((r) => r.method === 'initialize');
    // A credential that may use nothing here (only `llm`, say) opens no session either.
    if (initialize && !this.#o.registry.scopes().some((scope) => hasScope(principal.scopes, scope))) {
      this.#deny(c, principal, { scopes: ['read'], target: 'initialize' });
    }
    for (const requirement of requirements) {
      const missing = requirement.scopes.filter((scope) => !hasScope(principal.scopes, scope));
      if (missing.length > 0) this.#deny(c, principal, { ...requirement, scopes: missing });
    }
    await this.#limit(c, principal, requirements);

    const sessionId = c.req.header('mcp-session-id');
    if (sessionId === undefined) {
      if (initialize) return this.#open(c, principal, parsedBody, initialize.params ?? {});
      return jsonRpcError(400, -32000, 'Bad Request: Mcp-Session-Id header is required');
    }

    const session = await this.#session(c, principal, sessionId);
    if (!session) return sessionNotFound();
    if (method === 'DELETE' && !this.#live.has(session.hash)) {
      // Nothing to rebuild just to end it.
      await this.#ended(session, 'deleted', c);
      return new Response(null, { status: 200 });
    }
    const live = this.#live.get(session.hash) ?? (await this.#restore(session, principal, sessionId).catch(async (err: unknown) => {
      // A session that cannot be rebuilt is ended, so the client starts a new one instead of failing forever.
      this.#o.logger.error({ err, ref: session.ref }, 'an MCP session could not be restored; ending it');
      await this.#ended(session, 'restore_failed', c).catch(() => {});
      return undefined;
    }));
    if (!live) return sessionNotFound();
    const response = await live.transport.handleRequest(c.req.raw, { parsedBody, authInfo: authInfoFor(principal) });
    if (method === 'DELETE' && response.status === 200) await this.#ended(session, 'deleted', c);
    return response;
  }

  /** The caller's live session, or undefined after auditing why not. */
  async #session(c: Context<BulwarkEnv>, principal: Principal, sessionId: string): Promise<McpSession | undefined> {
    let lookup;
    try {
      lookup = await this.#o.sessions.lookup(sessionId);
    } catch (err) {
      this.#o.logger.error({ err }, 'mcp session lookup failed');
      throw storeUnavailable();
    }
    if (!lookup.ok) {
      const hash = hashSessionId(sessionId);
      // The lookup itself ended an idle or expired session; whatever this process still holds of it goes too.
      if (lookup.reason !== 'unknown') {
        this.#o.audit({ type: 'mcp.session_ended', outcome: 'info', tenantId: principal.tenant, keyId: principal.keyId, ...requestFacts(c), details: { reason: lookup.reason, ref: hash.slice(0, 16) } });
        await this.#forget(hash);
      } else {
        // Ended elsewhere (another instance, an operator): this process may still hold its transport.
        this.#closeLocal(hash);
      }
      return undefined;
    }
    const { session } = lookup;
    if (session.keyId !== principal.keyId) {
      // Indistinguishable from an unknown session to the caller; loud in the audit log.
      this.#o.audit({
        type: 'mcp.session_violation',
        outcome: 'denied',
        tenantId: principal.tenant,
        keyId: principal.keyId,
        ...requestFacts(c),
        details: { ref: session.ref, ownerKeyId: session.keyId, ownerTenant: session.tenant },
      });
      return undefined;
    }
    return session;
  }

  /**
   * A new session for an initialize request without a session id. The row is written first,
   * so a store that is away gives a clean 503 before the SDK starts answering; it is removed
   * again if the SDK refuses the request.
   */
  async #open(c: Context<BulwarkEnv>, principal: Principal, parsedBody: unknown, params: Record<string, unknown>): Promise<Response> {
    // Only what a rebuild after a restart needs is kept, and only so much of it.
    const kept = { protocolVersion: params.protocolVersion, capabilities: params.capabilities ?? {}, clientInfo: params.clientInfo ?? {} };
    if (JSON.stringify(kept).length > MAX_INIT_PARAMS_BYTES) {
      return jsonRpcError(400, -32602, `Invalid params: initialize params larger than ${MAX_INIT_PARAMS_BYTES} bytes`);
    }
    const { maxPerKey } = this.#o;
    const id = McpSessionStore.newId();
    let created: McpSession;
    try {
      if ((await this.#o.sessions.countForKey(principal.keyId)) >= maxPerKey) {
        this.#o.audit({ type: 'rate_limit.exceeded', outcome: 'denied', tenantId: principal.tenant, keyId: principal.keyId, ...requestFacts(c), details: { limit: 'mcp_sessions', perKey: maxPerKey } });
        throw new ApiError('rate_limited', `This key has ${maxPerKey} open MCP sessions, the most it may have; end one (DELETE /mcp) or let one expire.`, { 'Retry-After': '60' });
      }
      created = await this.#o.sessions.create(id, principal, { protocolVersion: String(params.protocolVersion ?? ''), params: kept });
    } catch (err) {
      if (err instanceof ApiError) throw err;
      this.#o.logger.error({ err }, 'an MCP session could not be stored');
      throw storeUnavailable();
    }
    const live = await this.#build(created.hash, id, async () => {
      this.#live.set(created.hash, live);
    });
    const response = await live.transport.handleRequest(c.req.raw, { parsedBody, authInfo: authInfoFor(principal) });
    if (!this.#live.has(created.hash)) {
      await live.transport.close();
      await this.#o.sessions.end(created.hash).catch(() => {});
      return response;
    }
    this.#o.audit({
      type: 'mcp.session_started',
      outcome: 'success',
      tenantId: principal.tenant,
      keyId: principal.keyId,
      ...requestFacts(c),
      details: { ref: created.ref, client: describeMcpSession(created).client, protocolVersion: created.protocolVersion },
    });
    return response;
  }

  /**
   * A transport and server for one session. While `replaying` is set (a rebuild replaying the
   * stored initialize), what the SDK answers is not the client's and is not kept.
   */
  async #build(hash: string, id: string, onInitialized: () => Promise<void>, replaying = { on: false }): Promise<LiveSession> {
    const server = createSessionServer({
      registry: this.#o.registry,
      sessionHash: hash,
      audit: this.#o.audit,
      logger: this.#o.logger,
      maxResultBytes: this.#o.maxResultBytes,
      sealPayload: this.#o.sealPayload,
    });
    const history = this.#o.history.forSession(hash);
    const transport = new WebStandardStreamableHTTPServerTransport({
      sessionIdGenerator: () => id,
      eventStore: {
        // The transport turns a failed store into the client's error (or a stream that never ends):
        // without the store, the event is still delivered, just not resumable.
        storeEvent: (streamId, message) =>
          (replaying.on ? Promise.resolve(randomBytes(16).toString('base64url')) : history.storeEvent(streamId, message)).catch((err: unknown) => {
            this.#o.logger.warn({ err }, 'an MCP event could not be stored; it is delivered but cannot be replayed');
            return randomBytes(16).toString('base64url');
          }),
        getStreamIdForEventId: (eventId) => history.getStreamIdForEventId(eventId),
        replayEventsAfter: (eventId, options) => history.replayEventsAfter(eventId, options),
      },
      onsessioninitialized: onInitialized,
    });
    transport.onclose = () => {
      if (this.#live.get(hash)?.transport === transport) this.#live.delete(hash);
      this.#o.onSessionClosed?.(hash);
    };
    server.onerror = (err) => this.#o.logger.debug({ err }, 'mcp protocol error');
    await server.connect(transport);
    return { server, transport };
  }

  /**
   * Rebuilds a stored session in this process by replaying its initialize request. Only the
   * id's hash is stored; the caller has just presented the id itself, which is what the new
   * transport will check later requests against.
   */
  #restore(session: McpSession, principal: Principal, id: string): Promise<LiveSession> {
    const pending = this.#restoring.get(session.hash);
    if (pending) return pending;
    const restoring = (async () => {
      const replaying = { on: true };
      const live = await this.#build(session.hash, id, async () => {}, replaying);
      const authInfo = authInfoFor(principal);
      const headers = { accept: 'application/json, text/event-stream', 'content-type': 'application/json' };
      const url = 'http://bulwark.internal/mcp';
      const answer = await live.transport.handleRequest(new Request(url, { method: 'POST', headers }), {
        parsedBody: { jsonrpc: '2.0', id: 'bulwark-restore', method: 'initialize', params: session.initParams },
        authInfo,
      });
      // Read to the end: the SDK answers initialize at once and then closes the stream.
      await answer.text();
      const initialized = new Request(url, { method: 'POST', headers: { ...headers, 'mcp-session-id': id } });
      await live.transport.handleRequest(initialized, { parsedBody: { jsonrpc: '2.0', method: 'notifications/initialized' }, authInfo });
      replaying.on = false;
      this.#live.set(session.hash, live);
      return live;
    })();
    this.#restoring.set(session.hash, restoring);
    return restoring.finally(() => this.#restoring.delete(session.hash));
  }

  /** HTTP 403 with the MCP authorization spec's step-up challenge. */
  #deny(c: Context<BulwarkEnv>, principal: Principal, requirement: Requirement): never {
    this.#o.audit({
      type: 'authz.denied',
      outcome: 'denied',
      tenantId: principal.tenant,
      keyId: principal.keyId,
      ...requestFacts(c),
      details: { required: requirement.scopes.length === 1 ? requirement.scopes[0] : requirement.scopes, target: requirement.target, granted: [...principal.scopes] },
    });
    const named = requirement.scopes.map((s) => `'${s}'`).join(' and ');
    throw new ApiError('insufficient_scope', `${requirement.target} needs the ${named} scope, which this credential does not have.`, {
      // RFC 6750 §3: scope is a space-separated list.
      'WWW-Authenticate': `Bearer error="insufficient_scope", scope="${requirement.scopes.join(' ')}", resource_metadata="${this.#o.resourceMetadataUrl(c)}"`,
    });
  }

  /** Per-tool and per-scope calls per minute per key; every applicable limit counts. */
  async #limit(c: Context<BulwarkEnv>, principal: Principal, requirements: readonly Requirement[]): Promise<void> {
    const refused = await this.#refusal(principal, requirements, requestFacts(c));
    if (refused) throw new ApiError('rate_limited', `Too many calls for ${refused.subject}; slow down.`, refusalHeaders(refused.result));
  }

  /**
   * The same limits for a tool the agent calls on the caller's behalf (src/agent/): a refusal
   * comes back as a message for the model rather than an HTTP answer.
   */
  async toolCallRefusal(principal: Principal, tool: { name: string; scope: string }): Promise<string | undefined> {
    const refused = await this.#refusal(principal, [{ scopes: [tool.scope], target: `tools/call ${tool.name}`, tool: tool.name }], {});
    return refused && `Too many calls for ${refused.subject}; retry in ${refusalHeaders(refused.result)['Retry-After']} s.`;
  }

  async #refusal(principal: Principal, requirements: readonly Requirement[], facts: Partial<AuditEventInput>): Promise<{ subject: string; result: RateLimitResult } | undefined> {
    const { tools, scopes } = this.#o.rateLimits;
    const checks: Array<{ limit: string; subject: string; result: Promise<RateLimitResult> }> = [];
    // Own properties only: a tool called `constructor` must not find Object.prototype's.
    const perMinute = (table: Readonly<Record<string, number>>, name: string) => (Object.hasOwn(table, name) ? table[name] : undefined);
    for (const requirement of requirements) {
      const perTool = requirement.tool !== undefined ? perMinute(tools, requirement.tool) : undefined;
      if (perTool !== undefined) {
        const rule = { name: `mcp-tool:${encodeURIComponent(requirement.tool as string)}`, points: perTool, durationSeconds: 60 };
        checks.push({ limit: 'mcp_tool', subject: `tool ${requirement.tool}`, result: this.#o.limiter.consume(principal.keyId, rule) });
      }
      for (const scope of requirement.scopes) {
        const perScope = perMinute(scopes, scope);
        if (perScope === undefined) continue;
        const rule = { name: `mcp-scope:${scope}`, points: perScope, durationSeconds: 60 };
        checks.push({ limit: 'mcp_scope', subject: `scope ${scope}`, result: this.#o.limiter.consume(principal.keyId, rule) });
      }
    }
    for (const check of checks) {
      const result = await check.result;
      if (result.allowed) continue;
      this.#o.onRefused?.(check.limit);
      if (crossedLimit(result, 1)) {
        this.#o.audit({ type: 'rate_limit.exceeded', outcome: 'denied', tenantId: principal.tenant, keyId: principal.keyId, ...facts, details: { limit: check.limit, subject: check.subject, perMinute: result.limit } });
      }
      return { subject: check.subject, result };
    }
    return undefined;
  }

  async #ended(session: McpSession, reason: string, c?: Context<BulwarkEnv>): Promise<void> {
    await this.#o.sessions.end(session.hash);
    await this.#forget(session.hash);
    this.#o.audit({
      type: 'mcp.session_ended',
      outcome: 'info',
      tenantId: session.tenant,
      keyId: session.keyId,
      ...(c ? requestFacts(c) : {}),
      details: { reason, ref: session.ref },
    });
  }

  /** What is left of an ended session: its event history, and its transport if this process has one. */
  async #forget(hash: string): Promise<void> {
    this.#closeLocal(hash);
    await this.#o.history.deleteSession(hash).catch((err: unknown) => this.#o.logger.warn({ err }, 'the history of an ended MCP session could not be deleted; it expires by age'));
  }

  #closeLocal(hash: string): void {
    const live = this.#live.get(hash);
    if (!live) return;
    this.#live.delete(hash);
    void live.transport.close().catch(() => {});
  }

  /** Live sessions as operators see them; a tenant's admin key sees only its tenant's. */
  async listSessions(actor: Actor, filter: { tenant?: string | undefined; keyId?: string | undefined } = {}): Promise<McpSessionView[]> {
    const tenant = crossesTenants(actor.principal) ? filter.tenant : actor.principal.tenant;
    return (await this.#o.sessions.list({ tenant, keyId: filter.keyId })).map(describeMcpSession);
  }

  /** Ends a session by its public ref at once; its next request, on any instance, gets 404. */
  async terminateSession(actor: Actor, ref: string): Promise<Result<McpSessionView>> {
    const session = await this.#o.sessions.endByRef(ref, crossesTenants(actor.principal) ? undefined : actor.principal.tenant);
    if (!session) return { ok: false, code: 'not_found', message: `No live MCP session with ref '${ref.slice(0, 64)}'.` };
    await this.#forget(session.hash);
    this.#o.audit({
      type: 'mcp.session_terminated',
      outcome: 'success',
      tenantId: session.tenant,
      keyId: actor.principal.keyId,
      ...actorFacts(actor),
      details: { ref: session.ref, ownerKeyId: session.keyId, via: actor.via },
    });
    return { ok: true, value: describeMcpSession(session) };
  }

  /** Sends a notification to a session open in this process (upstream resource updates, log lines between calls). */
  notify(sessionHash: string, notification: ServerNotification): void {
    void this.#live.get(sessionHash)?.server.notification(notification).catch(() => {});
  }

  /** Ends every session of a key that was revoked or deleted. */
  async endForKey(keyId: string): Promise<void> {
    for (const hash of await this.#o.sessions.endForKey(keyId)) await this.#forget(hash);
  }

  /** Ends idle and expired sessions and drops old history; run on a timer. */
  async purge(): Promise<number> {
    const ended = await this.#o.sessions.purgeExpired();
    for (const { session, reason } of ended) {
      await this.#forget(session.hash);
      this.#o.audit({ type: 'mcp.session_ended', outcome: 'info', tenantId: session.tenant, keyId: session.keyId, details: { reason, ref: session.ref } });
    }
    // Sessions ended elsewhere (another instance's purge, terminate or DELETE) leave their transports here.
    const open = await this.#o.sessions.stillOpen([...this.#live.keys()]);
    for (const hash of this.#live.keys()) if (!open.has(hash)) this.#closeLocal(hash);
    await this.#o.history.purgeExpired();
    return ended.length;
  }

  /** Closes every open stream (shutdown); the sessions stay in the store for the next start. */
  async close(): Promise<void> {
    this.#unsubscribe();
    const live = [...this.#live.values()];
    this.#live.clear();
    await Promise.all(live.map((l) => l.transport.close().catch(() => {})));
  }
}
