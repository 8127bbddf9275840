/**
 * The closed list of error codes Bulwark answers with, their HTTP statuses, and the one
 * envelope every error is written in: `{ "error": { "code", "message", "requestId" } }`.
 *
 * Routes and middleware throw `ApiError`; `onError` is the only place that turns an error
 * into a response, so a 500 can never leak an internal message or a stack.
 */
import type { Context, ErrorHandler, NotFoundHandler } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';

export const ERROR_STATUS = {
  bad_request: 400,
  invalid_json: 400,
  validation_failed: 400,
  malformed_credential: 400,
  unauthorized: 401,
  insufficient_scope: 403,
  forbidden: 403,
  origin_not_allowed: 403,
  ip_not_allowed: 403,
  csrf_failed: 403,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  payload_too_large: 413,
  host_not_allowed: 421,
  rate_limited: 429,
  locked_out: 429,
  internal_error: 500,
  upstream_error: 502,
  service_unavailable: 503,
  upstream_timeout: 504,
} as const satisfies Record<string, ContentfulStatusCode>;

export type ErrorCode = keyof typeof ERROR_STATUS;

export interface ErrorEnvelope {
  error: { code: ErrorCode; message: string; requestId: string };
}

/**
 * The error `type` Anthropic's API would answer with for each code. On `/v1/*` errors are
 * written in Anthropic's shape so its SDKs raise the matching exception class.
 */
export const ANTHROPIC_ERROR_TYPE: Record<ErrorCode, string> = {
  bad_request: 'invalid_request_error',
  invalid_json: 'invalid_request_error',
  validation_failed: 'invalid_request_error',
  malformed_credential: 'invalid_request_error',
  unauthorized: 'authentication_error',
  insufficient_scope: 'permission_error',
  forbidden: 'permission_error',
  origin_not_allowed: 'permission_error',
  ip_not_allowed: 'permission_error',
  csrf_failed: 'permission_error',
  not_found: 'not_found_error',
  method_not_allowed: 'invalid_request_error',
  conflict: 'invalid_request_error',
  payload_too_large: 'request_too_large',
  host_not_allowed: 'invalid_request_error',
  rate_limited: 'rate_limit_error',
  locked_out: 'rate_limit_error',
  internal_error: 'api_error',
  upstream_error: 'api_error',
  service_unavailable: 'overloaded_error',
  upstream_timeout: 'api_error',
};

export interface AnthropicErrorBody {
  type: 'error';
  error: { type: string; message: string };
  request_id: string;
}

export function anthropicErrorBody(type: string, message: string, requestId: string): AnthropicErrorBody {
  return { type: 'error', error: { type, message }, request_id: requestId };
}

/** An error meant for the client: its message is shown as is, so it must never hold a secret. */
export class ApiError extends Error {
  readonly code: ErrorCode;
  readonly status: ContentfulStatusCode;
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.status = ERROR_STATUS[code];
    this.headers = headers;
  }
}

/** Writes the envelope. `requestId` comes from the request-id middleware when it ran. */
export function errorResponse(c: Context, error: ApiError): Response {
  const requestId = (c.get('requestId') as string | undefined) ?? '';
  for (const [name, value] of Object.entries(error.headers)) c.header(name, value);
  if (c.get('errorFormat') === 'anthropic') {
    c.header('request-id', requestId);
    return c.json(anthropicErrorBody(ANTHROPIC_ERROR_TYPE[error.code], error.message, requestId), error.status);
  }
  const body: ErrorEnvelope = { error: { code: error.code, message: error.message, requestId } };
  return c.json(body, error.status);
}

/**
 * Hono's error handler. ApiErrors are answered as they are; anything else is a bug or an outage:
 * it is logged (by the caller-supplied `log`) and answered with a bare 500.
 */
export function errorHandler(log: (err: unknown, c: Context) => void): ErrorHandler {
  return function onError(err, c) {
    if (err instanceof ApiError) return errorResponse(c, err);
    // Hono's own HTTPException (e.g. from a body parser) carries a status we can map.
    const status = (err as { status?: unknown }).status;
    if (typeof status === 'number' && status >= 400 && status < 500) {
      return errorResponse(c, fromStatus(status, err.message));
    }
    log(err, c);
    return errorResponse(c, new ApiError('internal_error', 'Internal server error.'));
  };
}

export const notFoundHandler: NotFoundHandler = (c) =>
  errorResponse(c, new ApiError('not_found', `No route for ${c.req.method} ${new URL(c.req.url).pathname}.`));

function fromStatus(status: number, message: string): ApiError {
  switch (status) {
    case 400:
      return new ApiError('bad_request', message || 'Bad request.');
    case 401:
      return new ApiError('unauthorized', 'Authentication required.');
    case 403:
      return new ApiError('forbidden', 'Forbidden.');
    case 404:
      return new ApiError('not_found', 'Not found.');
    case 405:
      return new ApiError('method_not_allowed', 'Method not allowed.');
    case 413:
      return new ApiError('payload_too_large', 'Request body too large.');
    default:
      return new ApiError('bad_request', 'Bad request.');
  }
}
