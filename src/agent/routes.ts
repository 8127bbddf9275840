/**
 * The agent API on the public listener (issue #7):
 *
 *   POST   /api/message        write  run the agent on a message; JSON, or SSE with `stream: true`
 *   GET    /api/llm/current    read   provider, model and agent settings (no secrets)
 *   POST   /api/llm/switch     admin  change the model within the configured list (operators); audited
 *   GET    /api/sessions       read   the caller's conversations
 *   GET    /api/sessions/:id   read   one conversation's history
 *   DELETE /api/sessions/:id   write  delete one
 *   GET    /api/events         read   SSE: the caller's agent events, heartbeats, Last-Event-ID
 *   POST   /api/events/ticket  read   a single-use ticket for `GET /api/events?ticket=` (browsers)
 *
 * Conversations and events belong to the key (./sessions.ts says why); any other key's id is
 * answered like an unknown one (404).
 */
import type { UnderlyingSource } from 'node:stream/web';
import { Hono } from 'hono';
import type { Context } from 'hono';
import { z } from 'zod';
import type { AuditEventInput } from '../audit/log.js';
import { deniedEvent } from '../auth/key-service.js';
import { requireScope } from '../auth/middleware.js';
import { crossesTenants } from '../auth/principal.js';
import { actorOf, clientIp, requestFacts } from '../http/client-info.js';
import type { BulwarkEnv } from '../http/context.js';
import { ApiError, type ErrorCode } from '../http/errors.js';
import { readJson } from '../http/validate.js';
import { type AgentEvent, AgentModelError, type AgentOptions, type AgentResult, runAgent } from './agent.js';
import { type EventFeed, type FeedEvent, visibleTo } from './events.js';
import { AgentSessionStore, SESSION_ID, isAgentSessionId } from './sessions.js';
import type { TicketStore } from './tickets.js';

const SSE_HEADERS = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache, no-transform', 'x-accel-buffering': 'no' };
/** Event streams one key may hold open at once. */
const MAX_STREAMS_PER_KEY = 10;
/** What one event stream may hold for a client that does not read before it is cut off. */
const MAX_BUFFERED_BYTES = 1024 * 1024;
/** setTimeout's longest delay; a later expiry needs no timer, as nothing stays open that long unnoticed. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export const MessageBody = z.strictObject({
  message: z.string().min(1).max(100_000),
  sessionId: z.string().regex(SESSION_ID, 'is not a session id').optional(),
  stream: z.boolean().optional(),
});
export const SwitchBody = z.strictObject({ model: z.string().min(1).max(200) });

export interface AgentRoutesOptions extends Omit<AgentOptions, 'audit'> {
  sessions: AgentSessionStore;
  feed: EventFeed;
  tickets: TicketStore;
  /** Heartbeat comment interval on /api/events. */
  heartbeatMs?: number;
  /** The configured model and the others `/api/llm/switch` may choose. */
  model: string;
  models: readonly string[];
  audit(event: AuditEventInput): void;
}

/** The code a failed model call is answered with, by the status Bulwark's /v1 route gave it; anything else is the upstream's failure. */
const MODEL_FAILURE_CODE: Readonly<Record<number, ErrorCode>> = {
  400: 'bad_request',
  403: 'forbidden',
  413: 'payload_too_large',
  429: 'rate_limited',
  503: 'service_unavailable',
  504: 'upstream_timeout',
};

/** How a failed model call is answered: the status and meaning Bulwark's /v1 route gave it. */
function modelFailure(error: AgentModelError): ApiError {
  const { status, message, headers } = error.answer;
  const code = MODEL_FAILURE_CODE[status] ?? 'upstream_error';
  const kept = Object.fromEntries(Object.entries(headers).filter(([name]) => /^(retry-after|ratelimit-|anthropic-ratelimit-)/i.test(name)));
  return new ApiError(code, `The model call failed: ${message}`, kept);
}

export function agentRoutes(options: AgentRoutesOptions): Hono<BulwarkEnv> {
  const { sessions, audit, feed, tickets, heartbeatMs = 15_000 } = options;
  const allowedModels = [...new Set([options.model, ...options.models])];
  let model = options.model;

  const read = requireScope('read', { audit });
  const write = requireScope('write', { audit });
  const admin = requireScope('admin', { audit });

  const sessionParam = (c: Context<BulwarkEnv>) => {
    const id = c.req.param('id') ?? '';
    if (!isAgentSessionId(id)) throw new ApiError('not_found', 'No such session.');
    return id;
  };

  return new Hono<BulwarkEnv>()
    .post('/api/message', write, async (c) => {
      const body = await readJson(c, MessageBody);
      const principal = c.get('principal');
      const sessionId = body.sessionId ?? AgentSessionStore.newId();
      const history = body.sessionId ? await sessions.history(principal, body.sessionId) : [];
      if (!history) throw new ApiError('not_found', 'No such session.');
      const readTurns = body.sessionId ? history.length : undefined;
      const abort = new AbortController();
      c.req.raw.signal.addEventListener('abort', () => abort.abort(), { once: true });
      const run = (emit?: (event: AgentEvent) => void) =>
        runAgent(
          { ...options, audit },
          {
            principal,
            sessionId,
            model,
            message: body.message,
            history,
            signal: abort.signal,
            facts: { requestId: c.get('requestId'), ip: clientIp(c), userAgent: c.req.header('user-agent') },
            emit: (event) => {
              const { type, ...data } = event;
              feed.publish(principal, type, { sessionId, ...data });
              emit?.(event);
            },
          },
        ).then(async (result: AgentResult) => {
          // Another message on this session finished first, or the session was deleted meanwhile.
          if (!(await sessions.save(principal, sessionId, result.history, readTurns))) {
            throw new ApiError('conflict', 'The conversation changed while this message ran (another message, or it was deleted); nothing of this message was kept.');
          }
          return result;
        }).catch((err: unknown) => {
          // Watchers saw the message start; they learn it ended too.
          const reason = abort.signal.aborted ? 'client_left' : err instanceof AgentModelError ? modelFailure(err).code : err instanceof ApiError ? err.code : 'internal_error';
          feed.publish(principal, 'message_failed', { sessionId, reason });
          throw err;
        });
      if (!body.stream) {
        let result: AgentResult;
        try {
          result = await run();
        } catch (err) {
          // The client left and the loop stopped with it; there is no one to answer.
          if (abort.signal.aborted) return new Response(null, { status: 499 });
          throw err instanceof AgentModelError ? modelFailure(err) : err;
        }
        return c.json({ sessionId, reply: result.reply, toolCalls: result.toolCalls, usage: result.usage, model: result.model, steps: result.steps, stopped: result.stopped });
      }
      const encoder = new TextEncoder();
      let gone = false;
      const stream = new ReadableStream<Uint8Array>({
        start(controller) {
          // The client may leave at any point; nothing is written, and nothing throws, after that.
          const send = (event: string, data: unknown) => {
            if (!gone) controller.enqueue(encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`));
          };
          run((event) => {
            const { type, ...data } = event;
            send(type, data);
          })
            .then((result) => send('done', { sessionId, toolCalls: result.toolCalls, steps: result.steps }))
            .catch((err: unknown) => {
              // The client left: the loop stopped on purpose and there is no one to tell.
              if (abort.signal.aborted) return;
              const failure = err instanceof AgentModelError ? modelFailure(err) : err instanceof ApiError ? err : new ApiError('internal_error', 'The agent failed.');
              if (!(err instanceof AgentModelError) && !(err instanceof ApiError)) options.logger.error({ err }, 'agent failed');
              send('error', { error: { code: failure.code, message: failure.message, requestId: c.get('requestId') } });
            })
            .finally(() => {
              if (!gone) controller.close();
            });
        },
        cancel() {
          gone = true;
          abort.abort();
        },
      });
      return new Response(stream, { headers: SSE_HEADERS });
    })
    .get('/api/llm/current', read, (c) =>
      c.json({ provider: 'anthropic', model, models: allowedModels, maxSteps: options.maxSteps, maxTokens: options.maxTokens }),
    )
    .post('/api/llm/switch', admin, async (c) => {
      // One model serves every tenant: a tenant's admin key may not change it for the others.
      if (!crossesTenants(c.get('principal'))) {
        audit(deniedEvent(actorOf(c), 'agent.switch_model', { reason: 'operator_only' }));
        throw new ApiError('forbidden', "Only an operator can switch the agent's model; it serves every tenant.");
      }
      const { model: wanted } = await readJson(c, SwitchBody);
      if (!allowedModels.includes(wanted)) throw new ApiError('validation_failed', `model: '${wanted}' is not one of ${allowedModels.join(', ')}.`);
      const previous = model;
      model = wanted;
      const principal = c.get('principal');
      audit({ type: 'agent.model_switched', outcome: 'success', tenantId: principal.tenant, keyId: principal.keyId, ...requestFacts(c), details: { from: previous, to: wanted } });
      feed.publish(undefined, 'model_switched', { from: previous, to: wanted });
      return c.json({ provider: 'anthropic', model, previous });
    })
    .get('/api/sessions', read, async (c) => c.json({ sessions: await sessions.list(c.get('principal')) }))
    .get('/api/sessions/:id', read, async (c) => {
      const id = sessionParam(c);
      const history = await sessions.history(c.get('principal'), id);
      if (!history) throw new ApiError('not_found', 'No such session.');
      return c.json({ id, history });
    })
    .delete('/api/sessions/:id', write, async (c) => {
      const id = sessionParam(c);
      const principal = c.get('principal');
      if (!(await sessions.delete(principal, id))) throw new ApiError('not_found', 'No such session.');
      audit({ type: 'agent.session_deleted', outcome: 'success', tenantId: principal.tenant, keyId: principal.keyId, ...requestFacts(c), details: { sessionId: id } });
      feed.publish(principal, 'session_ended', { sessionId: id });
      return c.json({ id, deleted: true });
    })
    .post('/api/events/ticket', read, async (c) => {
      const { ticket, expiresAt } = await tickets.issue(c.get('principal'), c.req.header('origin'));
      return c.json({ ticket, expiresAt: expiresAt.toISOString(), url: `/api/events?ticket=${ticket}` }, 201, { 'cache-control': 'no-store' });
    })
    .get('/api/events', read, (c) => {
      const principal = c.get('principal');
      if (feed.openStreams(principal.keyId) >= MAX_STREAMS_PER_KEY) {
        audit({ type: 'rate_limit.exceeded', outcome: 'denied', tenantId: principal.tenant, keyId: principal.keyId, ...requestFacts(c), details: { limit: 'event_streams', perKey: MAX_STREAMS_PER_KEY } });
        throw new ApiError('rate_limited', `This key already has ${MAX_STREAMS_PER_KEY} event streams open.`, { 'Retry-After': '5' });
      }
      const encoder = new TextEncoder();
      // A browser's EventSource cannot set Last-Event-ID on a new connection (one with a fresh
      // ticket), so it may name it in the query instead.
      const lastEventId = c.req.header('last-event-id') ?? c.req.query('lastEventId');
      let unsubscribe = () => {};
      let heartbeat: NodeJS.Timeout | undefined;
      let closed = false;
      let untrack = () => {};
      let ending: NodeJS.Timeout | undefined;
      const close = () => {
        if (closed) return;
        closed = true;
        unsubscribe();
        untrack();
        clearInterval(heartbeat);
        clearTimeout(ending);
      };
      const source: UnderlyingSource<Uint8Array> = {
        start(controller) {
          const end = () => {
            if (closed) return;
            close();
            try {
              controller.close();
            } catch {
              // already closed
            }
          };
          const write = (text: string) => {
            // A client that stops reading is cut off rather than buffered for without end.
            if ((controller.desiredSize ?? 0) <= 0) return end();
            try {
              controller.enqueue(encoder.encode(text));
            } catch {
              close();
            }
          };
          // The stream ends with its credential: when the key is revoked, or the token expires.
          untrack = feed.track(principal.keyId, end);
          const left = principal.expiresAt ? principal.expiresAt.getTime() - Date.now() : Infinity;
          if (left < MAX_TIMER_MS) {
            ending = setTimeout(end, Math.max(0, left));
            ending.unref();
          }
          write(': bulwark events\nretry: 3000\n\n');
          const send = (event: FeedEvent) => write(`id: ${event.id}\nevent: ${event.type}\ndata: ${JSON.stringify(event.data)}\n\n`);
          if (lastEventId) for (const event of feed.since(lastEventId, principal)) send(event);
          unsubscribe = feed.subscribe((event) => {
            if (visibleTo(event, principal)) send(event);
          });
          heartbeat = setInterval(() => write(': heartbeat\n\n'), heartbeatMs);
          heartbeat.unref();
        },
        cancel: close,
      };
      const stream = new ReadableStream<Uint8Array>(source, new ByteLengthQueuingStrategy({ highWaterMark: MAX_BUFFERED_BYTES }));
      return new Response(stream, { headers: SSE_HEADERS });
    });
}
