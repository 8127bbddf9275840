/**
 * Bulwark's own access token for one upstream MCP server, from the OAuth 2.0 client-credentials
 * grant (RFC 6749 §4.4, `client_secret_basic`, with an RFC 8707 `resource` when configured).
 * Renewed a minute before it expires, or after the upstream answers 401; concurrent requests
 * share one token request. No message here holds the secret or a token.
 */

export interface ClientCredentials {
  tokenUrl: string;
  clientId: string;
  clientSecret: string;
  scope?: string | undefined;
  resource?: string | undefined;
}

export class ClientCredentialsToken {
  readonly #o: ClientCredentials;
  readonly #timeoutMs: number;
  #current: { token: string; renewAt: number } | undefined;
  #pending: Promise<string> | undefined;

  constructor(options: ClientCredentials, timeoutMs: number) {
    this.#o = options;
    this.#timeoutMs = timeoutMs;
  }

  get(): Promise<string> {
    if (this.#current && Date.now() < this.#current.renewAt) return Promise.resolve(this.#current.token);
    this.#pending ??= this.#fetch().finally(() => {
      this.#pending = undefined;
    });
    return this.#pending;
  }

  invalidate(): void {
    this.#current = undefined;
  }

  async #fetch(): Promise<string> {
    const body = new URLSearchParams({ grant_type: 'client_credentials' });
    if (this.#o.scope) body.set('scope', this.#o.scope);
    if (this.#o.resource) body.set('resource', this.#o.resource);
    const response = await fetch(this.#o.tokenUrl, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        accept: 'application/json',
        // RFC 6749 §2.3.1: each part form-encoded, then joined and base64-encoded.
        authorization: `Basic ${Buffer.from(`${encodeURIComponent(this.#o.clientId)}:${encodeURIComponent(this.#o.clientSecret)}`).toString('base64')}`,
      },
      body,
      // The client secret must not follow a redirect to wherever it points.
      redirect: 'error',
      signal: AbortSignal.timeout(this.#timeoutMs),
    });
    const payload = (await response.json().catch(() => ({}))) as { access_token?: unknown; expires_in?: unknown; error?: unknown };
    if (!response.ok || typeof payload.access_token !== 'string') {
      // The token endpoint's error code is safe to report; the rest of its body may not be.
      throw new Error(`token endpoint answered ${response.status}${typeof payload.error === 'string' ? ` (${payload.error.slice(0, 64)})` : ''}`);
    }
    const lifetimeMs = typeof payload.expires_in === 'number' && payload.expires_in > 0 ? payload.expires_in * 1000 : 3_600_000;
    this.#current = { token: payload.access_token, renewAt: Date.now() + Math.max(lifetimeMs - 60_000, lifetimeMs / 2) };
    return payload.access_token;
  }
}
