/**
 * Browser sessions on the admin listener (the dashboard's sign-in): the `SessionStore`
 * interface and its database implementation. Nothing here knows about HTTP or cookies;
 * `src/http/routes/login.ts` is the edge.
 *
 * - A session id is 32 bytes from the CSPRNG, base64url (256 bits, OWASP Session Management
 *   Cheat Sheet asks for at least 64). Only SHA-256 of it is stored: a copy of the table cannot
 *   be turned back into a cookie. A fast hash is enough for a 256-bit random value.
 * - The CSRF synchronizer token is HMAC-SHA256 keyed by the session id. It is unique per
 *   session and unpredictable without the id, so it needs no column: the server recomputes it
 *   from the cookie, and neither a leaked table nor a leaked token yields the id.
 * - A session ends at its absolute limit (or its key's own expiry, if sooner) whatever its
 *   activity, and after an idle period. `last_seen_at` is written at most once per
 *   `touchIntervalMs`, so a busy dashboard does not cost a write per request; the idle
 *   timeout is therefore exact to within that interval.
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import type { Kysely, Selectable } from 'kysely';
import type { KeyRepository } from '../store/repositories.js';
import type { AdminSessionsTable, Tables } from '../store/tables.js';
import type { Principal, PrincipalKind } from './principal.js';
import { StoreUnavailableError } from './verify.js';

const SESSION_ID_BYTES = 32;
/** 32 bytes in unpadded base64url. Anything else is refused before touching the database. */
const SESSION_ID = /^[A-Za-z0-9_-]{43}$/;
/** Domain separation for the CSRF token derived from a session id. */
const CSRF_LABEL = 'bulwark-admin-csrf-v1';
const USER_AGENT_MAX = 512;
const IP_MAX = 64;
const PRINCIPAL_KINDS: ReadonlySet<string> = new Set<PrincipalKind>(['key', 'bootstrap', 'operator']);

/** Where a session was opened from, for the operator's view of active sessions. */
export interface SessionMeta {
  ip?: string | undefined;
  userAgent?: string | undefined;
}

export interface CreatedSession {
  /** The session id: goes into the cookie and nowhere else (never logged, never stored). */
  id: string;
  csrfToken: string;
  expiresAt: Date;
  /** Seconds until `expiresAt`, for the cookie's Max-Age. */
  maxAgeSeconds: number;
}

export interface ActiveSession {
  principal: Principal;
  csrfToken: string;
  createdAt: Date;
  lastSeenAt: Date;
  expiresAt: Date;
}

/** Why a presented session id does not authenticate (for the audit log; clients get one message). */
export type SessionEndReason = 'unknown' | 'idle_timeout' | 'expired';

export type SessionLookup = { ok: true; session: ActiveSession } | { ok: false; reason: SessionEndReason };

export interface SessionStore {
  /** Opens a new session with a fresh id; never reuses or extends an existing one. */
  create(principal: Principal, meta?: SessionMeta): Promise<CreatedSession>;
  /** Looks a session up, enforcing the idle and absolute limits; an ended session is deleted. */
  get(id: string): Promise<SessionLookup>;
  /** Ends one session; true when it existed. */
  destroy(id: string): Promise<boolean>;
  /** Ends every session opened with this key (on revocation); returns how many. */
  destroyForKey(keyId: string): Promise<number>;
  /** Deletes sessions past their absolute limit or idle for longer than the idle timeout. */
  purgeExpired(): Promise<number>;
}

export interface DatabaseSessionStoreOptions {
  db: Kysely<Tables>;
  /** A session unused for this long ends (default 1 h). */
  idleTimeoutMs?: number;
  /** A session ends this long after sign-in, however active (default 12 h). */
  absoluteTimeoutMs?: number;
  /** `last_seen_at` is written at most this often per session (default 60 s). */
  touchIntervalMs?: number;
  now?: () => number;
}

type SessionRow = Selectable<AdminSessionsTable>;

export class DatabaseSessionStore implements SessionStore {
  readonly #db: Kysely<Tables>;
  readonly #idleTimeoutMs: number;
  readonly #absoluteTimeoutMs: number;
  readonly #touchIntervalMs: number;
  readonly #now: () => number;

  constructor(options: DatabaseSessionStoreOptions) {
    const { db, idleTimeoutMs = 3_600_000, absoluteTimeoutMs = 43_200_000, touchIntervalMs = 60_000, now = Date.now } = options;
    if (!db) throw new Error('DatabaseSessionStore: db is required');
    requirePositiveInteger('idleTimeoutMs', idleTimeoutMs);
    requirePositiveInteger('absoluteTimeoutMs', absoluteTimeoutMs);
    requirePositiveInteger('touchIntervalMs', touchIntervalMs);
    // Otherwise an active session would look idle between two writes of last_seen_at.
    if (touchIntervalMs >= idleTimeoutMs) throw new Error('DatabaseSessionStore: touchIntervalMs must be shorter than idleTimeoutMs');
    this.#db = db;
    this.#idleTimeoutMs = idleTimeoutMs;
    this.#absoluteTimeoutMs = absoluteTimeoutMs;
    this.#touchIntervalMs = touchIntervalMs;
    this.#now = now;
  }

  async create(principal: Principal, meta: SessionMeta = {}): Promise<CreatedSession> {
    // Only a credential someone presented can sign in; the BULWARK_AUTH=off principal cannot.
    if (!PRINCIPAL_KINDS.has(principal.kind)) throw new Error(`DatabaseSessionStore: a ${principal.kind} principal cannot open a session`);
    const now = this.#now();
    // A session never outlives the key that opened it.
    const expiresAtMs = Math.min(now + this.#absoluteTimeoutMs, principal.expiresAt?.getTime() ?? Number.POSITIVE_INFINITY);
    if (!(expiresAtMs > now)) throw new Error('DatabaseSessionStore: cannot open a session for an expired key');
    const id = randomBytes(SESSION_ID_BYTES).toString('base64url');
    const expiresAt = new Date(expiresAtMs);
    await this.#db
      .insertInto('admin_sessions')
      .values({
        id_hash: hashSessionId(id),
        key_id: principal.keyId,
        tenant_id: principal.tenant,
        principal_kind: principal.kind,
        key_name: principal.keyName,
        scopes: [...principal.scopes],
        key_expires_at: principal.expiresAt,
        created_at: new Date(now),
        last_seen_at: new Date(now),
        expires_at: expiresAt,
        ip: clip(meta.ip, IP_MAX),
        user_agent: clip(meta.userAgent, USER_AGENT_MAX),
      })
      .execute();
    return { id, csrfToken: csrfTokenFor(id), expiresAt, maxAgeSeconds: Math.floor((expiresAtMs - now) / 1000) };
  }

  async get(id: string): Promise<SessionLookup> {
    if (!SESSION_ID.test(id)) return { ok: false, reason: 'unknown' };
    const idHash = hashSessionId(id);
    const row = await this.#db.selectFrom('admin_sessions').selectAll().where('id_hash', '=', idHash).executeTakeFirst();
    if (!row || !PRINCIPAL_KINDS.has(row.principal_kind)) return { ok: false, reason: 'unknown' };
    const now = this.#now();
    const lastSeen = row.last_seen_at.getTime();
    const ended: SessionEndReason | undefined =
      row.expires_at.getTime() <= now ? 'expired' : now - lastSeen >= this.#idleTimeoutMs ? 'idle_timeout' : undefined;
    if (ended) {
      await this.#db.deleteFrom('admin_sessions').where('id_hash', '=', idHash).execute();
      return { ok: false, reason: ended };
    }
    let lastSeenAt = row.last_seen_at;
    if (now - lastSeen >= this.#touchIntervalMs) {
      lastSeenAt = new Date(now);
      // Guarded so that a concurrent request with an older clock never moves the time back.
      await this.#db.updateTable('admin_sessions').set({ last_seen_at: lastSeenAt }).where('id_hash', '=', idHash).where('last_seen_at', '<', lastSeenAt).execute();
    }
    return { ok: true, session: { principal: principalOf(row), csrfToken: csrfTokenFor(id), createdAt: row.created_at, lastSeenAt, expiresAt: row.expires_at } };
  }

  async destroy(id: string): Promise<boolean> {
    if (!SESSION_ID.test(id)) return false;
    const result = await this.#db.deleteFrom('admin_sessions').where('id_hash', '=', hashSessionId(id)).executeTakeFirst();
    return Number(result.numDeletedRows) > 0;
  }

  async destroyForKey(keyId: string): Promise<number> {
    const result = await this.#db.deleteFrom('admin_sessions').where('key_id', '=', keyId).executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  async purgeExpired(): Promise<number> {
    const now = this.#now();
    const result = await this.#db
      .deleteFrom('admin_sessions')
      .where((eb) => eb.or([eb('expires_at', '<=', new Date(now)), eb('last_seen_at', '<=', new Date(now - this.#idleTimeoutMs))]))
      .executeTakeFirst();
    return Number(result.numDeletedRows);
  }
}

export interface KeyStillValidOptions {
  keys: Pick<KeyRepository, 'findById'>;
  /**
   * Ids of credentials that are not in the store but still configured (`admin-token`,
   * `admin-key`, `bootstrap`): valid while they are listed. Leave out one that is gone.
   */
  staticKeyIds?: Iterable<string>;
  now?: () => number;
}

/**
 * The check `sessionAuth` runs on every request: is the key that opened a session still
 * usable? Asks the store each time (one indexed lookup, like a bearer request's), so a key
 * revoked on any instance stops its sessions on every instance at once.
 */
export function keyStillValidInStore(options: KeyStillValidOptions): (keyId: string) => Promise<false | { allowedCidrs: readonly string[] }> {
  const { keys, now = Date.now } = options;
  const staticIds = new Set(options.staticKeyIds ?? []);
  return async function keyStillValid(keyId) {
    if (staticIds.has(keyId)) return { allowedCidrs: [] };
    let row;
    try {
      row = await keys.findById(keyId);
    } catch (err) {
      throw new StoreUnavailableError(err);
    }
    if (!row) return false;
    const at = now();
    const usable = !(row.revoked_at && row.revoked_at.getTime() <= at) && !(row.expires_at && row.expires_at.getTime() <= at);
    return usable && { allowedCidrs: row.allowed_cidrs };
  };
}

/** SHA-256 (hex) of a session id: the only form in which an id reaches the database. */
export function hashSessionId(id: string): string {
  return createHash('sha256').update(id).digest('hex');
}

function csrfTokenFor(id: string): string {
  return createHmac('sha256', id).update(CSRF_LABEL).digest('base64url');
}

function principalOf(row: SessionRow): Principal {
  return {
    kind: row.principal_kind as PrincipalKind,
    tenant: row.tenant_id,
    keyId: row.key_id,
    keyName: row.key_name,
    scopes: Object.freeze([...row.scopes]),
    expiresAt: row.key_expires_at,
  };
}

/** Header values are client-chosen: keep them short, and without the NUL PostgreSQL refuses in text. */
function clip(value: string | undefined, max: number): string | null {
  if (!value) return null;
  return value.replaceAll('\u0000', '').slice(0, max) || null;
}

function requirePositiveInteger(name: string, value: number): void {
  if (!Number.isInteger(value) || value <= 0) throw new Error(`DatabaseSessionStore: ${name} must be a positive integer (milliseconds)`);
}
