/**
 * Tickets for `GET /api/events?ticket=`: browsers' `EventSource` cannot set headers, and a key
 * never travels in a URL (it would land in logs, history and Referer headers). A client
 * authenticated by header asks `POST /api/events/ticket` for a ticket instead:
 *
 * - 32 random bytes, base64url; only SHA-256 of it is stored.
 * - valid for 60 seconds, and once: redeeming deletes it, atomically, so it works once on any
 *   instance sharing the store.
 * - bound to the principal that asked (it stands for nothing more) and to the Origin it was
 *   asked from (a page of another site cannot use a ticket it got hold of).
 * - accepted on `/api/events` only.
 */
import { randomBytes } from 'node:crypto';
import type { Context, MiddlewareHandler } from 'hono';
import type { Kysely } from 'kysely';
import type { AuditEventInput } from '../audit/log.js';
import { credentialCheckUnavailable } from '../auth/middleware.js';
import { hashSessionId } from '../auth/sessions.js';
import { clientIp, requestFacts } from '../http/client-info.js';
import type { BulwarkEnv } from '../http/context.js';
import { ApiError } from '../http/errors.js';
import { publicOrigin } from '../mcp/metadata.js';
import type { Principal, PrincipalKind } from '../auth/principal.js';
import type { Tables } from '../store/tables.js';

export const TICKET_TTL_MS = 60_000;
/** Principals backed by a store key, whose validity is re-checked when a ticket is redeemed. */
const STORE_KEY_KINDS: ReadonlySet<PrincipalKind> = new Set(['key', 'jwt']);
const TICKET = /^[A-Za-z0-9_-]{43}$/;

export type Redeemed = { ok: true; principal: Principal } | { ok: false; reason: 'malformed' | 'unknown_or_used' | 'expired' | 'wrong_origin' };

export class TicketStore {
  readonly #db: Kysely<Tables>;

  constructor(db: Kysely<Tables>) {
    this.#db = db;
  }

  async issue(principal: Principal, origin: string | undefined): Promise<{ ticket: string; expiresAt: Date }> {
    const ticket = randomBytes(32).toString('base64url');
    const expiresAt = new Date(Date.now() + TICKET_TTL_MS);
    const stored = { kind: principal.kind, tenant: principal.tenant, keyId: principal.keyId, keyName: principal.keyName, scopes: [...principal.scopes], expiresAt: principal.expiresAt?.toISOString() ?? null };
    await this.#db.insertInto('event_tickets').values({ id_hash: hashSessionId(ticket), principal: JSON.stringify(stored), origin: origin ?? null, expires_at: expiresAt }).execute();
    return { ticket, expiresAt };
  }

  /** Uses a ticket up: whatever the outcome, it cannot be presented again. */
  async redeem(ticket: string, origin: string | undefined): Promise<Redeemed> {
    if (!TICKET.test(ticket)) return { ok: false, reason: 'malformed' };
    const row = await this.#db.deleteFrom('event_tickets').where('id_hash', '=', hashSessionId(ticket)).returningAll().executeTakeFirst();
    if (!row) return { ok: false, reason: 'unknown_or_used' };
    if (row.expires_at.getTime() <= Date.now()) return { ok: false, reason: 'expired' };
    if ((row.origin ?? undefined) !== origin) return { ok: false, reason: 'wrong_origin' };
    const p = row.principal as { kind: PrincipalKind; tenant: string; keyId: string; keyName: string; scopes: string[]; expiresAt: string | null };
    // A ticket lives no longer than the credential that asked for it.
    if (p.expiresAt !== null && Date.parse(p.expiresAt) <= Date.now()) return { ok: false, reason: 'expired' };
    return { ok: true, principal: { kind: p.kind, tenant: p.tenant, keyId: p.keyId, keyName: p.keyName, scopes: p.scopes, expiresAt: p.expiresAt ? new Date(p.expiresAt) : null } };
  }

  /** Deletes expired tickets; returns how many. */
  async purgeExpired(): Promise<number> {
    const result = await this.#db.deleteFrom('event_tickets').where('expires_at', '<=', new Date()).executeTakeFirst();
    return Number(result.numDeletedRows);
  }
}

export interface TicketAuthOptions {
  tickets: TicketStore;
  audit(event: AuditEventInput): void;
  /** Whether the ticket's key may still be used, and from where (checked at redemption). */
  keyStillValid(keyId: string): Promise<false | { allowedCidrs: readonly string[] }>;
  onFailure?: (ip: string | undefined, c: Context) => void | Promise<void>;
  /** `server.publicUrl`: the origin of Bulwark's own pages, for same-origin requests without Origin. */
  publicUrl: string | undefined;
}

/**
 * Authenticates `GET /api/events?ticket=…` and nothing else, before the header check; every
 * other route and method ignores a `ticket` parameter. A bad ticket is a 401 like a bad key,
 * audited, and counts toward the address's lockout.
 */
export function ticketAuth(options: TicketAuthOptions): MiddlewareHandler<BulwarkEnv> {
  const { tickets, audit, keyStillValid, onFailure, publicUrl } = options;
  return async function ticketAuthMiddleware(c, next) {
    const ticket = c.req.query('ticket');
    if (c.req.method !== 'GET' || c.req.path !== '/api/events' || ticket === undefined) return next();
    if (c.req.header('authorization') !== undefined || c.req.header('x-api-key') !== undefined) {
      throw new ApiError('malformed_credential', 'Send either a ticket or a credential header, not both.');
    }
    // A same-origin GET carries no Origin (Fetch standard); the browser says so in Sec-Fetch-Site.
    const origin = c.req.header('origin') ?? (c.req.header('sec-fetch-site') === 'same-origin' ? publicOrigin(c, publicUrl) : undefined);
    let redeemed: Redeemed;
    try {
      redeemed = await tickets.redeem(ticket, origin);
    } catch {
      throw credentialCheckUnavailable();
    }
    let principal = redeemed.ok ? redeemed.principal : undefined;
    let reason = redeemed.ok ? undefined : `ticket_${redeemed.reason}`;
    if (principal && STORE_KEY_KINDS.has(principal.kind)) {
      // The key may have been revoked in the minute since; its address list applies as to the key itself.
      const valid = await keyStillValid(principal.keyId).catch(() => {
        throw credentialCheckUnavailable();
      });
      if (valid) principal = { ...principal, allowedCidrs: valid.allowedCidrs };
      else {
        principal = undefined;
        reason = 'ticket_key_invalid';
      }
    }
    if (!principal) {
      audit({ type: 'auth.failure', outcome: 'failure', ...requestFacts(c), details: { reason, credentialPresented: true, credential: 'ticket', origin: origin ?? null } });
      await onFailure?.(clientIp(c), c);
      throw new ApiError('unauthorized', 'Invalid or used ticket; ask POST /api/events/ticket for a new one.', { 'WWW-Authenticate': 'Bearer realm="bulwark", error="invalid_token"' });
    }
    c.set('principal', principal);
    c.set('authMethod', 'ticket');
    return next();
  };
}
