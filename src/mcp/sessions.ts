/**
 * MCP sessions (`Mcp-Session-Id`), kept in the store so that an operator can list and end
 * them, any instance can check them, and a restarted server can pick them up again.
 *
 * - An id is 32 bytes from the CSPRNG, base64url (256 bits; the MCP transport spec asks for a
 *   cryptographically secure id). Only SHA-256 of it is stored, as for admin sessions: a copy
 *   of the table cannot be used to join a session. Operators see `ref`, the first 16 hex
 *   characters of that hash, and end sessions by it.
 * - A session belongs to the key that opened it. A JWT from `/auth/token` stands for its key,
 *   so the key and its tokens share sessions; nobody else does.
 * - A session ends after `idleMs` without a request, at `maxMs` after it began, on DELETE, or
 *   when an operator ends it. An ended session's row is deleted: to every later request it is
 *   unknown (404), which is what the transport spec asks a client to answer by re-initializing.
 * - `last_seen_at` is written at most once per `touchIntervalMs`; the idle limit is exact to
 *   within that interval.
 */
import { randomBytes } from 'node:crypto';
import type { Kysely, Selectable } from 'kysely';
import type { Principal } from '../auth/principal.js';
import { hashSessionId } from '../auth/sessions.js';
import type { McpSessionsTable, Tables } from '../store/tables.js';

const SESSION_ID_BYTES = 32;
/** 32 bytes in unpadded base64url. Anything else is refused before touching the database. */
const SESSION_ID = /^[A-Za-z0-9_-]{43}$/;
const REF_LENGTH = 16;
/** What operators see of a session and end it by: the first 16 hex characters of its id's hash. */
export const SESSION_REF = /^[0-9a-f]{16}$/;
const CLIENT_FIELD_MAX = 200;

export interface McpSession {
  /** SHA-256 (hex) of the id. */
  hash: string;
  ref: string;
  tenant: string;
  keyId: string;
  principalKind: string;
  clientName: string | null;
  clientVersion: string | null;
  protocolVersion: string;
  /** The client's initialize params, to rebuild the session after a restart. */
  initParams: Record<string, unknown>;
  createdAt: Date;
  lastSeenAt: Date;
  expiresAt: Date;
}

export type McpSessionLookup = { ok: true; session: McpSession } | { ok: false; reason: 'unknown' | 'idle_timeout' | 'expired' };

export interface McpSessionStoreOptions {
  idleMs: number;
  maxMs: number;
  touchIntervalMs?: number;
  now?: () => Date;
}

export class McpSessionStore {
  readonly #db: Kysely<Tables>;
  readonly #idleMs: number;
  readonly #maxMs: number;
  readonly #touchIntervalMs: number;
  readonly #now: () => Date;

  constructor(db: Kysely<Tables>, options: McpSessionStoreOptions) {
    if (!(options.idleMs > 0) || !(options.maxMs > 0)) throw new Error('mcp sessions: idleMs and maxMs must be positive');
    this.#db = db;
    this.#idleMs = options.idleMs;
    this.#maxMs = options.maxMs;
    this.#touchIntervalMs = options.touchIntervalMs ?? Math.min(60_000, Math.floor(options.idleMs / 10));
    this.#now = options.now ?? (() => new Date());
  }

  /** A fresh session id. It goes to the client in `Mcp-Session-Id` and nowhere else. */
  static newId(): string {
    return randomBytes(SESSION_ID_BYTES).toString('base64url');
  }

  async create(id: string, principal: Principal, init: { protocolVersion: string; params: Record<string, unknown> }): Promise<McpSession> {
    const now = this.#now();
    const hash = hashSessionId(id);
    const client = (init.params.clientInfo ?? {}) as { name?: unknown; version?: unknown };
    const row = {
      id_hash: hash,
      ref: hash.slice(0, REF_LENGTH),
      tenant_id: principal.tenant,
      key_id: principal.keyId,
      principal_kind: principal.kind,
      client_name: clip(client.name),
      client_version: clip(client.version),
      protocol_version: init.protocolVersion,
      init_params: JSON.stringify(init.params),
      created_at: now,
      last_seen_at: now,
      // A store key that expires sooner ends its sessions with it. A token's own expiry does not:
      // the session is the key's, and the client renews its token within it.
      expires_at: new Date(Math.min(now.getTime() + this.#maxMs, (principal.kind === 'key' ? principal.expiresAt?.getTime() : undefined) ?? Infinity)),
    };
    await this.#db.insertInto('mcp_sessions').values(row).execute();
    return toSession({ ...row, init_params: init.params });
  }

  /** The live session behind an id; an idle or expired one is ended on the way. */
  async lookup(id: string): Promise<McpSessionLookup> {
    if (!SESSION_ID.test(id)) return { ok: false, reason: 'unknown' };
    const hash = hashSessionId(id);
    const row = await this.#db.selectFrom('mcp_sessions').selectAll().where('id_hash', '=', hash).executeTakeFirst();
    if (!row) return { ok: false, reason: 'unknown' };
    const now = this.#now();
    const reason = this.#endReason(row, now);
    if (reason) {
      await this.end(hash);
      return { ok: false, reason };
    }
    if (now.getTime() - row.last_seen_at.getTime() >= this.#touchIntervalMs) {
      await this.#db.updateTable('mcp_sessions').set({ last_seen_at: now }).where('id_hash', '=', hash).execute();
      row.last_seen_at = now;
    }
    return { ok: true, session: toSession(row) };
  }

  #endReason(row: Pick<Selectable<McpSessionsTable>, 'expires_at' | 'last_seen_at'>, now: Date): 'expired' | 'idle_timeout' | undefined {
    if (row.expires_at.getTime() <= now.getTime()) return 'expired';
    if (now.getTime() - row.last_seen_at.getTime() >= this.#idleMs) return 'idle_timeout';
    return undefined;
  }

  /** Ends a session by its hash. Returns whether it existed. */
  async end(hash: string): Promise<boolean> {
    const result = await this.#db.deleteFrom('mcp_sessions').where('id_hash', '=', hash).executeTakeFirst();
    return Number(result.numDeletedRows) > 0;
  }

  /** Ends a session by the `ref` operators see; returns it, or undefined when there is none. */
  async endByRef(ref: string, tenant?: string): Promise<McpSession | undefined> {
    if (!SESSION_REF.test(ref)) return undefined;
    let query = this.#db.deleteFrom('mcp_sessions').where('ref', '=', ref);
    if (tenant !== undefined) query = query.where('tenant_id', '=', tenant);
    const row = await query.returningAll().executeTakeFirst();
    return row ? toSession(row) : undefined;
  }

  /** Ends every session of a key (revoked or deleted); returns their hashes. */
  async endForKey(keyId: string): Promise<string[]> {
    const rows = await this.#db.deleteFrom('mcp_sessions').where('key_id', '=', keyId).returning('id_hash').execute();
    return rows.map((r) => r.id_hash);
  }

  /** Live sessions, newest first, optionally of one tenant or key. */
  async list(filter: { tenant?: string | undefined; keyId?: string | undefined } = {}): Promise<McpSession[]> {
    const now = this.#now();
    let query = this.#db
      .selectFrom('mcp_sessions')
      .selectAll()
      .where('expires_at', '>', now)
      .where('last_seen_at', '>', new Date(now.getTime() - this.#idleMs))
      .orderBy('created_at', 'desc');
    if (filter.tenant !== undefined) query = query.where('tenant_id', '=', filter.tenant);
    if (filter.keyId !== undefined) query = query.where('key_id', '=', filter.keyId);
    return (await query.execute()).map(toSession);
  }

  /** How many live sessions a key has. */
  async countForKey(keyId: string): Promise<number> {
    const now = this.#now();
    const row = await this.#db
      .selectFrom('mcp_sessions')
      .select((eb) => eb.fn.countAll<string>().as('n'))
      .where('key_id', '=', keyId)
      .where('expires_at', '>', now)
      .where('last_seen_at', '>', new Date(now.getTime() - this.#idleMs))
      .executeTakeFirst();
    return Number(row?.n ?? 0);
  }

  /** Which of these sessions still exist (the rest ended, perhaps on another instance). */
  async stillOpen(hashes: readonly string[]): Promise<Set<string>> {
    const open = new Set<string>();
    // In chunks: a statement takes at most 65,535 parameters.
    for (let i = 0; i < hashes.length; i += 1000) {
      const rows = await this.#db.selectFrom('mcp_sessions').select('id_hash').where('id_hash', 'in', hashes.slice(i, i + 1000)).execute();
      for (const row of rows) open.add(row.id_hash);
    }
    return open;
  }

  /** Ends every idle or expired session; returns what ended, for closing transports and auditing. */
  async purgeExpired(): Promise<Array<{ session: McpSession; reason: 'idle_timeout' | 'expired' }>> {
    const now = this.#now();
    const rows = await this.#db
      .deleteFrom('mcp_sessions')
      .where((eb) => eb.or([eb('expires_at', '<=', now), eb('last_seen_at', '<=', new Date(now.getTime() - this.#idleMs))]))
      .returningAll()
      .execute();
    return rows.map((row) => ({ session: toSession(row), reason: this.#endReason(row, now) ?? 'expired' }));
  }
}

function clip(value: unknown): string | null {
  return typeof value === 'string' && value.length > 0 ? value.slice(0, CLIENT_FIELD_MAX) : null;
}

function toSession(row: Selectable<McpSessionsTable>): McpSession {
  return {
    hash: row.id_hash,
    ref: row.ref,
    tenant: row.tenant_id,
    keyId: row.key_id,
    principalKind: row.principal_kind,
    clientName: row.client_name,
    clientVersion: row.client_version,
    protocolVersion: row.protocol_version,
    initParams: row.init_params,
    createdAt: row.created_at,
    lastSeenAt: row.last_seen_at,
    expiresAt: row.expires_at,
  };
}

export type McpSessionView = ReturnType<typeof describeMcpSession>;

/** The operator's view of a session: no hash, no client capabilities. */
export function describeMcpSession(session: McpSession) {
  return {
    ref: session.ref,
    tenant: session.tenant,
    keyId: session.keyId,
    principalKind: session.principalKind,
    client: session.clientName === null ? null : `${session.clientName}${session.clientVersion ? `/${session.clientVersion}` : ''}`,
    protocolVersion: session.protocolVersion,
    createdAt: session.createdAt.toISOString(),
    lastSeenAt: session.lastSeenAt.toISOString(),
    expiresAt: session.expiresAt.toISOString(),
  };
}
