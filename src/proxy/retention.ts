/**
 * What stored data is kept and how it is protected over time: request and response bodies
 * (opt-in) are masked, then encrypted with AES-256-GCM bound to their tenant, row and column;
 * the purge clears bodies past their retention and deletes usage rows past theirs; rotation
 * re-encrypts everything still under an older key, in batches, while Bulwark serves.
 */
import { sql, type Kysely } from 'kysely';
import { maskSecrets } from '../audit/mask.js';
import type { KeyRing } from '../store/crypto.js';
import type { Tables } from '../store/tables.js';
import { StoredCredentials } from './credentials.js';
import { agentSessionAad } from '../agent/sessions.js';

export type BodyColumn = 'request_body' | 'response_body';

/** Associated data binding a stored body to its tenant, row and column. */
export function bodyAad(tenant: string, rowId: string, column: BodyColumn): string {
  return `requests:${tenant}:${rowId}:${column}`;
}

/** Most bytes of a body kept; the rest is dropped and the stored text says so. */
export const MAX_STORED_BODY_BYTES = 1024 * 1024;

/** Collects a body as it passes, up to the cap. */
export class BodyCapture {
  #chunks: Uint8Array[] = [];
  #bytes = 0;
  #truncated = false;

  add(chunk: Uint8Array): void {
    if (this.#bytes >= MAX_STORED_BODY_BYTES) {
      this.#truncated = true;
      return;
    }
    const room = MAX_STORED_BODY_BYTES - this.#bytes;
    const kept = chunk.byteLength > room ? chunk.subarray(0, room) : chunk;
    if (kept !== chunk) this.#truncated = true;
    this.#chunks.push(kept);
    this.#bytes += kept.byteLength;
  }

  text(): string {
    const text = Buffer.concat(this.#chunks).toString('utf8');
    return this.#truncated ? `${text}\n[bulwark: truncated at ${MAX_STORED_BODY_BYTES} bytes]` : text;
  }
}

/** The stored form of a body: secrets masked first, then encrypted to its row. */
export function sealBody(ring: KeyRing, text: string, tenant: string, rowId: string, column: BodyColumn): string {
  return ring.encrypt(maskSecrets(text), bodyAad(tenant, rowId, column));
}

export interface PurgeResult {
  bodiesCleared: number;
  rowsDeleted: number;
  /** Agent conversations untouched for longer than bodies are kept. */
  conversationsDeleted: number;
  bodiesBefore: string;
  rowsBefore: string;
}

/**
 * Clears bodies older than `bodyDays`, deletes usage rows older than `rowDays`, and deletes
 * agent conversations untouched for `bodyDays` (they hold what bodies hold: prompts and answers).
 */
export async function purge(db: Kysely<Tables>, options: { bodyDays: number; rowDays: number; now?: Date }): Promise<PurgeResult> {
  const now = options.now ?? new Date();
  const bodiesBefore = new Date(now.getTime() - options.bodyDays * 86_400_000);
  const rowsBefore = new Date(now.getTime() - options.rowDays * 86_400_000);
  // Rows past their retention go first, so the counts do not report their bodies twice.
  const deleted = await db.deleteFrom('requests').where('time', '<', rowsBefore).executeTakeFirst();
  const cleared = await db
    .updateTable('requests')
    .set({ request_body: null, response_body: null })
    .where('time', '<', bodiesBefore)
    .where((eb) => eb.or([eb('request_body', 'is not', null), eb('response_body', 'is not', null)]))
    .executeTakeFirst();
  const conversations = await db.deleteFrom('agent_sessions').where('updated_at', '<', bodiesBefore).executeTakeFirst();
  return {
    bodiesCleared: Number(cleared.numUpdatedRows),
    rowsDeleted: Number(deleted.numDeletedRows),
    conversationsDeleted: Number(conversations.numDeletedRows),
    bodiesBefore: bodiesBefore.toISOString(),
    rowsBefore: rowsBefore.toISOString(),
  };
}

export interface RotationResult {
  keyId: string;
  bodies: number;
  credentials: number;
  /** Conversations with Bulwark's agent. */
  agentSessions: number;
}

/**
 * Re-encrypts every stored value not under the ring's current key, `batchSize` rows at a time
 * (each batch its own short statement, so serving goes on between them).
 */
export async function rotateEncryption(db: Kysely<Tables>, ring: KeyRing, options: { batchSize?: number } = {}): Promise<RotationResult> {
  const batchSize = options.batchSize ?? 500;
  const current = `v1.${ring.currentKeyId}.%`;
  let bodies = 0;
  for (;;) {
    const rows = await db
      .selectFrom('requests')
      .select(['id', 'tenant_id', 'request_body', 'response_body'])
      .where((eb) =>
        eb.or([
          eb.and([eb('request_body', 'is not', null), eb('request_body', 'not like', current)]),
          eb.and([eb('response_body', 'is not', null), eb('response_body', 'not like', current)]),
        ]),
      )
      .limit(batchSize)
      .execute();
    if (rows.length === 0) break;
    for (const row of rows) {
      const reseal = (value: string | null, column: BodyColumn) =>
        value === null || !ring.needsRotation(value) ? value : ring.encrypt(ring.decrypt(value, bodyAad(row.tenant_id, row.id, column)), bodyAad(row.tenant_id, row.id, column));
      // Only if unchanged since read: a purge in between must not be undone.
      await db
        .updateTable('requests')
        .set({ request_body: reseal(row.request_body, 'request_body'), response_body: reseal(row.response_body, 'response_body') })
        .where('id', '=', row.id)
        .where(sql<boolean>`request_body is not distinct from ${row.request_body}`)
        .where(sql<boolean>`response_body is not distinct from ${row.response_body}`)
        .execute();
      bodies += 1;
    }
  }
  let credentials = 0;
  const stored = await db.selectFrom('upstream_credentials').select(['tenant_id', 'secret']).where('secret', 'not like', current).execute();
  for (const row of stored) {
    const aad = StoredCredentials.aad(row.tenant_id);
    await db
      .updateTable('upstream_credentials')
      .set({ secret: ring.encrypt(ring.decrypt(row.secret, aad), aad) })
      .where('tenant_id', '=', row.tenant_id)
      .where('secret', '=', row.secret)
      .execute();
    credentials += 1;
  }
  let agentSessions = 0;
  for (;;) {
    const histories = await db.selectFrom('agent_sessions').select(['id', 'tenant_id', 'history']).where('history', 'not like', current).limit(batchSize).execute();
    if (histories.length === 0) break;
    for (const row of histories) {
      const aad = agentSessionAad(row.tenant_id, row.id);
      // Only if unchanged since read: a conversation that went on meanwhile was written under the current key.
      const result = await db
        .updateTable('agent_sessions')
        .set({ history: ring.encrypt(ring.decrypt(row.history, aad), aad) })
        .where('id', '=', row.id)
        .where('history', '=', row.history)
        .executeTakeFirst();
      agentSessions += Number(result.numUpdatedRows);
    }
  }
  return { keyId: ring.currentKeyId, bodies, credentials, agentSessions };
}

/** Rows still under an older key, for `doctor` and the rotation report. */
export async function countNeedingRotation(db: Kysely<Tables>, ring: KeyRing): Promise<number> {
  const current = `v1.${ring.currentKeyId}.%`;
  const row = await db
    .selectFrom('requests')
    .select(sql<string>`count(*)`.as('n'))
    .where((eb) =>
      eb.or([
        eb.and([eb('request_body', 'is not', null), eb('request_body', 'not like', current)]),
        eb.and([eb('response_body', 'is not', null), eb('response_body', 'not like', current)]),
      ]),
    )
    .executeTakeFirst();
  return Number(row?.n ?? 0);
}
