/**
 * One `requests` row per proxied call, written off the request path through the write-behind
 * queue: bounded, retried while the database is away, spilled to the spool when full and
 * replayed at start, and inserted idempotently (`on conflict do nothing`), so a replayed or
 * late-confirmed batch never doubles a row and none is lost.
 */
import { CompiledQuery, type Kysely, sql } from 'kysely';
import { CopyData } from '../store/pglite-thread.js';
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
  /**
   * Write a batch with `COPY … FROM '/dev/blob'` first: the embedded database only (PGlite reads
   * the blob), where it costs about 40% less per row than the INSERT.
   */
  bulkCopy?: boolean;
}

/** The requests queue: a write-behind queue of rows; `push` records one. */
export type RequestLog = WriteBehind<RequestRecord>;

export function createRequestLog(db: Kysely<Tables>, options: RequestLogOptions = {}): RequestLog {
  const writeRows = options.bulkCopy ? copyRows : insertRows;
  return new WriteBehind<RequestRecord>({
    name: 'requests',
    spoolDir: options.spoolDir,
    report: options.report,
    isPermanent: isDataError,
    batchSize: 500,
    // Rows with stored bodies can be megabytes: bound memory and each write by bytes too.
    sizeOf: (r) => 600 + (r.requestBody?.length ?? 0) + (r.responseBody?.length ?? 0),
    ...(options.flushIntervalMs !== undefined ? { flushIntervalMs: options.flushIntervalMs } : {}),
    write: (batch) => writeRows(db, batch),
  });
}

/** Each column of `requests`, the record field it holds and its SQL type, in one order for both writes. */
const COLUMNS = [
  ['id', 'id', 'text'],
  ['time', 'time', 'timestamptz'],
  ['tenant_id', 'tenantId', 'text'],
  ['key_id', 'keyId', 'text'],
  ['method', 'method', 'text'],
  ['path', 'path', 'text'],
  ['model', 'model', 'text'],
  ['stream', 'stream', 'boolean'],
  ['status', 'status', 'integer'],
  ['error_type', 'errorType', 'text'],
  ['input_tokens', 'inputTokens', 'integer'],
  ['output_tokens', 'outputTokens', 'integer'],
  ['cache_creation_input_tokens', 'cacheCreationInputTokens', 'integer'],
  ['cache_read_input_tokens', 'cacheReadInputTokens', 'integer'],
  ['cost_usd', 'costUsd', 'double precision'],
  ['latency_ms', 'latencyMs', 'integer'],
  ['first_token_ms', 'firstTokenMs', 'integer'],
  ['ip', 'ip', 'text'],
  ['user_agent', 'userAgent', 'text'],
  ['request_id', 'requestId', 'text'],
  ['upstream_request_id', 'upstreamRequestId', 'text'],
  ['request_body', 'requestBody', 'text'],
  ['response_body', 'responseBody', 'text'],
] as const satisfies readonly (readonly [string, keyof RequestRecord, string])[];

const COLUMN_LIST = COLUMNS.map(([name]) => name).join(', ');

/**
 * One INSERT for the whole batch, with one array parameter per column (`unnest`): PostgreSQL
 * parses 23 parameters instead of 23 per row, which halves the cost per row on the embedded
 * database. `on conflict do nothing` makes a repeated batch harmless.
 */
async function insertRows(db: Kysely<Tables>, batch: readonly RequestRecord[]): Promise<void> {
  const arrays = COLUMNS.map(([, key, type]) => sql`${batch.map((r) => r[key])}::${sql.raw(type)}[]`);
  await sql`insert into requests (${sql.raw(COLUMN_LIST)}) select * from unnest(${sql.join(arrays)}) on conflict (id) do nothing`.execute(db);
}

/**
 * The batch as CSV through `COPY`, which skips building and unpacking 23 arrays. COPY has no
 * `on conflict`: a batch that fails on its data (a replayed batch whose rows are already in, a
 * value the column refuses) is written again by `insertRows`, which skips the rows already there
 * and, on a bad value, fails the same way, so the queue splits the batch and keeps the good rows.
 * COPY is one statement, so a failed one has written nothing.
 */
async function copyRows(db: Kysely<Tables>, batch: readonly RequestRecord[]): Promise<void> {
  const csv = batch.map((r) => COLUMNS.map(([, key]) => csvField(r[key])).join(',')).join('\n');
  try {
    await db.executeQuery(CompiledQuery.raw(`copy requests (${COLUMN_LIST}) from '/dev/blob' with (format csv)`, [new CopyData(csv)]));
  } catch (err) {
    if (!isDataError(err)) throw err;
    await insertRows(db, batch);
  }
}

/** A CSV field as PostgreSQL's COPY reads it: unquoted empty is null, a quoted string is itself. */
function csvField(value: string | number | boolean | null): string {
  if (value === null) return '';
  if (typeof value === 'string') return `"${value.replaceAll('"', '""')}"`;
  return String(value);
}
