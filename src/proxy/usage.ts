/**
 * Reads token usage from a response as it passes through, without holding back a byte: SSE
 * streams are parsed event by event (`message_start` carries input and cache tokens,
 * `message_delta` the cumulative output tokens, an `error` event its type); JSON bodies are
 * parsed once complete.
 */
import { type EventSourceMessage, type EventSourceParser, createParser } from 'eventsource-parser';

export interface Usage {
  model: string | null;
  inputTokens: number;
  outputTokens: number;
  cacheCreationInputTokens: number;
  cacheReadInputTokens: number;
  /** Milliseconds from the start of the request to the first content delta. */
  firstTokenMs: number | null;
  /** The `error.type` of an in-stream error event or an error body. */
  errorType: string | null;
}

interface RawUsage {
  input_tokens?: number | null;
  output_tokens?: number | null;
  cache_creation_input_tokens?: number | null;
  cache_read_input_tokens?: number | null;
}

/** Most bytes of a JSON response kept for reading its usage; larger bodies pass through unread. */
const MAX_JSON_BYTES = 8 * 1024 * 1024;

export class UsageMeter {
  readonly usage: Usage = {
    model: null,
    inputTokens: 0,
    outputTokens: 0,
    cacheCreationInputTokens: 0,
    cacheReadInputTokens: 0,
    firstTokenMs: null,
    errorType: null,
  };
  readonly #startedAt: number;
  /** The SSE reader; a JSON answer needs none, and it is made only for a stream. */
  readonly #sse: { decoder: InstanceType<typeof TextDecoder>; parser: EventSourceParser } | undefined;
  #jsonChunks: Uint8Array[] = [];
  #jsonBytes = 0;
  /** Size of the content deltas seen, for estimating output when the final count never came. */
  #deltaBytes = 0;
  #deltaEvents = 0;
  #sawFinalUsage = false;

  constructor(contentType: string | undefined, startedAt: number) {
    this.#startedAt = startedAt;
    this.#sse = /^text\/event-stream\b/i.test(contentType ?? '')
      ? { decoder: new TextDecoder(), parser: createParser({ onEvent: (event) => this.#onEvent(event) }) }
      : undefined;
  }

  /** Feeds a chunk that has already been passed on to the client. */
  feed(chunk: Uint8Array): void {
    // Time to first token: the first content delta of a stream, the first byte of a JSON answer.
    if (!this.#sse) this.usage.firstTokenMs ??= Math.round(performance.now() - this.#startedAt);
    if (this.#sse) {
      this.#sse.parser.feed(this.#sse.decoder.decode(chunk, { stream: true }));
      return;
    }
    this.#jsonBytes += chunk.byteLength;
    if (this.#jsonBytes <= MAX_JSON_BYTES) this.#jsonChunks.push(chunk);
  }

  /** Completes the reading; returns the usage seen. */
  finish(): Usage {
    if (!this.#sse && this.#jsonBytes > 0 && this.#jsonBytes <= MAX_JSON_BYTES) {
      try {
        const body = JSON.parse(Buffer.concat(this.#jsonChunks).toString('utf8')) as { model?: string; usage?: RawUsage; type?: string; error?: { type?: string } };
        if (typeof body.model === 'string') this.usage.model = body.model;
        if (body.usage) this.#applyUsage(body.usage);
        if (body.type === 'error' && body.error?.type) this.usage.errorType = body.error.type;
      } catch {
        // not JSON: nothing to count
      }
      this.#jsonChunks = [];
    }
    return this.usage;
  }

  #onEvent(event: EventSourceMessage): void {
    const type = event.event;
    if (type !== 'message_start' && type !== 'message_delta' && type !== 'error' && type !== 'content_block_delta') return;
    if (type === 'content_block_delta') {
      this.usage.firstTokenMs ??= Math.round(performance.now() - this.#startedAt);
      this.#deltaBytes += event.data.length;
      this.#deltaEvents += 1;
      return;
    }
    let data: { message?: { model?: string; usage?: RawUsage }; usage?: RawUsage; error?: { type?: string } };
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (type === 'message_start') {
      if (typeof data.message?.model === 'string') this.usage.model = data.message.model;
      if (data.message?.usage) this.#applyUsage(data.message.usage);
    } else if (type === 'message_delta') {
      if (data.usage) this.#applyUsage(data.usage);
      this.#sawFinalUsage = true;
    } else if (type === 'error') {
      this.usage.errorType = data.error?.type ?? 'api_error';
    }
  }

  /**
   * For a stream that ended before its final usage (client gone, upstream broke off): output
   * tokens estimated from the content deltas seen — generously, since upstream bills what it
   * generated — so a budget cannot be dodged by hanging up just before `message_delta`.
   */
  estimateUnfinishedOutput(): void {
    if (!this.#sse || this.#sawFinalUsage) return;
    // Each delta event carries ~70 bytes of JSON around its text; ~3 bytes of text per token.
    const estimate = Math.ceil(Math.max(0, this.#deltaBytes - 70 * this.#deltaEvents) / 3);
    this.usage.outputTokens = Math.max(this.usage.outputTokens, estimate);
  }

  /** Usage fields are cumulative: a later event's value replaces an earlier one. */
  #applyUsage(raw: RawUsage): void {
    if (typeof raw.input_tokens === 'number') this.usage.inputTokens = raw.input_tokens;
    if (typeof raw.output_tokens === 'number') this.usage.outputTokens = raw.output_tokens;
    if (typeof raw.cache_creation_input_tokens === 'number') this.usage.cacheCreationInputTokens = raw.cache_creation_input_tokens;
    if (typeof raw.cache_read_input_tokens === 'number') this.usage.cacheReadInputTokens = raw.cache_read_input_tokens;
  }
}
