/**
 * The tamper-evident audit log. Each row stores the hash of the row before it and the SHA-256
 * of that hash plus its own canonical content, so editing, deleting or inserting a row breaks
 * the chain at that row and `verifyChain` names it. Appends from every instance are serialised
 * by a transaction-scoped advisory lock, so the chain stays linear on a shared PostgreSQL.
 * Events are recorded off the request path through the write-behind queue.
 */
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { type Kysely, type Selectable, sql } from 'kysely';
import { writePrivateFile } from '../store/data-dir.js';
import type { AuditEventsTable, Tables } from '../store/tables.js';
import { WriteBehind, type WriteBehindReport, isDataError } from '../store/write-behind.js';
import { maskDeep, maskSecrets } from './mask.js';

export type AuditOutcome = 'success' | 'failure' | 'denied' | 'info';

export interface AuditEventInput {
  type: string;
  outcome: AuditOutcome;
  tenantId?: string | null | undefined;
  keyId?: string | null | undefined;
  ip?: string | null | undefined;
  userAgent?: string | null | undefined;
  method?: string | null | undefined;
  path?: string | null | undefined;
  requestId?: string | null | undefined;
  details?: Record<string, unknown>;
}

export interface AuditEvent {
  id: string;
  time: string;
  type: string;
  outcome: AuditOutcome;
  tenantId: string | null;
  keyId: string | null;
  ip: string | null;
  userAgent: string | null;
  method: string | null;
  path: string | null;
  requestId: string | null;
  details: Record<string, unknown>;
}

export interface StoredAuditEvent extends AuditEvent {
  seq: number;
  prevHash: string;
  hash: string;
}

export const GENESIS_HASH = '0'.repeat(64);
/** Arbitrary constant naming the audit chain's advisory lock ("bwkaudit"). */
const CHAIN_LOCK = 0x62776b61756474n;

/** Builds a complete event from what a caller knows; masks anything that looks like a secret. */
export function makeEvent(input: AuditEventInput, now = new Date()): AuditEvent {
  const text = (v: string | null | undefined, max = 512) => (v == null || v === '' ? null : maskSecrets(sanitizeText(String(v))).slice(0, max));
  return {
    id: randomUUID(),
    time: now.toISOString(),
    type: input.type,
    outcome: input.outcome,
    tenantId: text(input.tenantId, 128),
    keyId: text(input.keyId, 128),
    ip: text(input.ip, 64),
    userAgent: text(input.userAgent),
    method: text(input.method, 16),
    path: text(input.path, 1024),
    requestId: text(input.requestId, 64),
    details: sanitizeDeep(maskDeep(input.details ?? {})),
  };
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** Whether a string is well-formed UTF-16 (no unpaired surrogate), as jsonb requires. */
export function isWellFormedText(text: string): boolean {
  LONE_SURROGATE.lastIndex = 0;
  return !LONE_SURROGATE.test(text);
}

/**
 * PostgreSQL refuses U+0000 and unpaired UTF-16 surrogates in text and jsonb; one such event
 * would be refused on every retry. Drop NULs and replace lone surrogates with U+FFFD.
 */
function sanitizeText(text: string): string {
  const withoutNul = text.includes('\u0000') ? text.replaceAll('\u0000', '') : text;
  return withoutNul.replace(LONE_SURROGATE, '\uFFFD');
}

function sanitizeDeep<T>(value: T): T {
  if (typeof value === 'string') return sanitizeText(value) as T;
  if (Array.isArray(value)) return value.map(sanitizeDeep) as T;
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [sanitizeText(k), sanitizeDeep(v)])) as T;
  }
  return value;
}

/** JSON with object keys sorted at every depth: the same content always hashes the same. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

export function chainHash(prevHash: string, event: AuditEvent): string {
  return createHash('sha256').update(prevHash).update('\n').update(canonicalJson(event)).digest('hex');
}

/**
 * Appends events in order under the chain lock, in one transaction. Events already stored are
 * skipped, so a batch whose first write was confirmed too late (or replayed from the spool)
 * is written once.
 */
export async function appendChained(db: Kysely<Tables>, batch: readonly AuditEvent[]): Promise<ChainHead | undefined> {
  if (batch.length === 0) return undefined;
  return db.transaction().execute(async (tx) => {
    await sql`select pg_advisory_xact_lock(${sql.lit(CHAIN_LOCK.toString())}::bigint)`.execute(tx);
    const stored = await tx.selectFrom('audit_events').select('id').where('id', 'in', batch.map((e) => e.id)).execute();
    const seen = new Set(stored.map((r) => r.id));
    const events = batch.filter((e) => !seen.has(e.id));
    if (events.length === 0) return undefined;
    const last = await tx.selectFrom('audit_events').select('hash').orderBy('seq', 'desc').limit(1).executeTakeFirst();
    let prevHash = last?.hash ?? GENESIS_HASH;
    const rows = events.map((event) => {
      const hash = chainHash(prevHash, event);
      const row = {
        id: event.id,
        time: event.time,
        type: event.type,
        outcome: event.outcome,
        tenant_id: event.tenantId,
        key_id: event.keyId,
        ip: event.ip,
        user_agent: event.userAgent,
        method: event.method,
        path: event.path,
        request_id: event.requestId,
        details: JSON.stringify(event.details),
        prev_hash: prevHash,
        hash,
      };
      prevHash = hash;
      return row;
    });
    const inserted = await tx.insertInto('audit_events').values(rows).returning(['seq', 'hash']).execute();
    const newest = inserted.reduce((a, b) => (Number(b.seq) > Number(a.seq) ? b : a));
    return { seq: Number(newest.seq), hash: newest.hash };
  });
}

/** The newest row an instance wrote; kept outside the database as an anchor for `verifyChain`. */
export interface ChainHead {
  seq: number;
  hash: string;
}

type AuditRow = Selectable<AuditEventsTable>;

function fromRow(row: AuditRow): StoredAuditEvent {
  return {
    seq: Number(row.seq),
    id: row.id,
    time: new Date(row.time).toISOString(),
    type: row.type,
    outcome: row.outcome as AuditOutcome,
    tenantId: row.tenant_id,
    keyId: row.key_id,
    ip: row.ip,
    userAgent: row.user_agent,
    method: row.method,
    path: row.path,
    requestId: row.request_id,
    details: row.details ?? {},
    prevHash: row.prev_hash,
    hash: row.hash,
  };
}

function contentOf(event: StoredAuditEvent): AuditEvent {
  const { seq: _seq, prevHash: _prev, hash: _hash, ...content } = event;
  return content;
}

export type VerifyResult =
  | { ok: true; checked: number; head: string }
  | { ok: false; checked: number; badSeq: number; badId: string; reason: string };

/**
 * Walks the whole chain in pages and stops at the first row that does not fit. With an anchor
 * (a row this instance wrote, recorded outside the database), it also fails when that row is
 * gone or different: what the chain alone cannot see, deletion of the newest rows or a chain
 * rewritten with fresh hashes from some row on.
 */
export async function verifyChain(db: Kysely<Tables>, options: { anchor?: ChainHead | undefined; pageSize?: number } = {}): Promise<VerifyResult> {
  const { anchor, pageSize = 1_000 } = options;
  let prevHash = GENESIS_HASH;
  let afterSeq = 0;
  let checked = 0;
  let anchorSeen = false;
  for (;;) {
    const rows: AuditRow[] = await db
      .selectFrom('audit_events')
      .selectAll()
      .where(sql<boolean>`seq > ${afterSeq}`)
      .orderBy('seq')
      .limit(pageSize)
      .execute();
    if (rows.length === 0) {
      if (anchor && !anchorSeen) {
        return {
          ok: false,
          checked,
          badSeq: anchor.seq,
          badId: '(anchor)',
          reason: `the event this instance last wrote (#${anchor.seq}) is missing or was rewritten (rows were deleted, or the chain re-hashed)`,
        };
      }
      return { ok: true, checked, head: prevHash };
    }
    for (const row of rows) {
      const event = fromRow(row);
      if (event.prevHash !== prevHash) {
        return { ok: false, checked, badSeq: event.seq, badId: event.id, reason: 'its previous-hash link does not match the row before it (a row was deleted or inserted)' };
      }
      if (chainHash(prevHash, contentOf(event)) !== event.hash) {
        return { ok: false, checked, badSeq: event.seq, badId: event.id, reason: 'its content does not match its hash (the row was edited)' };
      }
      if (anchor && event.seq === anchor.seq) anchorSeen = event.hash === anchor.hash;
      prevHash = event.hash;
      afterSeq = event.seq;
      checked += 1;
    }
  }
}

export interface TailOptions {
  limit?: number;
  type?: string | undefined;
  tenantId?: string | undefined;
}

/** The newest events, oldest first. A type ending in `.` or `*` matches its family (`key.`). */
export async function tailEvents(db: Kysely<Tables>, options: TailOptions = {}): Promise<StoredAuditEvent[]> {
  const limit = Math.min(Math.max(options.limit ?? 50, 1), 1_000);
  let query = db.selectFrom('audit_events').selectAll();
  if (options.type) {
    const family = options.type.replace(/\*$/, '');
    query = family.endsWith('.') ? query.where('type', 'like', `${family.replace(/[%_\\]/g, '\\$&')}%`) : query.where('type', '=', options.type);
  }
  if (options.tenantId) query = query.where('tenant_id', '=', options.tenantId);
  const rows: AuditRow[] = await query.orderBy('seq', 'desc').limit(limit).execute();
  return rows.map(fromRow).reverse();
}

export interface AuditLogOptions {
  spoolDir?: string | undefined;
  /** Where to record the newest row this instance wrote (mode 600), the anchor for verify. */
  anchorFile?: string | undefined;
  report?: (event: WriteBehindReport) => void;
  flushIntervalMs?: number;
}

/** Records events off the request path; `flush`/`close` drain them into the chain. */
export class AuditLog {
  readonly #queue: WriteBehind<AuditEvent>;

  constructor(db: Kysely<Tables>, options: AuditLogOptions = {}) {
    this.#queue = new WriteBehind<AuditEvent>({
      name: 'audit',
      write: async (batch) => {
        const head = await appendChained(db, batch);
        if (head && options.anchorFile) writePrivateFile(options.anchorFile, `${JSON.stringify(head)}\n`);
      },
      isPermanent: isDataError,
      spoolDir: options.spoolDir,
      report: options.report,
      ...(options.flushIntervalMs !== undefined ? { flushIntervalMs: options.flushIntervalMs } : {}),
    });
  }

  record(input: AuditEventInput): AuditEvent {
    const event = makeEvent(input);
    this.#queue.push(event);
    return event;
  }

  replaySpool(): number {
    return this.#queue.replaySpool();
  }

  get stats() {
    return this.#queue.stats;
  }

  flush(): Promise<void> {
    return this.#queue.flush();
  }

  close(deadlineMs?: number): Promise<number> {
    return this.#queue.close(deadlineMs);
  }

  abandon(): number {
    return this.#queue.abandon();
  }
}

/** Reading the audit trail, as routes and the CLI see it: queued events are flushed first. */
export interface AuditReader {
  tail(options: TailOptions): Promise<StoredAuditEvent[]>;
  verify(): Promise<VerifyResult>;
}

/** The anchor an AuditLog recorded, if any. */
export function readAnchor(file: string | undefined): ChainHead | undefined {
  if (!file) return undefined;
  try {
    const head = JSON.parse(readFileSync(file, 'utf8')) as ChainHead;
    return Number.isInteger(head.seq) && typeof head.hash === 'string' ? head : undefined;
  } catch {
    return undefined;
  }
}

export function createAuditReader(db: Kysely<Tables>, log: AuditLog, anchorFile?: string): AuditReader {
  // A flush that fails (database away) must not hide what is already stored.
  const flushed = () => log.flush().catch(() => {});
  return {
    async tail(options) {
      await flushed();
      return tailEvents(db, options);
    },
    async verify() {
      await flushed();
      return verifyChain(db, { anchor: readAnchor(anchorFile) });
    },
  };
}
