/**
 * The connection to the upstream Anthropic API: one undici pool per origin, with connect,
 * first-byte and idle timeouts, and a classification of transport failures into the statuses
 * a client should see (502 for a failed connection, 504 for a timeout). Node-specific.
 */
import { EventEmitter } from 'node:events';
import { type Dispatcher, Pool, errors } from 'undici';

export interface UpstreamOptions {
  /** Base URL, e.g. https://api.anthropic.com (a path prefix is kept). */
  baseUrl: string;
  connectTimeoutMs?: number;
  /** Until the response headers arrive. */
  firstByteTimeoutMs?: number;
  /** Between two chunks of the response body. */
  idleTimeoutMs?: number;
  connections?: number;
}

export interface UpstreamRequest {
  method: string;
  /** Path and query below the base URL, e.g. `/v1/messages`. */
  path: string;
  headers: Record<string, string>;
  body?: Uint8Array | undefined;
  signal?: UpstreamAbort;
}

/**
 * Cancels one upstream request. undici takes an EventEmitter with `aborted` and an 'abort'
 * event as a signal; one per proxied call costs far less than an AbortController (an
 * EventTarget, with its abort-listener bookkeeping).
 */
export class UpstreamAbort extends EventEmitter {
  aborted = false;

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    this.emit('abort');
  }
}

export type UpstreamFailure = { code: 'upstream_error' | 'upstream_timeout'; message: string; cause: string };

export class Upstream {
  readonly #pool: Pool;
  readonly #prefix: string;

  constructor(options: UpstreamOptions) {
    const { connectTimeoutMs = 10_000, firstByteTimeoutMs = 600_000, idleTimeoutMs = 300_000, connections = 256 } = options;
    let url: URL;
    try {
      url = new URL(options.baseUrl);
    } catch {
      throw new Error(`upstream.url: '${options.baseUrl}' is not a URL`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error('upstream.url: must be http(s)');
    this.#prefix = url.pathname.replace(/\/$/, '');
    this.#pool = new Pool(url.origin, {
      connections,
      connect: { timeout: connectTimeoutMs },
      headersTimeout: firstByteTimeoutMs,
      bodyTimeout: idleTimeoutMs,
      keepAliveTimeout: 30_000,
    });
  }

  send(request: UpstreamRequest): Promise<Dispatcher.ResponseData> {
    return this.#pool.request({
      method: request.method as Dispatcher.HttpMethod,
      path: `${this.#prefix}${request.path}`,
      headers: request.headers,
      body: request.body,
      signal: request.signal,
    });
  }

  close(): Promise<void> {
    return this.#pool.close();
  }
}

/** Turns a transport error into what the client is told. Never includes upstream secrets. */
export function classifyUpstreamError(err: unknown): UpstreamFailure {
  const code = (err as { code?: string }).code ?? '';
  if (err instanceof errors.HeadersTimeoutError || code === 'UND_ERR_HEADERS_TIMEOUT') {
    return { code: 'upstream_timeout', message: 'The upstream API did not answer in time.', cause: 'first_byte_timeout' };
  }
  if (err instanceof errors.BodyTimeoutError || code === 'UND_ERR_BODY_TIMEOUT') {
    return { code: 'upstream_timeout', message: 'The upstream API stopped sending.', cause: 'idle_timeout' };
  }
  if (err instanceof errors.ConnectTimeoutError || code === 'UND_ERR_CONNECT_TIMEOUT') {
    return { code: 'upstream_timeout', message: 'Connecting to the upstream API timed out.', cause: 'connect_timeout' };
  }
  return { code: 'upstream_error', message: 'Could not reach the upstream API.', cause: code || 'connection_failed' };
}
