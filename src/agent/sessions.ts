/**
 * Conversations with Bulwark's agent. A session belongs to a tenant: any key of that tenant
 * may continue, read or delete it, and to every other tenant it does not exist (the same
 * "not found" as an unknown id). Its history — the Messages API turns, tool calls and results
 * included — is stored encrypted with the key ring, bound to tenant and session id, so a
 * history copied to another row does not open.
 */
import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { KeyRing } from '../store/crypto.js';
import type { Tables } from '../store/tables.js';

/** One Messages API turn, as sent to and returned by the model. */
export interface Turn {
  role: 'user' | 'assistant';
  content: string | Array<Record<string, unknown>>;
}

export interface AgentSessionSummary {
  id: string;
  tenant: string;
  keyId: string;
  turns: number;
  createdAt: string;
  updatedAt: string;
}

/** 16 random bytes, base64url: unguessable, though guessing one would still need the tenant's key. */
const SESSION_ID = /^[A-Za-z0-9_-]{22}$/;

/** The associated data of a session's history: its tenant and id. */
export function agentSessionAad(tenant: string, id: string): string {
  return `agent_sessions:${tenant}:${id}`;
}

export function isAgentSessionId(id: string): boolean {
  return SESSION_ID.test(id);
}

export class AgentSessionStore {
  readonly #db: Kysely<Tables>;
  readonly #ring: KeyRing;

  constructor(db: Kysely<Tables>, ring: KeyRing) {
    this.#db = db;
    this.#ring = ring;
  }

  static newId(): string {
    return randomBytes(16).toString('base64url');
  }

  /** The history of a tenant's session, or undefined when the tenant has no such session. */
  async history(tenant: string, id: string): Promise<Turn[] | undefined> {
    if (!isAgentSessionId(id)) return undefined;
    const row = await this.#db.selectFrom('agent_sessions').select('history').where('id', '=', id).where('tenant_id', '=', tenant).executeTakeFirst();
    if (!row) return undefined;
    return JSON.parse(this.#ring.decryptText(row.history, agentSessionAad(tenant, id))) as Turn[];
  }

  /** Creates or replaces a session's history. */
  async save(tenant: string, keyId: string, id: string, history: readonly Turn[]): Promise<void> {
    const now = new Date();
    const sealed = this.#ring.encrypt(JSON.stringify(history), agentSessionAad(tenant, id));
    const turns = history.length;
    await this.#db
      .insertInto('agent_sessions')
      .values({ id, tenant_id: tenant, key_id: keyId, turns, history: sealed, created_at: now, updated_at: now })
      // Only the tenant's own session is ever updated; an id taken by another tenant fails the insert instead.
      .onConflict((oc) => oc.column('id').doUpdateSet({ turns, history: sealed, updated_at: now }).where('agent_sessions.tenant_id', '=', tenant))
      .execute();
  }

  async list(tenant: string, limit = 100): Promise<AgentSessionSummary[]> {
    const rows = await this.#db
      .selectFrom('agent_sessions')
      .select(['id', 'tenant_id', 'key_id', 'turns', 'created_at', 'updated_at'])
      .where('tenant_id', '=', tenant)
      .orderBy('updated_at', 'desc')
      .limit(limit)
      .execute();
    return rows.map((r) => ({ id: r.id, tenant: r.tenant_id, keyId: r.key_id, turns: r.turns, createdAt: r.created_at.toISOString(), updatedAt: r.updated_at.toISOString() }));
  }

  /** Deletes a tenant's session; false when the tenant has none with that id. */
  async delete(tenant: string, id: string): Promise<boolean> {
    if (!isAgentSessionId(id)) return false;
    const result = await this.#db.deleteFrom('agent_sessions').where('id', '=', id).where('tenant_id', '=', tenant).executeTakeFirst();
    return Number(result.numDeletedRows) > 0;
  }
}
