/**
 * Upstream credentials per tenant: an Anthropic API key, or an OAuth token set Bulwark
 * refreshes itself. They come from a credentials directory (`<tenant>.json`, mode 600 in a
 * mode-700 directory) that is hot-reloaded, and/or from the store, encrypted. A file wins over
 * the store for the same tenant. Credentials never leave this module except towards upstream.
 */
import { type FSWatcher, readFileSync, readdirSync, statSync, watch } from 'node:fs';
import path from 'node:path';
import type { Kysely } from 'kysely';
import { z } from 'zod';
import type { AuditEventInput } from '../audit/log.js';
import type { KeyRing } from '../store/crypto.js';
import { writePrivateFile } from '../store/data-dir.js';
import type { Tables } from '../store/tables.js';

export type UpstreamCredential =
  | { type: 'api_key'; apiKey: string }
  | { type: 'oauth'; accessToken: string; refreshToken: string; /** epoch ms */ expiresAt: number };

export interface CredentialRecord {
  tenant: string;
  credential: UpstreamCredential;
  source: 'file' | 'store';
  /** The file it came from, for a file credential. */
  file?: string;
  updatedAt: Date;
}

/** How long a stored credential read earlier may be used while the store cannot be reached. */
const STALE_IF_ERROR_MS = 60_000;
const TENANT_FILE = /^([a-z0-9][a-z0-9_-]{0,62})\.json$/;

/** The on-disk and stdin format, as documented in the README. */
export const CredentialJson = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('api_key'), api_key: z.string().min(1) }),
  z.strictObject({
    type: z.literal('oauth'),
    access_token: z.string().min(1),
    refresh_token: z.string().min(1),
    /** Epoch seconds, epoch milliseconds, or an ISO date. */
    expires_at: z.union([z.number().positive(), z.string().min(1)]),
  }),
]);

/** Parses the documented JSON form; the message names the field, never a value. */
export function parseCredential(value: unknown): { ok: true; credential: UpstreamCredential } | { ok: false; message: string } {
  const parsed = CredentialJson.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return { ok: false, message: `${issue?.path.join('.') || 'credential'}: ${issue?.message ?? 'invalid'}` };
  }
  const data = parsed.data;
  if (data.type === 'api_key') return { ok: true, credential: { type: 'api_key', apiKey: data.api_key } };
  const expiresAt = toEpochMs(data.expires_at);
  if (expiresAt === undefined) return { ok: false, message: 'expires_at: not a time (epoch seconds, epoch ms or ISO 8601)' };
  return { ok: true, credential: { type: 'oauth', accessToken: data.access_token, refreshToken: data.refresh_token, expiresAt } };
}

/** The documented JSON form of a credential, for writing back a rotated OAuth token. */
export function credentialToJson(credential: UpstreamCredential): Record<string, unknown> {
  return credential.type === 'api_key'
    ? { type: 'api_key', api_key: credential.apiKey }
    : { type: 'oauth', access_token: credential.accessToken, refresh_token: credential.refreshToken, expires_at: Math.floor(credential.expiresAt / 1000) };
}

function toEpochMs(value: number | string): number | undefined {
  if (typeof value === 'number') return value < 1e12 ? value * 1000 : value; // seconds or milliseconds
  const ms = Date.parse(value);
  return Number.isFinite(ms) ? ms : /^\d+$/.test(value) ? toEpochMs(Number(value)) : undefined;
}

export interface FileCredentialsOptions {
  dir: string;
  /** Production refuses files that are open to others or owned by someone else; development warns. */
  strictPermissions: boolean;
  audit: (event: AuditEventInput) => void;
  warn: (message: string, fields?: Record<string, unknown>) => void;
  /** Periodic rescan, in addition to fs.watch (which can miss events); bounds reload latency. */
  pollMs?: number;
}

interface Seen {
  signature: string;
  record: CredentialRecord | undefined;
}

/**
 * The credentials directory, kept in memory and reloaded when a file changes: an `fs.watch`
 * plus a periodic rescan, comparing inode, size and mtime, so atomic renames are seen too. A
 * file that is unreadable, invalid or too open keeps the last good credential and is audited.
 */
export class FileCredentials {
  readonly #o: Required<FileCredentialsOptions>;
  readonly #seen = new Map<string, Seen>();
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: FileCredentialsOptions) {
    const { pollMs = 1_000 } = options;
    if (!options.dir) throw new Error('FileCredentials: dir is required');
    this.#o = { ...options, pollMs };
  }

  /** Loads the directory now and keeps watching it. A missing directory is simply empty. */
  start(): void {
    this.scan();
    try {
      this.#watcher = watch(this.#o.dir, { persistent: false }, () => this.scan());
      this.#watcher.on('error', () => {});
    } catch {
      // No directory yet: the rescan picks it up once it exists.
    }
    this.#timer = setInterval(() => this.scan(), this.#o.pollMs);
    this.#timer.unref();
  }

  stop(): void {
    this.#watcher?.close();
    clearInterval(this.#timer);
  }

  get(tenant: string): CredentialRecord | undefined {
    return this.#seen.get(tenant)?.record;
  }

  list(): CredentialRecord[] {
    return [...this.#seen.values()].flatMap((s) => (s.record ? [s.record] : []));
  }

  /**
   * Rewrites a tenant's file atomically (mode 600, via rename) with a rotated OAuth token — only
   * if the file still holds `expectedRefreshToken`, so an operator's new file is never replaced.
   */
  persistIfUnchanged(tenant: string, credential: UpstreamCredential, expectedRefreshTokens: readonly string[]): boolean {
    const file = path.join(this.#o.dir, `${tenant}.json`);
    try {
      const current = parseCredential(JSON.parse(readFileSync(file, 'utf8')));
      if (!current.ok || current.credential.type !== 'oauth' || !expectedRefreshTokens.includes(current.credential.refreshToken)) return false;
    } catch {
      return false;
    }
    this.persist(tenant, credential);
    return true;
  }

  /** Rewrites a tenant's file atomically (mode 600, via rename). */
  persist(tenant: string, credential: UpstreamCredential): void {
    const file = path.join(this.#o.dir, `${tenant}.json`);
    writePrivateFile(file, `${JSON.stringify(credentialToJson(credential), null, 2)}\n`);
    const stat = statSync(file);
    this.#seen.set(tenant, {
      signature: signatureOf(stat),
      record: { tenant, credential, source: 'file', file, updatedAt: stat.mtime },
    });
  }

  /** Reconciles memory with the directory. Safe to call at any time. */
  scan(): void {
    let names: string[];
    try {
      names = readdirSync(this.#o.dir);
    } catch {
      names = [];
    }
    const present = new Set<string>();
    for (const name of names) {
      const match = TENANT_FILE.exec(name);
      if (!match) continue;
      const tenant = match[1] as string;
      present.add(tenant);
      this.#load(tenant, path.join(this.#o.dir, name));
    }
    for (const [tenant, seen] of this.#seen) {
      if (present.has(tenant)) continue;
      this.#seen.delete(tenant);
      if (seen.record) {
        this.#o.audit({ type: 'credentials.removed', outcome: 'info', tenantId: tenant, details: { source: 'file' } });
      }
    }
  }

  #load(tenant: string, file: string): void {
    let stat;
    try {
      stat = statSync(file);
    } catch {
      return; // vanished between readdir and stat; the next scan settles it
    }
    const signature = signatureOf(stat);
    const previous = this.#seen.get(tenant);
    if (previous?.signature === signature) return;

    const refuse = (reason: string) => {
      this.#seen.set(tenant, { signature, record: previous?.record });
      this.#o.audit({
        type: 'credentials.invalid',
        outcome: 'failure',
        tenantId: tenant,
        details: { file, reason, keptPrevious: Boolean(previous?.record) },
      });
      this.#o.warn(`credential file ${file} ${reason}; ${previous?.record ? 'keeping the last good credential' : 'tenant has no file credential'}`);
    };

    const problem = permissionProblem(stat, this.#o.dir);
    if (problem) {
      if (this.#o.strictPermissions) return refuse(`refused: ${problem}`);
      this.#o.warn(`credential file ${file}: ${problem} (production refuses it)`);
    }
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return refuse(code ? `is unreadable (${code})` : 'is not valid JSON');
    }
    const parsed = parseCredential(json);
    if (!parsed.ok) return refuse(`is invalid: ${parsed.message}`);
    this.#seen.set(tenant, { signature, record: { tenant, credential: parsed.credential, source: 'file', file, updatedAt: stat.mtime } });
    this.#o.audit({ type: previous?.record ? 'credentials.reloaded' : 'credentials.loaded', outcome: 'info', tenantId: tenant, details: { source: 'file', type: parsed.credential.type } });
  }
}

function signatureOf(stat: { ino: number; size: number; mtimeMs: number; mode: number }): string {
  return `${stat.ino}:${stat.size}:${stat.mtimeMs}:${stat.mode}`;
}

/** Why a credential file is too open, or undefined. Checks the file and its directory. */
export function permissionProblem(stat: { mode: number; uid: number }, dir: string): string | undefined {
  if ((stat.mode & 0o077) !== 0) return `is accessible by group or other (mode ${(stat.mode & 0o777).toString(8)}; want 600)`;
  if (typeof process.getuid === 'function' && stat.uid !== process.getuid()) return 'is owned by another user';
  try {
    const dirMode = statSync(dir).mode;
    if ((dirMode & 0o077) !== 0) return `is in a directory accessible by group or other (mode ${(dirMode & 0o777).toString(8)}; want 700)`;
  } catch {
    // the directory vanished; the next scan clears its files
  }
  return undefined;
}

export interface StoredCredentialsOptions {
  db: Kysely<Tables>;
  keyRing: KeyRing;
  /** How long a decrypted credential is reused; bounds how late a change by another process lands. */
  cacheMs?: number;
}

/** Credentials kept in the store, encrypted with the key ring and bound to their tenant. */
export class StoredCredentials {
  readonly #db: Kysely<Tables>;
  readonly #ring: KeyRing;
  readonly #cacheMs: number;
  readonly #cache = new Map<string, { record: CredentialRecord | undefined; at: number }>();

  constructor(options: StoredCredentialsOptions) {
    this.#db = options.db;
    this.#ring = options.keyRing;
    this.#cacheMs = options.cacheMs ?? 2_000;
  }

  static aad(tenant: string): string {
    return `upstream_credentials:${tenant}`;
  }

  async get(tenant: string): Promise<CredentialRecord | undefined> {
    const cached = this.#cache.get(tenant);
    if (cached && Date.now() - cached.at < this.#cacheMs) return cached.record;
    let row;
    try {
      row = await this.#db.selectFrom('upstream_credentials').selectAll().where('tenant_id', '=', tenant).executeTakeFirst();
    } catch (err) {
      // While the store is away, keep using what was read within the last minute.
      if (cached && Date.now() - cached.at < STALE_IF_ERROR_MS) return cached.record;
      throw err;
    }
    let record: CredentialRecord | undefined;
    if (row) {
      const parsed = parseCredential(JSON.parse(this.#ring.decryptText(row.secret, StoredCredentials.aad(tenant))));
      if (parsed.ok) record = { tenant, credential: parsed.credential, source: 'store', updatedAt: new Date(row.updated_at) };
    }
    this.#cache.set(tenant, { record, at: Date.now() });
    return record;
  }

  async set(tenant: string, credential: UpstreamCredential): Promise<void> {
    const secret = this.#ring.encrypt(JSON.stringify(credentialToJson(credential)), StoredCredentials.aad(tenant));
    await this.#db
      .insertInto('upstream_credentials')
      .values({ tenant_id: tenant, type: credential.type, secret, updated_at: new Date() })
      .onConflict((oc) => oc.column('tenant_id').doUpdateSet({ type: credential.type, secret, updated_at: new Date() }))
      .execute();
    this.#cache.delete(tenant);
  }

  /** Replaces a rotated OAuth credential only if the row still holds one of `expectedRefreshTokens`. */
  async setIfUnchanged(tenant: string, credential: UpstreamCredential, expectedRefreshTokens: readonly string[]): Promise<boolean> {
    // Compare-and-swap on the ciphertext; a re-encryption (same tokens, new ciphertext) racing
    // us is not a real change, so read again and retry a few times before giving up.
    for (let attempt = 0; attempt < 3; attempt++) {
      const row = await this.#db.selectFrom('upstream_credentials').select('secret').where('tenant_id', '=', tenant).executeTakeFirst();
      if (!row) return false;
      const current = parseCredential(JSON.parse(this.#ring.decryptText(row.secret, StoredCredentials.aad(tenant))));
      if (!current.ok || current.credential.type !== 'oauth' || !expectedRefreshTokens.includes(current.credential.refreshToken)) return false;
      const secret = this.#ring.encrypt(JSON.stringify(credentialToJson(credential)), StoredCredentials.aad(tenant));
      const result = await this.#db
        .updateTable('upstream_credentials')
        .set({ type: credential.type, secret, updated_at: new Date() })
        .where('tenant_id', '=', tenant)
        .where('secret', '=', row.secret)
        .executeTakeFirst();
      this.#cache.delete(tenant);
      if (Number(result.numUpdatedRows) > 0) return true;
    }
    return false;
  }

  async remove(tenant: string): Promise<boolean> {
    const result = await this.#db.deleteFrom('upstream_credentials').where('tenant_id', '=', tenant).executeTakeFirst();
    this.#cache.delete(tenant);
    return Number(result.numDeletedRows) > 0;
  }

  /** Tenant, type and update time of every stored credential — never the secret. */
  async list(): Promise<{ tenant: string; type: string; updatedAt: Date }[]> {
    const rows = await this.#db.selectFrom('upstream_credentials').select(['tenant_id', 'type', 'updated_at']).orderBy('tenant_id').execute();
    return rows.map((r) => ({ tenant: r.tenant_id, type: r.type, updatedAt: new Date(r.updated_at) }));
  }
}
