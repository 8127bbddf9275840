/**
 * Conversations with Bulwark's agent. A session belongs to the key that started it (a JWT
 * counts as its key), within its tenant: that key may continue, read or delete it, and to any
 * other key, even of the same tenant, it does not exist (the same "not found" as an unknown
 * id). Keys of one tenant differ in scopes, so a `read` key must not read what an `admin`
 * key's tools returned.
 *
 * Its history — the Messages API turns, tool calls and results included — is masked of
 * secrets and stored encrypted with the key ring, bound to tenant and session id, so a history
 * copied to another row does not open. `turns` doubles as a version: a save names the turns it
 * read, so two messages racing on one session cannot lose one's turns.
 */
import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import { maskSecrets } from '../audit/mask.js';
import type { KeyRing } from '../store/crypto.js';
import type { Tables } from '../store/tables.js';

/** One Messages API turn, as sent to and returned by the model. */
export interface Turn {
  role: 'user' | 'assistant';
  content: string | Array<Record<string, unknown>>;
}

/** Whose a session is: a key, within its tenant. */
export interface Owner {
  tenant: string;
  keyId: string;
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
export const SESSION_ID = /^[A-Za-z0-9_-]{22}$/;

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

  /** A key's session history, or undefined when the key has no such session. */
  async history(owner: Owner, id: string): Promise<Turn[] | undefined> {
    if (!isAgentSessionId(id)) return undefined;
    const row = await this.#db.selectFrom('agent_sessions').select('history').where('id', '=', id).where('tenant_id', '=', owner.tenant).where('key_id', '=', owner.keyId).executeTakeFirst();
    if (!row) return undefined;
    return JSON.parse(this.#ring.decryptText(row.history, agentSessionAad(owner.tenant, id))) as Turn[];
  }

  /**
   * Stores a session's history. `readTurns` is how many turns the caller read (undefined for a
   * new session); when the stored session has changed since, or was deleted, nothing is
   * written and false comes back.
   */
  async save(owner: Owner, id: string, history: readonly Turn[], readTurns: number | undefined): Promise<boolean> {
    const now = new Date();
    const sealed = this.#ring.encrypt(maskSecrets(JSON.stringify(history)), agentSessionAad(owner.tenant, id));
    const turns = history.length;
    if (readTurns === undefined) {
      await this.#db.insertInto('agent_sessions').values({ id, tenant_id: owner.tenant, key_id: owner.keyId, turns, history: sealed, created_at: now, updated_at: now }).execute();
      return true;
    }
    const result = await this.#db
      .updateTable('agent_sessions')
      .set({ turns, history: sealed, updated_at: now })
      .where('id', '=', id)
      .where('tenant_id', '=', owner.tenant)
      .where('key_id', '=', owner.keyId)
      .where('turns', '=', readTurns)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) > 0;
  }

  async list(owner: Owner, limit = 100): Promise<AgentSessionSummary[]> {
    const rows = await this.#db
      .selectFrom('agent_sessions')
      .select(['id', 'tenant_id', 'key_id', 'turns', 'created_at', 'updated_at'])
      .where('tenant_id', '=', owner.tenant)
      .where('key_id', '=', owner.keyId)
      .orderBy('updated_at', 'desc')
      .limit(limit)
      .execute();
    return rows.map((r) => ({ id: r.id, tenant: r.tenant_id, keyId: r.key_id, turns: r.turns, createdAt: r.created_at.toISOString(), updatedAt: r.updated_at.toISOString() }));
  }

  /** Deletes a key's session; false when the key has none with that id. */
  async delete(owner: Owner, id: string): Promise<boolean> {
    if (!isAgentSessionId(id)) return false;
    const result = await this.#db.deleteFrom('agent_sessions').where('id', '=', id).where('tenant_id', '=', owner.tenant).where('key_id', '=', owner.keyId).executeTakeFirst();
    return Number(result.numDeletedRows) > 0;
  }
}
