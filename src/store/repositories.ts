/**
 * Tenant and key rows: the only SQL for them. Every query is built by the query layer, so
 * every value is a bound parameter.
 */
import type { Kysely, Selectable } from 'kysely';
import type { ApiKeysTable, Tables, TenantsTable } from './tables.js';

export type TenantRow = Selectable<TenantsTable>;
export type KeyRow = Selectable<ApiKeysTable>;

export interface NewKeyRow {
  id: string;
  tenantId: string;
  name: string;
  prefix: string;
  hashAlg: string;
  keyHash: string;
  scopes: readonly string[];
  expiresAt: Date | null;
  allowedCidrs?: readonly string[];
  limits?: Record<string, unknown>;
  rotatedFrom?: string | null;
}

export class TenantRepository {
  constructor(private readonly db: Kysely<Tables>) {}

  async find(id: string): Promise<TenantRow | undefined> {
    return this.db.selectFrom('tenants').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async list(): Promise<TenantRow[]> {
    return this.db.selectFrom('tenants').selectAll().orderBy('created_at').orderBy('id').execute();
  }

  /** Inserts the tenant; returns false when the id is taken. */
  async create(id: string, name: string): Promise<boolean> {
    const result = await this.db
      .insertInto('tenants')
      .values({ id, name })
      .onConflict((oc) => oc.column('id').doNothing())
      .executeTakeFirst();
    return Number(result.numInsertedOrUpdatedRows ?? 0n) > 0;
  }

  async ensure(id: string, name: string): Promise<void> {
    await this.create(id, name);
  }
}

export class KeyRepository {
  constructor(private readonly db: Kysely<Tables>) {}

  /** Runs `work` in one transaction, with a repository bound to it. */
  async transaction<T>(work: (keys: KeyRepository) => Promise<T>): Promise<T> {
    return this.db.transaction().execute((tx) => work(new KeyRepository(tx)));
  }

  /** The one indexed lookup a request needs: by public key id. */
  async findById(id: string): Promise<KeyRow | undefined> {
    return this.db.selectFrom('api_keys').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async list(filter: { tenantId?: string | undefined; includeRevoked?: boolean } = {}): Promise<KeyRow[]> {
    let query = this.db.selectFrom('api_keys').selectAll();
    if (filter.tenantId) query = query.where('tenant_id', '=', filter.tenantId);
    if (!filter.includeRevoked) query = query.where('revoked_at', 'is', null);
    return query.orderBy('created_at').orderBy('id').execute();
  }

  async count(): Promise<number> {
    const row = await this.db.selectFrom('api_keys').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow();
    return Number(row.n);
  }

  async insert(key: NewKeyRow): Promise<KeyRow> {
    return this.db
      .insertInto('api_keys')
      .values({
        id: key.id,
        tenant_id: key.tenantId,
        name: key.name,
        prefix: key.prefix,
        hash_alg: key.hashAlg,
        key_hash: key.keyHash,
        scopes: [...key.scopes],
        allowed_cidrs: [...(key.allowedCidrs ?? [])],
        limits: JSON.stringify(key.limits ?? {}),
        expires_at: key.expiresAt,
        rotated_from: key.rotatedFrom ?? null,
      })
      .returningAll()
      .executeTakeFirstOrThrow();
  }

  async rename(id: string, name: string): Promise<KeyRow | undefined> {
    return this.db.updateTable('api_keys').set({ name }).where('id', '=', id).returningAll().executeTakeFirst();
  }

  /** Sets revoked_at once; a second revoke keeps the first time. */
  async revoke(id: string, at: Date): Promise<KeyRow | undefined> {
    return this.db
      .updateTable('api_keys')
      .set((eb) => ({ revoked_at: eb.fn.coalesce('revoked_at', eb.val(at)) }))
      .where('id', '=', id)
      .returningAll()
      .executeTakeFirst();
  }

  /** Shortens a key's life (rotation grace); never lengthens it. */
  async expireBy(id: string, at: Date): Promise<void> {
    await this.db
      .updateTable('api_keys')
      .set({ expires_at: at })
      .where('id', '=', id)
      .where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', at)]))
      .execute();
  }

  /** Applies a batch of last-use times collected off the hot path; never moves a time backwards. */
  async touchLastUsed(uses: ReadonlyMap<string, Date>): Promise<void> {
    for (const [id, at] of uses) {
      await this.db
        .updateTable('api_keys')
        .set({ last_used_at: at })
        .where('id', '=', id)
        .where((eb) => eb.or([eb('last_used_at', 'is', null), eb('last_used_at', '<', at)]))
        .execute();
    }
  }
}
