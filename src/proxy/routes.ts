/**
 * The Anthropic-compatible routes on the public listener: `POST /v1/messages` (JSON or SSE),
 * `POST /v1/messages/count_tokens`, `GET /v1/models`, `GET /v1/models/{id}`, and any path an
 * operator allow-lists. The client's Bulwark key never goes upstream; the tenant's credential
 * does. Every call, failed or not, becomes one `requests` row.
 */
import { randomUUID } from 'node:crypto';
import { type Context, Hono, type MiddlewareHandler } from 'hono';
import type { AuditEventInput } from '../audit/log.js';
import { requireScope } from '../auth/middleware.js';
import { clientIp, requestHeader, requestPath, requestTarget } from '../http/client-info.js';
import type { BulwarkEnv } from '../http/context.js';
import { ANTHROPIC_ERROR_TYPE, ApiError, ERROR_STATUS, anthropicErrorBody } from '../http/errors.js';
import type { CredentialRecord, UpstreamCredential } from './credentials.js';
import type { Principal } from '../auth/principal.js';
import { type BudgetLedger, type Price, type PriceTable, type Reservation, type Subject, costOf, modelAllowed, priceFor, totalTokens } from './limits.js';
import type { OAuthRefresher } from './oauth.js';
import { BodyTooLargeError, hasNodeResponse, onClientGone, readBody, relay, requestHeaderPairs } from './node-io.js';
import { BodyCapture, MAX_STORED_BODY_BYTES, sealBody } from './retention.js';
import { DecryptError, type KeyRing } from '../store/crypto.js';
import type { Metrics } from '../monitor/metrics.js';
import { type StreamEnd, clientHeaders, passThrough, toWebHeaders, upstreamHeaders } from './forward.js';
import type { RequestLog, RequestRecord } from './request-log.js';
import { type Upstream, UpstreamAbort, classifyUpstreamError } from './upstream.js';
import { UsageMeter } from './usage.js';
import { payloadTooLarge } from '../security/body-limit.js';
import { parseJsonBody } from '../security/json.js';

export interface CredentialResolver {
  resolve(tenant: string): Promise<CredentialRecord | undefined>;
}

export interface ProxyOptions {
  ledger: BudgetLedger;
  /** The limit subjects of a caller: its key and its tenant, each with its limit set. */
  subjectsFor: (principal: Principal) => Subject[];
  prices: PriceTable;
  upstream: Upstream;
  credentials: CredentialResolver;
  oauth: OAuthRefresher;
  requestLog: RequestLog;
  audit: (event: AuditEventInput) => void;
  /** Further `/v1/...` paths (exact, or ending in `*`) forwarded as they are. */
  allowPaths?: readonly string[];
  /** With a key ring: store request and response bodies, masked and encrypted. */
  storeBodies?: KeyRing | undefined;
  metrics?: Metrics | undefined;
  /** A client that reads nothing for this long mid-response is cut off (default 5 min). */
  stallTimeoutMs?: number;
}

/** Marks `/v1/*` so errors are written in Anthropic's shape; runs before authentication. */
export function anthropicErrors(): MiddlewareHandler<BulwarkEnv> {
  return async function anthropicErrorsMiddleware(c, next) {
    c.set('errorFormat', 'anthropic');
    await next();
  };
}

interface Forward {
  /** `json`: read and parse the body for model and stream flag; `raw`: forward it unread. */
  body: 'none' | 'raw' | 'json';
}

const encoder = new TextEncoder();
/** Stateless between calls (no `stream` option), so one serves every request. */
const decoder = new TextDecoder();
/** Anthropic's own limit for a Messages request. */
const MAX_REQUEST_BYTES = 32 * 1024 * 1024;
/** A non-streaming answer up to this size goes to the client in one write, with a Content-Length. */
const HOLD_JSON_BYTES = 1024 * 1024;
/** Reserved for output when a request names no max_tokens (upstream will refuse it anyway). */
const DEFAULT_MAX_TOKENS = 4096;

export function proxyRoutes(options: ProxyOptions): Hono<BulwarkEnv> {
  const { ledger, subjectsFor, prices, upstream, credentials, oauth, requestLog, audit, allowPaths = [], storeBodies, metrics, stallTimeoutMs = 300_000 } = options;
  const write = requireScope(['llm', 'write'], { audit });
  const read = requireScope(['llm', 'read'], { audit });
  const allowed = (path: string) => allowPaths.some((p) => (p.endsWith('*') ? path.startsWith(p.slice(0, -1)) : path === p));

  async function forward(c: Context<BulwarkEnv>, spec: Forward): Promise<Response> {
    const started = performance.now();
    const principal = c.get('principal');
    const target = requestTarget(c);
    const row: RequestRecord = {
      id: randomUUID(),
      time: new Date().toISOString(),
      tenantId: principal.tenant,
      keyId: principal.keyId,
      method: c.req.method,
      path: target.path,
      model: null,
      stream: false,
      status: 0,
      errorType: null,
      inputTokens: 0,
      outputTokens: 0,
      cacheCreationInputTokens: 0,
      cacheReadInputTokens: 0,
      costUsd: 0,
      latencyMs: 0,
      firstTokenMs: null,
      ip: clientIp(c) ?? null,
      userAgent: requestHeader(c, 'user-agent') ?? null,
      requestId: c.get('requestId'),
      upstreamRequestId: null,
      requestBody: null,
      responseBody: null,
    };
    let reservation: Reservation | undefined;
    let price: Price | undefined;
    let body: Uint8Array | undefined;
    const capture = storeBodies ? new BodyCapture() : undefined;
    // Bulwark's own error answers are not stored as response bodies: they are in the row already.
    let isBulwarkAnswer = true;
    const finish = (status: number, errorType: string | null) => {
      row.status = status;
      row.errorType ??= errorType;
      row.latencyMs = Math.round(performance.now() - started);
      row.costUsd = costOf(row, price);
      reservation?.settle({ requests: 1, tokens: totalTokens(row), usd: row.costUsd });
      if (storeBodies && body && body.byteLength > 0) {
        row.requestBody = sealBody(storeBodies, decoder.decode(body.subarray(0, MAX_STORED_BODY_BYTES)), row.tenantId, row.id, 'request_body');
      }
      if (storeBodies && capture && row.status > 0 && !isBulwarkAnswer) {
        const text = capture.text();
        if (text) row.responseBody = sealBody(storeBodies, text, row.tenantId, row.id, 'response_body');
      }
      requestLog.push(row);
      metrics?.inc('bulwark_proxy_requests_total', 'Calls to /v1, by HTTP status and whether they streamed.', { status: String(row.status), stream: String(row.stream) });
      metrics?.inc('bulwark_proxy_tokens_total', 'Tokens used through /v1, by kind.', { kind: 'input' }, row.inputTokens);
      metrics?.inc('bulwark_proxy_tokens_total', 'Tokens used through /v1, by kind.', { kind: 'output' }, row.outputTokens);
    };
    const fail = (error: ApiError): never => {
      finish(error.status, error.code);
      throw error;
    };

    let maxTokens = DEFAULT_MAX_TOKENS;
    // Watch for the client going away from the start: a call it abandons must not go upstream.
    const abort = new UpstreamAbort();
    const stopWatching = onClientGone(c, () => abort.abort());
    if (spec.body !== 'none') {
      // The body-limit layer chose the cap for this path; counted while reading, never buffered past it.
      const limit = c.get('bodyLimit') ?? MAX_REQUEST_BYTES;
      try {
        body = await readBody(c, limit);
      } catch (err) {
        if (err instanceof BodyTooLargeError || (err instanceof ApiError && err.code === 'payload_too_large')) {
          return fail(payloadTooLarge(limit));
        }
        finish(499, 'client_disconnected');
        return new Response(null, { status: 499 });
      }
    }
    if (spec.body === 'json' && body) {
      let parsed: unknown;
      try {
        parsed = parseJsonBody(decoder.decode(body));
      } catch (err) {
        fail(err as ApiError);
      }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) fail(new ApiError('bad_request', 'The request body must be a JSON object.'));
      const fields = parsed as { model?: unknown; stream?: unknown; max_tokens?: unknown };
      // Control characters (NUL above all) would make the database refuse the row.
      if (typeof fields.model === 'string') row.model = fields.model.replace(/[\u0000-\u001f\u007f]/g, '').slice(0, 200);
      row.stream = fields.stream === true;
      if (typeof fields.max_tokens === 'number' && fields.max_tokens > 0) maxTokens = Math.floor(fields.max_tokens);
    }

    // Limits, budgets and model allow-lists: the one enforcement point for every /v1 call.
    const subjects = subjectsFor(principal);
    if (spec.body === 'json') {
      for (const subject of subjects) {
        if (!modelAllowed(subject.limits.models, row.model)) {
          fail(new ApiError('forbidden', `Model '${row.model ?? '(none)'}' is not allowed for this ${subject.kind}.`));
        }
      }
    }
    if (spec.body !== 'json' && c.req.path !== '/v1/models' && !c.req.path.startsWith('/v1/models/')) {
      // An allow-listed path is forwarded unread, so its tokens and model cannot be metered:
      // keys and tenants under a token or dollar budget or a model list may not use it.
      const metered = subjects.find((s) => ['tokensPerMinute', 'tokensPerDay', 'tokensPerMonth', 'usdPerDay', 'usdPerMonth', 'models'].some((k) => s.limits[k as keyof typeof s.limits] !== undefined));
      if (metered) fail(new ApiError('forbidden', `${target.path} is not metered, so it is closed to a ${metered.kind} with token or dollar budgets or a model list.`));
    }
    price = priceFor(prices, row.model);
    const budgeted = subjects.some((s) => s.limits.usdPerDay !== undefined || s.limits.usdPerMonth !== undefined);
    if (budgeted && spec.body === 'json' && !price && c.req.path === '/v1/messages') {
      fail(new ApiError('forbidden', `No price is configured for model '${row.model ?? '(none)'}', so the dollar budget that applies cannot be enforced.`));
    }
    // What this call may use at most: the request, its input (estimated from the body size,
    // generously) plus max_tokens of output, and what that would cost.
    const generates = c.req.path === '/v1/messages' && body !== undefined;
    const estimated = generates ? { inputTokens: Math.ceil((body as Uint8Array).byteLength / 3), outputTokens: maxTokens, cacheCreationInputTokens: 0, cacheReadInputTokens: 0 } : undefined;
    const outcome = await ledger
      .reserve(subjects, { requests: 1, tokens: estimated ? totalTokens(estimated) : 0, usd: estimated ? costOf(estimated, price) : 0 })
      .catch(() => fail(new ApiError('service_unavailable', 'Bulwark cannot read the usage it needs to enforce your limits right now; try again shortly.', { 'Retry-After': '1' })));
    if (!outcome.ok) {
      audit({
        type: 'limit.exceeded',
        outcome: 'denied',
        tenantId: principal.tenant,
        keyId: principal.keyId,
        ip: row.ip,
        userAgent: row.userAgent,
        method: row.method,
        path: row.path,
        requestId: row.requestId,
        details: { subject: outcome.subject.kind, subjectId: outcome.subject.id, rule: outcome.rule, limit: outcome.limit, model: row.model, retryAfterSeconds: outcome.retryAfterSeconds },
      });
      fail(new ApiError('rate_limited', `The ${outcome.subject.kind}'s ${outcome.rule} limit (${outcome.limit}) would be exceeded; retry after ${outcome.retryAfterSeconds} s.`, outcome.headers));
    }
    reservation = outcome as Reservation;

    const resolved = await credentials.resolve(principal.tenant).catch((err: unknown) => {
      if (err instanceof DecryptError) {
        // Not an outage: the stored credential cannot be read with the configured keys.
        audit({ type: 'credentials.invalid', outcome: 'failure', tenantId: principal.tenant, requestId: row.requestId, details: { source: 'store', reason: `cannot be decrypted (${err.reason})`, keyId: err.keyId ?? null } });
        return fail(new ApiError('upstream_error', 'The stored upstream credential for this tenant cannot be decrypted; an operator must set it again or restore its encryption key.'));
      }
      return fail(new ApiError('service_unavailable', 'Bulwark cannot read the upstream credential right now; try again shortly.', { 'Retry-After': '1' }));
    });
    if (!resolved) return fail(new ApiError('upstream_error', `Bulwark has no upstream credential for tenant '${principal.tenant}'.`));
    const record = resolved;
    const refreshFailed = () => {
      row.errorType = 'upstream_credential_refresh_failed';
      return fail(new ApiError('upstream_error', 'The upstream credential for this tenant could not be refreshed.'));
    };
    const fresh = await oauth.ensureFresh(record);
    if (!fresh.ok) return refreshFailed();
    let credential = fresh.credential;

    const incomingHeaders = requestHeaderPairs(c);
    let dispatched = false;
    const send = async (using: UpstreamCredential) => {
      if (!abort.aborted) dispatched = true;
      try {
        return await upstream.send({
          method: c.req.method,
          path: `${target.path}${target.search}`,
          headers: upstreamHeaders(incomingHeaders, using),
          body,
          signal: abort,
        });
      } catch (err) {
        stopWatching();
        if (abort.aborted) return undefined;
        const failure = classifyUpstreamError(err);
        row.errorType = failure.cause;
        return fail(new ApiError(failure.code, failure.message));
      }
    };
    let response = await send(credential);
    if (response?.statusCode === 401 && credential.type === 'oauth') {
      // The token may have been revoked or expired early: refresh once and retry. No byte has
      // reached the client yet, so this is safe for streaming requests too.
      await response.body.dump().catch(() => {});
      const again = await oauth.afterRejection(record, credential);
      if (!again.ok) return refreshFailed();
      credential = again.credential;
      response = await send(credential);
    }
    if (!response || abort.aborted) {
      // The client left before upstream answered. If the call went out, upstream may have
      // counted its input; if it never left, nothing is charged.
      if (estimated && dispatched) row.inputTokens = estimated.inputTokens;
      response?.body.destroy();
      finish(499, 'client_disconnected');
      return new Response(null, { status: 499 });
    }
    row.upstreamRequestId = headerValue(response.headers['request-id']);

    if (response.statusCode === 401) {
      // The upstream refused *our* credential; the client's key was fine, so it must not see a 401.
      await response.body.dump().catch(() => {});
      audit({ type: 'upstream.credential_refused', outcome: 'failure', tenantId: principal.tenant, keyId: principal.keyId, requestId: c.get('requestId'), details: { source: record.source, credentialType: credential.type } });
      row.errorType = 'upstream_credential_refused';
      return fail(new ApiError('upstream_error', 'The upstream API refused the credential Bulwark holds for this tenant.'));
    }

    const headers = clientHeaders(response.headers);
    headers['x-request-id'] = c.get('requestId');
    // Where Bulwark enforces limits, its remaining/reset figures are the ones to pace by.
    for (const [name, value] of Object.entries(reservation.headers)) headers[name] = value;
    const contentType = headerValue(response.headers['content-type']) ?? undefined;

    const sse = /^text\/event-stream\b/i.test(contentType ?? '');
    const meter = new UsageMeter(contentType, started);
    const status = response.statusCode;
    isBulwarkAnswer = false;
    /** What the client is told of an upstream that failed mid-answer: a timeout as such, else `brokeOff`. */
    const upstreamFailure = (error: unknown, brokeOff: string) => {
      const failure = classifyUpstreamError(error);
      const message = failure.code === 'upstream_timeout' ? failure.message : brokeOff;
      return { status: ERROR_STATUS[failure.code], body: anthropicErrorBody(ANTHROPIC_ERROR_TYPE[failure.code], message, c.get('requestId')) };
    };
    const streamErrorEvent = (error: unknown) => {
      const { body: event } = upstreamFailure(error, 'The upstream connection broke off mid-stream.');
      return encoder.encode(`event: error\ndata: ${JSON.stringify(event)}\n\n`);
    };
    const onEnd = (end: StreamEnd) => {
      stopWatching();
      if (end.kind !== 'complete') meter.estimateUnfinishedOutput();
      const usage = meter.finish();
      row.model = usage.model ?? row.model;
      row.inputTokens = usage.inputTokens;
      row.outputTokens = usage.outputTokens;
      row.cacheCreationInputTokens = usage.cacheCreationInputTokens;
      row.cacheReadInputTokens = usage.cacheReadInputTokens;
      row.firstTokenMs = usage.firstTokenMs;
      if (end.kind === 'client_disconnected') return finish(status, 'client_disconnected');
      if (end.kind === 'upstream_failed') {
        // Bulwark answered in upstream's place: the row has its status, and no upstream body is stored.
        if (end.answered !== undefined) isBulwarkAnswer = true;
        return finish(end.answered ?? status, classifyUpstreamError(end.error).cause);
      }
      finish(status, usage.errorType);
    };
    c.set('sentStatus', status);
    if (hasNodeResponse(c)) {
      return relay(c, {
        stallTimeoutMs,
        status,
        headers,
        body: response.body,
        onChunk: (chunk) => {
          meter.feed(chunk);
          capture?.add(chunk);
        },
        errorEvent: sse ? streamErrorEvent : undefined,
        onEnd,
        abortUpstream: () => abort.abort(),
        // A JSON answer is sent whole (it is read whole anyway); no body may carry a length on HEAD, 204 or 304.
        holdBytes: sse || c.req.method === 'HEAD' || status === 204 || status === 304 ? 0 : HOLD_JSON_BYTES,
        failedBeforeSending: (error) => {
          const { status: failedStatus, body: answer } = upstreamFailure(error, 'The upstream connection broke off before the answer was complete.');
          const answerHeaders = { 'content-type': 'application/json', 'x-request-id': c.get('requestId'), ...reservation.headers };
          return { status: failedStatus, headers: answerHeaders, body: encoder.encode(JSON.stringify(answer)) };
        },
      });
    }
    const stream = passThrough({ body: response.body, meter, capture, sse, abortUpstream: () => abort.abort(), streamErrorEvent, onEnd });
    return new Response(stream, { status, headers: toWebHeaders(headers) });
  }

  const app = new Hono<BulwarkEnv>();
  app.post('/v1/messages', write, (c) => forward(c, { body: 'json' }));
  app.post('/v1/messages/count_tokens', write, (c) => forward(c, { body: 'json' }));
  app.get('/v1/models', read, (c) => forward(c, { body: 'none' }));
  app.get('/v1/models/:id', read, (c) => forward(c, { body: 'none' }));
  app.all('/v1/*', write, (c) => {
    const path = requestPath(c);
    if (!allowed(path)) throw new ApiError('not_found', `Bulwark does not forward ${c.req.method} ${path}.`);
    return forward(c, { body: c.req.method === 'GET' || c.req.method === 'HEAD' ? 'none' : 'raw' });
  });
  return app;
}

function headerValue(value: string | string[] | undefined): string | null {
  return (Array.isArray(value) ? value[0] : value) ?? null;
}
