/**
 * Keeps tenants' OAuth access tokens fresh: refreshed when less than `refreshBeforeMs` remain,
 * or when upstream refuses the current one. Concurrent requests of a tenant share one refresh
 * (single flight), the rotated refresh token is persisted where the credential came from (the
 * file rewritten mode 600 via rename, or the encrypted store row) before anyone uses the new
 * access token, and a failed refresh is audited and reported — the caller answers 502.
 */
import type { AuditEventInput } from '../audit/log.js';
import type { Alert } from '../monitor/alerts.js';
import type { CredentialRecord, UpstreamCredential } from './credentials.js';

type OAuthCredential = Extract<UpstreamCredential, { type: 'oauth' }>;

export type RefreshOutcome = { ok: true; credential: UpstreamCredential } | { ok: false; reason: string };

export interface OAuthRefresherOptions {
  tokenUrl: string;
  clientId: string;
  /** Refresh when less than this remains (default 60 s). */
  refreshBeforeMs?: number;
  /** Writes the refreshed credential back to where the record came from. */
  persist: (record: CredentialRecord, credential: UpstreamCredential) => Promise<void>;
  audit: (event: AuditEventInput) => void;
  /** Tells operators now: a tenant's upstream calls fail until its credential is fixed. */
  alert?: (alert: Alert) => void;
  logError: (message: string, fields: Record<string, unknown>) => void;
  timeoutMs?: number;
  now?: () => number;
}

interface TokenResponse {
  access_token?: unknown;
  refresh_token?: unknown;
  expires_in?: unknown;
}

export class OAuthRefresher {
  readonly #o: Required<Omit<OAuthRefresherOptions, 'now' | 'alert'>> & { now: () => number; alert: ((alert: Alert) => void) | undefined };
  readonly #inflight = new Map<string, Promise<RefreshOutcome>>();
  /**
   * Refreshed credentials that could not be persisted, by tenant, with the access token they
   * replaced: the source still holds the old (possibly rotated-away) tokens, so requests that
   * read it are given the refreshed ones instead.
   */
  readonly #unpersisted = new Map<string, { credential: OAuthCredential; replaces: string }>();

  constructor(options: OAuthRefresherOptions) {
    const { refreshBeforeMs = 60_000, timeoutMs = 15_000, now = Date.now } = options;
    if (!/^https?:\/\//.test(options.tokenUrl)) throw new Error('upstream.oauthTokenUrl: must be an http(s) URL');
    if (!options.clientId) throw new Error('upstream.oauthClientId: is required');
    this.#o = { ...options, refreshBeforeMs, timeoutMs, now, alert: options.alert };
  }

  /** The credential to use now: an API key as is, an OAuth token refreshed first if it is about to expire. */
  async ensureFresh(record: CredentialRecord): Promise<RefreshOutcome> {
    const credential = this.#current(record);
    if (credential.type !== 'oauth') return { ok: true, credential };
    if (credential.expiresAt - this.#o.now() > this.#o.refreshBeforeMs) return { ok: true, credential };
    return this.#refresh(record, credential);
  }

  /**
   * After upstream refused `rejected`: refresh, unless another request already replaced that
   * token, in which case the newer one is used.
   */
  async afterRejection(record: CredentialRecord, rejected: UpstreamCredential): Promise<RefreshOutcome> {
    const credential = this.#current(record);
    if (credential.type !== 'oauth' || rejected.type !== 'oauth') return { ok: false, reason: 'not_oauth' };
    if (credential.accessToken !== rejected.accessToken) return { ok: true, credential };
    return this.#refresh(record, credential);
  }

  #current(record: CredentialRecord): UpstreamCredential {
    const credential = record.credential;
    const unpersisted = this.#unpersisted.get(record.tenant);
    if (!unpersisted) return credential;
    if (credential.type === 'oauth' && credential.accessToken === unpersisted.replaces) return unpersisted.credential;
    this.#unpersisted.delete(record.tenant); // the source has moved on (an operator replaced it)
    return credential;
  }

  #refresh(record: CredentialRecord, credential: OAuthCredential): Promise<RefreshOutcome> {
    const running = this.#inflight.get(record.tenant);
    if (running) return running;
    const refresh = this.#doRefresh(record, credential).finally(() => this.#inflight.delete(record.tenant));
    this.#inflight.set(record.tenant, refresh);
    return refresh;
  }

  async #doRefresh(record: CredentialRecord, credential: OAuthCredential): Promise<RefreshOutcome> {
    const fail = (reason: string, detail: Record<string, unknown> = {}): RefreshOutcome => {
      this.#o.audit({ type: 'credentials.refresh_failed', outcome: 'failure', tenantId: record.tenant, details: { reason, source: record.source, ...detail } });
      this.#o.logError('OAuth refresh of an upstream credential failed', { tenant: record.tenant, reason, ...detail });
      this.#o.alert?.({
        type: 'credentials.refresh_failed',
        severity: 'critical',
        tenant: record.tenant,
        message: `the upstream OAuth credential could not be refreshed (${reason}); the tenant's calls fail with 502 until it is replaced`,
        details: { reason, source: record.source, ...detail },
      });
      return { ok: false, reason };
    };
    let response: Response;
    try {
      response = await fetch(this.#o.tokenUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json' },
        body: JSON.stringify({ grant_type: 'refresh_token', refresh_token: credential.refreshToken, client_id: this.#o.clientId }),
        signal: AbortSignal.timeout(this.#o.timeoutMs),
      });
    } catch (err) {
      return fail('token_endpoint_unreachable', { error: (err as Error).name });
    }
    let body: TokenResponse & { error?: unknown };
    try {
      body = (await response.json()) as TokenResponse & { error?: unknown };
    } catch {
      return fail('token_endpoint_bad_response', { status: response.status });
    }
    if (!response.ok || typeof body.access_token !== 'string' || !body.access_token) {
      return fail('refresh_refused', { status: response.status, error: typeof body.error === 'string' ? body.error.slice(0, 64) : null });
    }
    const expiresIn = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 3600;
    const refreshed: OAuthCredential = {
      type: 'oauth',
      accessToken: body.access_token,
      // Rotation: a new refresh token replaces the old one, which stops working.
      refreshToken: typeof body.refresh_token === 'string' && body.refresh_token ? body.refresh_token : credential.refreshToken,
      expiresAt: this.#o.now() + expiresIn * 1000,
    };
    try {
      await this.#o.persist(record, refreshed);
      this.#unpersisted.delete(record.tenant);
    } catch (err) {
      // The old refresh token may already be void: keep the new one in memory, and say so loudly.
      this.#unpersisted.set(record.tenant, { credential: refreshed, replaces: credential.accessToken });
      fail('persist_failed', { error: (err as Error).message.slice(0, 200) });
      return { ok: true, credential: refreshed };
    }
    this.#o.audit({ type: 'credentials.refreshed', outcome: 'success', tenantId: record.tenant, details: { source: record.source, expiresAt: new Date(refreshed.expiresAt).toISOString() } });
    return { ok: true, credential: refreshed };
  }
}
