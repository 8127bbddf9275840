/**
 * One `requests` row per proxied call, written off the request path through the write-behind
 * queue: bounded, retried while the database is away, spilled to the spool when full and
 * replayed at start, and inserted idempotently (`on conflict do nothing`), so a replayed or
 * late-confirmed batch never doubles a row and none is lost.
 */
import type { Kysely } from 'kysely';
import type { Tables } from '../store/tables.js';
import { WriteBehind, type WriteBehindReport, isDataError } from '../store/write-behind.js';

export interface RequestRecord {
  id: string;
  time: string;
  tenantId: string;
  keyId: string;
  method: string;
  path: string;
  model: string | null;
  stream: boolean;
  status: number;
  errorType: string | null;
  inputTokens: number;
  outputTokens: number;
  cacheCreationInputTokens: number;
  cacheReadInputTokens: number;
  costUsd: number;
  latencyMs: number;
  firstTokenMs: number | null;
  ip: string | null;
  userAgent: string | null;
  requestId: string | null;
  upstreamRequestId: string | null;
  requestBody: string | null;
  responseBody: string | null;
}

export interface RequestLogOptions {
  spoolDir?: string | undefined;
  report?: (event: WriteBehindReport) => void;
  flushIntervalMs?: number;
  maxItems?: number;
}

export class RequestLog {
  readonly #queue: WriteBehind<RequestRecord>;

  constructor(db: Kysely<Tables>, options: RequestLogOptions = {}) {
    this.#queue = new WriteBehind<RequestRecord>({
      name: 'requests',
      spoolDir: options.spoolDir,
      report: options.report,
      isPermanent: isDataError,
      batchSize: 500,
      ...(options.flushIntervalMs !== undefined ? { flushIntervalMs: options.flushIntervalMs } : {}),
      ...(options.maxItems !== undefined ? { maxItems: options.maxItems } : {}),
      write: async (batch) => {
        await db
          .insertInto('requests')
          .values(
            batch.map((r) => ({
              id: r.id,
              time: r.time,
              tenant_id: r.tenantId,
              key_id: r.keyId,
              method: r.method,
              path: r.path,
              model: r.model,
              stream: r.stream,
              status: r.status,
              error_type: r.errorType,
              input_tokens: r.inputTokens,
              output_tokens: r.outputTokens,
              cache_creation_input_tokens: r.cacheCreationInputTokens,
              cache_read_input_tokens: r.cacheReadInputTokens,
              cost_usd: r.costUsd,
              latency_ms: r.latencyMs,
              first_token_ms: r.firstTokenMs,
              ip: r.ip,
              user_agent: r.userAgent,
              request_id: r.requestId,
              upstream_request_id: r.upstreamRequestId,
              request_body: r.requestBody,
              response_body: r.responseBody,
            })),
          )
          .onConflict((oc) => oc.column('id').doNothing())
          .execute();
      },
    });
  }

  record(row: RequestRecord): void {
    this.#queue.push(row);
  }

  get stats() {
    return this.#queue.stats;
  }

  flush(): Promise<void> {
    return this.#queue.flush();
  }

  replaySpool(): number {
    return this.#queue.replaySpool();
  }

  close(deadlineMs?: number): Promise<number> {
    return this.#queue.close(deadlineMs);
  }

  abandon(): number {
    return this.#queue.abandon();
  }
}
