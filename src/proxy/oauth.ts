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

/** How long a refused refresh token is not offered to the token endpoint again. */
const FAILURE_BACKOFF_MS = 30_000;
/** After an unreachable or failing token endpoint: a short pause, then try again. */
const TRANSIENT_BACKOFF_MS = 2_000;

export type RefreshOutcome = { ok: true; credential: UpstreamCredential } | { ok: false; reason: string };

export interface OAuthRefresherOptions {
  tokenUrl: string;
  clientId: string;
  /** Refresh when less than this remains (default 60 s). */
  refreshBeforeMs?: number;
  /**
   * Writes the refreshed credential back to where the record came from, only if the source
   * still holds one of `expectedRefreshTokens` (what this process last saw there); returns
   * false when it moved on (an operator replaced it).
   */
  persist: (record: CredentialRecord, credential: UpstreamCredential, expectedRefreshTokens: readonly string[]) => Promise<boolean>;
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
   * Each tenant's last successful refresh: the access token it replaced and what replaced it. A
   * request that read its record before the refresh landed still holds the old, rotated-away
   * tokens; it is given the new ones instead of refreshing (and failing) again.
   */
  readonly #lastRefresh = new Map<string, { from: string; to: OAuthCredential }>();
  /** A refresh that failed, by tenant: not retried with the same refresh token until `until`. */
  readonly #failures = new Map<string, { refreshToken: string; until: number; reason: string }>();

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

  /** The credential itself, as a success, while its access token has not expired yet. */
  #stillValid(credential: OAuthCredential): RefreshOutcome | undefined {
    return credential.expiresAt > this.#o.now() + 5_000 ? { ok: true, credential } : undefined;
  }

  #current(record: CredentialRecord): UpstreamCredential {
    const credential = record.credential;
    const last = this.#lastRefresh.get(record.tenant);
    if (last && credential.type === 'oauth' && credential.accessToken === last.from) return last.to;
    return credential;
  }

  #refresh(record: CredentialRecord, credential: OAuthCredential): Promise<RefreshOutcome> {
    const running = this.#inflight.get(record.tenant);
    if (running) return running;
    // A refresh token that was just refused will be refused again: answer from memory for a
    // while instead of hammering the token endpoint and paging operators on every request.
    const failed = this.#failures.get(record.tenant);
    if (failed && failed.refreshToken === credential.refreshToken && this.#o.now() < failed.until) {
      return Promise.resolve(this.#stillValid(credential) ?? { ok: false, reason: failed.reason });
    }
    const refresh = this.#doRefresh(record, credential).finally(() => this.#inflight.delete(record.tenant));
    this.#inflight.set(record.tenant, refresh);
    return refresh;
  }

  async #doRefresh(record: CredentialRecord, credential: OAuthCredential): Promise<RefreshOutcome> {
    const fail = (reason: string, detail: Record<string, unknown> = {}): RefreshOutcome => {
      const repeated = this.#failures.get(record.tenant)?.refreshToken === credential.refreshToken;
      // Only a refusal is certain to repeat; an unreachable or failing endpoint is tried again soon.
      const backoff = reason === 'refresh_refused' ? FAILURE_BACKOFF_MS : TRANSIENT_BACKOFF_MS;
      this.#failures.set(record.tenant, { refreshToken: credential.refreshToken, until: this.#o.now() + backoff, reason });
      this.#o.audit({ type: 'credentials.refresh_failed', outcome: 'failure', tenantId: record.tenant, details: { reason, source: record.source, ...detail } });
      this.#o.logError('OAuth refresh of an upstream credential failed', { tenant: record.tenant, reason, ...detail });
      // Alert on the change of state, not on every retry of the same dead token.
      if (!repeated) this.#o.alert?.({
        type: 'credentials.refresh_failed',
        severity: 'critical',
        tenant: record.tenant,
        message: `the upstream OAuth credential could not be refreshed (${reason}); the tenant's calls fail with 502 until it is replaced`,
        details: { reason, source: record.source, ...detail },
      });
      // A token that still works is used while the refresh cannot be made.
      return this.#stillValid(credential) ?? { ok: false, reason };
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
      const reason = response.status >= 500 ? 'token_endpoint_failed' : 'refresh_refused';
      return fail(reason, { status: response.status, error: typeof body.error === 'string' ? body.error.slice(0, 64) : null });
    }
    const expiresIn = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 3600;
    const refreshed: OAuthCredential = {
      type: 'oauth',
      accessToken: body.access_token,
      // Rotation: a new refresh token replaces the old one, which stops working.
      refreshToken: typeof body.refresh_token === 'string' && body.refresh_token ? body.refresh_token : credential.refreshToken,
      expiresAt: this.#o.now() + expiresIn * 1000,
    };
    this.#failures.delete(record.tenant);
    // The source may still hold the token this process refreshed from, or (after a save that
    // failed) the one before it: either is ours to replace.
    const expected = [...new Set([credential.refreshToken, record.credential.type === 'oauth' ? record.credential.refreshToken : ''])].filter(Boolean);
    try {
      const persisted = await this.#o.persist(record, refreshed, expected);
      if (!persisted) {
        // An operator replaced the credential meanwhile: theirs wins for new reads; requests
        // still holding the old record use ours rather than refreshing a rotated-away token.
        this.#lastRefresh.set(record.tenant, { from: credential.accessToken, to: refreshed });
        return { ok: true, credential: refreshed };
      }
    } catch (err) {
      // The old refresh token is void now: keep the new one in memory, and say so loudly.
      this.#lastRefresh.set(record.tenant, { from: credential.accessToken, to: refreshed });
      this.#o.audit({ type: 'credentials.refresh_failed', outcome: 'failure', tenantId: record.tenant, details: { reason: 'persist_failed', source: record.source } });
      this.#o.logError('a refreshed upstream credential could not be saved; it is kept in memory until restart', { tenant: record.tenant, error: (err as Error).message.slice(0, 200) });
      return { ok: true, credential: refreshed };
    }
    this.#lastRefresh.set(record.tenant, { from: credential.accessToken, to: refreshed });
    this.#o.audit({ type: 'credentials.refreshed', outcome: 'success', tenantId: record.tenant, details: { source: record.source, expiresAt: new Date(refreshed.expiresAt).toISOString() } });
    return { ok: true, credential: refreshed };
  }
}
