/**
 * Managing upstream credentials and reading usage, for the CLI and the admin API alike.
 * Setting a credential is an operator's act and is audited without the secret; a credential
 * is never returned, only its tenant, type, source and expiry.
 */
import { sql, type Kysely } from 'kysely';
import type { AuditEventInput } from '../audit/log.js';
import { type Actor, type Result, operatorOnly } from '../auth/key-service.js';
import { crossesTenants } from '../auth/principal.js';
import type { TenantRepository } from '../store/repositories.js';
import type { Tables } from '../store/tables.js';
import type { KeyRing } from '../store/crypto.js';
import { type FileCredentials, type StoredCredentials, parseCredential } from './credentials.js';
import { type PurgeResult, type RotationResult, purge, rotateEncryption } from './retention.js';

export interface CredentialView {
  tenant: string;
  type: string;
  source: 'file' | 'store';
  updatedAt: string;
  /** For OAuth credentials: when the access token expires. */
  expiresAt: string | null;
  /** Whether this is the credential in use (a file wins over the store). */
  active: boolean;
}

export interface UsageRow {
  tenant: string;
  model: string | null;
  requests: number;
  errors: number;
  inputTokens: number;
  outputTokens: number;
  cacheCreationInputTokens: number;
  cacheReadInputTokens: number;
  costUsd: number;
}

export interface UsageQuery {
  tenant?: string | undefined;
  /** Only calls at or after this time. */
  since: Date;
}

export interface ProxyManagementOptions {
  db: Kysely<Tables>;
  keyRing: KeyRing;
  retention: { bodyDays: number; rowDays: number };
  tenants: TenantRepository;
  files: FileCredentials;
  stored: StoredCredentials;
  audit: (event: AuditEventInput) => void;
}

export class ProxyManagement {
  readonly #o: ProxyManagementOptions;

  constructor(options: ProxyManagementOptions) {
    this.#o = options;
  }

  /** Stores a tenant's credential, encrypted. `input` is the documented JSON, or a bare API key. */
  async setCredential(actor: Actor, tenant: string, input: unknown): Promise<Result<CredentialView>> {
    const refused = operatorOnly(actor, this.#o.audit, 'credentials.set', 'Only an operator can set upstream credentials.', { targetTenant: tenant.slice(0, 63) });
    if (refused) return refused;
    if (!(await this.#o.tenants.find(tenant))) {
      return { ok: false, code: 'not_found', message: `Tenant '${tenant.slice(0, 63)}' does not exist; create it first (bulwark tenants create ${tenant.slice(0, 63)}).` };
    }
    const json = typeof input === 'string' ? { type: 'api_key', api_key: input.trim() } : input;
    const parsed = parseCredential(json);
    if (!parsed.ok) return { ok: false, code: 'validation_failed', message: `credential: ${parsed.message}` };
    await this.#o.stored.set(tenant, parsed.credential);
    this.#o.audit({
      type: 'credentials.set',
      outcome: 'success',
      tenantId: tenant,
      ip: actor.ip,
      userAgent: actor.userAgent,
      requestId: actor.requestId,
      method: actor.method,
      path: actor.path,
      details: { source: 'store', type: parsed.credential.type, by: { kind: actor.principal.kind, keyId: actor.principal.keyId }, via: actor.via },
    });
    const view = (await this.listCredentials(actor)).find((c) => c.tenant === tenant && c.source === 'store');
    return view ? { ok: true, value: view } : { ok: false, code: 'not_found', message: 'The credential was stored but cannot be read back.' };
  }

  async removeCredential(actor: Actor, tenant: string): Promise<Result<{ tenant: string; removed: boolean }>> {
    const refused = operatorOnly(actor, this.#o.audit, 'credentials.remove', 'Only an operator can remove upstream credentials.', { targetTenant: tenant.slice(0, 63) });
    if (refused) return refused;
    const removed = await this.#o.stored.remove(tenant);
    if (!removed) return { ok: false, code: 'not_found', message: `No stored credential for tenant '${tenant.slice(0, 63)}'.` };
    this.#o.audit({ type: 'credentials.removed', outcome: 'success', tenantId: tenant, requestId: actor.requestId, details: { source: 'store', via: actor.via } });
    return { ok: true, value: { tenant, removed } };
  }

  async listCredentials(actor: Actor): Promise<CredentialView[]> {
    const visible = (tenant: string) => crossesTenants(actor.principal) || tenant === actor.principal.tenant;
    const files = this.#o.files.list().filter((r) => visible(r.tenant));
    const fileTenants = new Set(files.map((r) => r.tenant));
    const views: CredentialView[] = files.map((r) => ({
      tenant: r.tenant,
      type: r.credential.type,
      source: 'file',
      updatedAt: r.updatedAt.toISOString(),
      expiresAt: r.credential.type === 'oauth' ? new Date(r.credential.expiresAt).toISOString() : null,
      active: true,
    }));
    for (const row of await this.#o.stored.list()) {
      if (!visible(row.tenant)) continue;
      const record = await this.#o.stored.get(row.tenant);
      const credential = record?.credential;
      views.push({
        tenant: row.tenant,
        type: row.type,
        source: 'store',
        updatedAt: row.updatedAt.toISOString(),
        expiresAt: credential?.type === 'oauth' ? new Date(credential.expiresAt).toISOString() : null,
        active: !fileTenants.has(row.tenant),
      });
    }
    return views.sort((a, b) => a.tenant.localeCompare(b.tenant) || a.source.localeCompare(b.source));
  }

  /** Runs the retention purge now (the server also runs it hourly). Operators only. */
  async purgeNow(actor: Actor): Promise<Result<PurgeResult>> {
    const refused = operatorOnly(actor, this.#o.audit, 'retention.purge', 'Only an operator can run the purge.');
    if (refused) return refused;
    const result = await purge(this.#o.db, this.#o.retention);
    this.#o.audit({ type: 'retention.purged', outcome: 'success', requestId: actor.requestId, details: { ...result, via: actor.via } });
    return { ok: true, value: result };
  }

  /** Re-encrypts everything stored under an older key with the current one. Operators only. */
  async rotateEncryption(actor: Actor): Promise<Result<RotationResult>> {
    const refused = operatorOnly(actor, this.#o.audit, 'encryption.rotate', 'Only an operator can rotate encryption.');
    if (refused) return refused;
    const result = await rotateEncryption(this.#o.db, this.#o.keyRing);
    this.#o.audit({ type: 'encryption.rotated', outcome: 'success', requestId: actor.requestId, details: { ...result, via: actor.via } });
    return { ok: true, value: result };
  }

  /** Requests, errors, tokens and cost per tenant and model since a time. */
  async usage(actor: Actor, query: UsageQuery): Promise<UsageRow[]> {
    const tenant = crossesTenants(actor.principal) ? query.tenant : actor.principal.tenant;
    let q = this.#o.db
      .selectFrom('requests')
      .select((eb) => [
        'tenant_id',
        'model',
        eb.fn.countAll<string>().as('requests'),
        sql<string>`count(*) filter (where status >= 400 or error_type is not null)`.as('errors'),
        sql<string>`coalesce(sum(input_tokens), 0)`.as('input_tokens'),
        sql<string>`coalesce(sum(output_tokens), 0)`.as('output_tokens'),
        sql<string>`coalesce(sum(cache_creation_input_tokens), 0)`.as('cache_creation_input_tokens'),
        sql<string>`coalesce(sum(cache_read_input_tokens), 0)`.as('cache_read_input_tokens'),
        sql<string>`coalesce(sum(cost_usd), 0)`.as('cost_usd'),
      ])
      .where('time', '>=', query.since);
    if (tenant) q = q.where('tenant_id', '=', tenant);
    const rows = await q.groupBy(['tenant_id', 'model']).orderBy('tenant_id').orderBy('model').execute();
    return rows.map((r) => ({
      tenant: r.tenant_id,
      model: r.model,
      requests: Number(r.requests),
      errors: Number(r.errors),
      inputTokens: Number(r.input_tokens),
      outputTokens: Number(r.output_tokens),
      cacheCreationInputTokens: Number(r.cache_creation_input_tokens),
      cacheReadInputTokens: Number(r.cache_read_input_tokens),
      costUsd: Number(r.cost_usd),
    }));
  }
}
