/**
 * Key and tenant management: create, list, show, rename, revoke, rotate keys; create and list
 * tenants. One implementation serves the CLI (directly on the store) and the admin API (which
 * the CLI calls while a server holds the embedded database). Expected failures are values;
 * every change is an audit event.
 */
import { type AuditEventInput, isWellFormedText } from '../audit/log.js';
import type { KeyRepository, KeyRow, TenantRepository } from '../store/repositories.js';
import { type KeyHasher, type KeyPrefix, generateKey } from './keys.js';
import { DEFAULT_TENANT, type Principal, crossesTenants } from './principal.js';
import { LimitSetSchema } from '../config/schema.js';
import { cidrProblem } from '../config/safety.js';
import { isValidScope } from './scopes.js';

export interface KeyView {
  id: string;
  name: string;
  tenant: string;
  prefix: string;
  scopes: string[];
  status: 'active' | 'expired' | 'revoked';
  createdAt: string;
  expiresAt: string | null;
  revokedAt: string | null;
  lastUsedAt: string | null;
  rotatedFrom: string | null;
  /** Limits of this key (per minute, day and month; dollars; models). */
  limits: Record<string, unknown>;
  /** Addresses (CIDRs) the key works from; empty means anywhere. */
  allowedIps: string[];
}

export interface CreatedKey extends KeyView {
  /** The full key. Returned once, at creation; Bulwark keeps only its hash. */
  key: string;
}

export interface TenantView {
  id: string;
  name: string;
  createdAt: string;
}

export type FailureCode = 'not_found' | 'validation_failed' | 'conflict' | 'forbidden';
export type Result<T> = { ok: true; value: T } | { ok: false; code: FailureCode; message: string };

/** Who is asking, and from where, for the audit trail. */
export interface Actor {
  principal: Principal;
  via: 'cli' | 'admin-api';
  ip?: string | undefined;
  userAgent?: string | undefined;
  requestId?: string | undefined;
  method?: string | undefined;
  path?: string | undefined;
}

export interface CreateKeyInput {
  name: string;
  scopes: readonly string[];
  tenant?: string | undefined;
  /** Lifetime such as `30d`, `12h`, `90m`. */
  expiresIn?: string | undefined;
  /** Limits of this key; see `LimitSetSchema`. */
  limits?: Record<string, unknown> | undefined;
  /** IPv4/IPv6 addresses or CIDRs the key may be used from; absent or empty means anywhere. */
  allowedIps?: readonly string[] | undefined;
}

export interface KeyServiceOptions {
  keys: KeyRepository;
  tenants: TenantRepository;
  hasher: KeyHasher;
  prefix: KeyPrefix;
  audit: (event: AuditEventInput) => void;
  /** Told when a key stops being valid, so this process's cache drops it at once. */
  onKeyInvalidated?: (keyId: string) => void;
  now?: () => Date;
}

const NAME_MAX = 100;
const TENANT_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const DURATION = /^(\d+)\s*(s|m|h|d|w)$/;
const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

/** The longest lifetime or grace period a key can be given: ten years. */
export const MAX_DURATION_MS = 10 * 365 * UNIT_MS.d;

/** Parses `90s`, `15m`, `12h`, `30d`, `2w` into milliseconds; undefined if malformed, zero or over ten years. */
export function parseDuration(text: string): number | undefined {
  const match = DURATION.exec(text.trim());
  if (!match) return undefined;
  const ms = Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS];
  return ms > 0 && ms <= MAX_DURATION_MS ? ms : undefined;
}

export function keyView(row: KeyRow, now: Date): KeyView {
  const iso = (d: Date | null) => (d ? new Date(d).toISOString() : null);
  let status: KeyView['status'] = 'active';
  if (row.revoked_at && row.revoked_at <= now) status = 'revoked';
  else if (row.expires_at && row.expires_at <= now) status = 'expired';
  return {
    id: row.id,
    name: row.name,
    tenant: row.tenant_id,
    prefix: row.prefix,
    scopes: [...row.scopes],
    status,
    createdAt: new Date(row.created_at).toISOString(),
    expiresAt: iso(row.expires_at),
    revokedAt: iso(row.revoked_at),
    lastUsedAt: iso(row.last_used_at),
    rotatedFrom: row.rotated_from,
    limits: row.limits ?? {},
    allowedIps: [...row.allowed_cidrs],
  };
}

export class KeyService {
  readonly #o: KeyServiceOptions;
  readonly #now: () => Date;

  constructor(options: KeyServiceOptions) {
    this.#o = options;
    this.#now = options.now ?? (() => new Date());
  }

  async createKey(actor: Actor, input: CreateKeyInput): Promise<Result<CreatedKey>> {
    const tenant = input.tenant ?? (crossesTenants(actor.principal) ? DEFAULT_TENANT : actor.principal.tenant);
    const invalid = this.#validateKeyInput(input.name, input.scopes, tenant);
    if (invalid) return invalid;
    if (!crossesTenants(actor.principal) && tenant !== actor.principal.tenant) {
      this.#denied(actor, 'key.create', { reason: 'cross_tenant', targetTenant: tenant });
      return { ok: false, code: 'forbidden', message: `A key of tenant '${actor.principal.tenant}' cannot create keys for another tenant.` };
    }
    let expiresAt: Date | null = null;
    if (input.expiresIn !== undefined) {
      const ms = parseDuration(input.expiresIn);
      if (ms === undefined) return { ok: false, code: 'validation_failed', message: `expires: '${input.expiresIn}' is not a duration like 30d, 12h or 90m (at most ten years).` };
      expiresAt = new Date(this.#now().getTime() + ms);
    }
    let limits: Record<string, unknown> | undefined;
    if (input.limits !== undefined) {
      const parsed = LimitSetSchema.safeParse(input.limits);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        return { ok: false, code: 'validation_failed', message: `limits.${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}` };
      }
      limits = parsed.data;
    }
    const allowedIps = input.allowedIps ? [...new Set(input.allowedIps.map((ip) => ip.trim()))] : [];
    const badIp = allowedIps.map(cidrProblem).find(Boolean);
    if (badIp) return { ok: false, code: 'validation_failed', message: `allowedIps: ${badIp}` };
    if (allowedIps.length > 100) return { ok: false, code: 'validation_failed', message: 'allowedIps: at most 100 entries' };
    if (tenant === DEFAULT_TENANT) await this.#o.tenants.ensure(DEFAULT_TENANT, 'Default tenant');
    else if (!(await this.#o.tenants.find(tenant))) {
      return { ok: false, code: 'not_found', message: `Tenant '${tenant}' does not exist; create it first (bulwark tenants create ${tenant}).` };
    }
    const created = await this.#insertKey({ name: input.name, scopes: input.scopes, tenant, expiresAt, rotatedFrom: null, limits, allowedIps });
    this.#audit(actor, 'key.created', created.id, created.tenant, { name: created.name, scopes: created.scopes, expiresAt: created.expiresAt, limits: created.limits, allowedIps: created.allowedIps });
    return { ok: true, value: created };
  }

  async listKeys(actor: Actor, filter: { tenant?: string | undefined; includeRevoked?: boolean } = {}): Promise<Result<KeyView[]>> {
    const tenant = crossesTenants(actor.principal) ? filter.tenant : actor.principal.tenant;
    const rows = await this.#o.keys.list({ tenantId: tenant, includeRevoked: filter.includeRevoked ?? false });
    const now = this.#now();
    return { ok: true, value: rows.map((row) => keyView(row, now)) };
  }

  async getKey(actor: Actor, id: string): Promise<Result<KeyView>> {
    const row = await this.#visibleKey(actor, id);
    return row ? { ok: true, value: keyView(row, this.#now()) } : notFound(id);
  }

  async renameKey(actor: Actor, id: string, name: string): Promise<Result<KeyView>> {
    const invalid = validateName(name);
    if (invalid) return invalid;
    const before = await this.#visibleKey(actor, id);
    if (!before) return notFound(id);
    const row = await this.#o.keys.rename(id, name);
    if (!row) return notFound(id);
    this.#audit(actor, 'key.renamed', id, row.tenant_id, { from: before.name, to: name });
    return { ok: true, value: keyView(row, this.#now()) };
  }

  async revokeKey(actor: Actor, id: string): Promise<Result<KeyView>> {
    if (!(await this.#visibleKey(actor, id))) return notFound(id);
    const row = await this.#o.keys.revoke(id, this.#now());
    if (!row) return notFound(id);
    this.#o.onKeyInvalidated?.(id);
    this.#audit(actor, 'key.revoked', id, row.tenant_id, { name: row.name });
    return { ok: true, value: keyView(row, this.#now()) };
  }

  /**
   * Issues a new secret with the same name, tenant, scopes and expiry. The old key is revoked
   * at once, or — with a grace period — expires when the grace ends, so clients can switch over.
   */
  async rotateKey(actor: Actor, id: string, options: { grace?: string | undefined } = {}): Promise<Result<CreatedKey & { previous: KeyView }>> {
    const old = await this.#visibleKey(actor, id);
    if (!old) return notFound(id);
    const now = this.#now();
    if (keyView(old, now).status !== 'active') {
      return { ok: false, code: 'conflict', message: `Key ${id} is ${keyView(old, now).status}; only an active key can be rotated.` };
    }
    let graceMs = 0;
    if (options.grace !== undefined) {
      const ms = parseDuration(options.grace);
      if (ms === undefined) return { ok: false, code: 'validation_failed', message: `grace: '${options.grace}' is not a duration like 1h or 15m (at most ten years).` };
      graceMs = ms;
    }
    // One transaction: a failure can never leave both the old and an unseen new key valid.
    const created = await this.#o.keys.transaction(async (keys) => {
      const fresh = await this.#insertKey({ name: old.name, scopes: old.scopes, tenant: old.tenant_id, expiresAt: old.expires_at, rotatedFrom: old.id, limits: old.limits, allowedIps: old.allowed_cidrs }, keys);
      if (graceMs > 0) await keys.expireBy(old.id, new Date(now.getTime() + graceMs));
      else await keys.revoke(old.id, now);
      return fresh;
    });
    this.#o.onKeyInvalidated?.(old.id);
    const previous = await this.#o.keys.findById(old.id);
    this.#audit(actor, 'key.rotated', old.id, old.tenant_id, { newKeyId: created.id, graceSeconds: graceMs / 1000 });
    return { ok: true, value: { ...created, previous: keyView(previous ?? old, this.#now()) } };
  }

  async createTenant(actor: Actor, id: string, name?: string): Promise<Result<TenantView>> {
    const refused = operatorOnly(actor, this.#o.audit, 'tenant.create', 'Only an operator can create tenants.', { targetTenant: id.slice(0, 63) });
    if (refused) return refused;
    if (!TENANT_ID.test(id)) {
      return { ok: false, code: 'validation_failed', message: 'tenant: use 1-63 lower-case letters, digits, - or _, starting with a letter or digit.' };
    }
    const display = name ?? id;
    const invalid = validateName(display);
    if (invalid) return invalid;
    if (!(await this.#o.tenants.create(id, display))) return { ok: false, code: 'conflict', message: `Tenant '${id}' already exists.` };
    const row = await this.#o.tenants.find(id);
    this.#audit(actor, 'tenant.created', null, id, { name: display });
    return { ok: true, value: { id, name: display, createdAt: new Date(row?.created_at ?? this.#now()).toISOString() } };
  }

  async listTenants(actor: Actor): Promise<Result<TenantView[]>> {
    const rows = await this.#o.tenants.list();
    const visible = crossesTenants(actor.principal) ? rows : rows.filter((r) => r.id === actor.principal.tenant);
    return { ok: true, value: visible.map((r) => ({ id: r.id, name: r.name, createdAt: new Date(r.created_at).toISOString() })) };
  }

  async #insertKey(
    input: {
      name: string;
      scopes: readonly string[];
      tenant: string;
      expiresAt: Date | null;
      rotatedFrom: string | null;
      limits?: Record<string, unknown> | undefined;
      allowedIps?: readonly string[];
    },
    keys: KeyRepository = this.#o.keys,
  ): Promise<CreatedKey> {
    const generated = generateKey(this.#o.prefix);
    const row = await keys.insert({
      id: generated.id,
      tenantId: input.tenant,
      name: input.name,
      prefix: generated.prefix,
      hashAlg: this.#o.hasher.algorithm,
      keyHash: this.#o.hasher.hash(generated.secret),
      scopes: input.scopes,
      expiresAt: input.expiresAt,
      rotatedFrom: input.rotatedFrom,
      ...(input.limits ? { limits: input.limits } : {}),
      ...(input.allowedIps?.length ? { allowedCidrs: input.allowedIps } : {}),
    });
    return { ...keyView(row, this.#now()), key: generated.plaintext };
  }

  async #visibleKey(actor: Actor, id: string): Promise<KeyRow | undefined> {
    if (!/^[0-9A-Za-z]{1,64}$/.test(id)) return undefined;
    const row = await this.#o.keys.findById(id);
    if (!row) return undefined;
    // Another tenant's key is reported as missing, so ids cannot be probed across tenants; the
    // attempt is still an authorization failure, and audited as one.
    if (!crossesTenants(actor.principal) && row.tenant_id !== actor.principal.tenant) {
      this.#denied(actor, 'key.access', { reason: 'cross_tenant', targetKeyId: row.id, targetTenant: row.tenant_id });
      return undefined;
    }
    return row;
  }

  #validateKeyInput(name: string, scopes: readonly string[], tenant: string): Result<never> | undefined {
    const invalidName = validateName(name);
    if (invalidName) return invalidName;
    if (scopes.length === 0) return { ok: false, code: 'validation_failed', message: 'scopes: give at least one scope (read, write, admin, …).' };
    const bad = scopes.filter((s) => !isValidScope(s));
    if (bad.length) return { ok: false, code: 'validation_failed', message: `scopes: not valid: ${bad.join(', ')}.` };
    if (!TENANT_ID.test(tenant)) return { ok: false, code: 'validation_failed', message: 'tenant: use 1-63 lower-case letters, digits, - or _.' };
    return undefined;
  }

  #audit(actor: Actor, type: string, keyId: string | null, tenantId: string, details: Record<string, unknown>): void {
    this.#o.audit({
      type,
      outcome: 'success',
      tenantId,
      keyId,
      ip: actor.ip,
      userAgent: actor.userAgent,
      requestId: actor.requestId,
      method: actor.method,
      path: actor.path,
      details: { ...details, by: { kind: actor.principal.kind, keyId: actor.principal.keyId, tenant: actor.principal.tenant }, via: actor.via },
    });
  }

  #denied(actor: Actor, action: string, details: Record<string, unknown>): void {
    this.#o.audit(deniedEvent(actor, action, details));
  }
}

/** An authorization failure in management: the event names the caller; details name the action and target. */
export function deniedEvent(actor: Actor, action: string, details: Record<string, unknown>): AuditEventInput {
  return {
    type: 'authz.denied',
    outcome: 'denied',
    tenantId: actor.principal.tenant,
    keyId: actor.principal.keyId,
    ...actorFacts(actor),
    details: { action, ...details, via: actor.via },
  };
}

/** Where a management action came from, as every audit event about it records. */
export function actorFacts(actor: Actor): Pick<AuditEventInput, 'ip' | 'userAgent' | 'requestId' | 'method' | 'path'> {
  return { ip: actor.ip, userAgent: actor.userAgent, requestId: actor.requestId, method: actor.method, path: actor.path };
}

/**
 * The gate in front of every operator-only action: undefined for an operator; otherwise the
 * denial is audited and the `forbidden` failure to return is handed back.
 */
export function operatorOnly(
  actor: Actor,
  audit: (event: AuditEventInput) => void,
  action: string,
  message: string,
  details: Record<string, unknown> = {},
): Result<never> | undefined {
  if (crossesTenants(actor.principal)) return undefined;
  audit(deniedEvent(actor, action, { reason: 'operator_only', ...details }));
  return { ok: false, code: 'forbidden', message };
}

function validateName(name: string): Result<never> | undefined {
  const trimmed = name.trim();
  if (!trimmed || trimmed.length > NAME_MAX || /[\u0000-\u001f\u007f]/.test(name) || !isWellFormedText(name)) {
    return { ok: false, code: 'validation_failed', message: `name: give 1-${NAME_MAX} printable characters.` };
  }
  return undefined;
}

function notFound(id: string): Result<never> {
  return { ok: false, code: 'not_found', message: `No key with id '${id.slice(0, 64)}'.` };
}
