/**
 * Encryption of sensitive columns at rest (request and response bodies, upstream credentials).
 *
 * A value is stored as self-describing text, so a column can hold it without a schema change
 * and a reader knows which key and format made it:
 *
 *     v1.<keyId>.<nonce>.<ciphertext+tag>
 *
 * - `v1` is AES-256-GCM with a 96-bit nonce and a 128-bit tag (NIST SP 800-38D). A new format
 *   gets a new prefix; old values stay readable.
 * - `keyId` is 8 hex characters of SHA-256("bulwark-key-id" ‖ key bytes): stable, so the ring
 *   picks the right key in O(1), and one-way, so it says nothing about the key itself.
 * - `nonce` is 12 random bytes per value (base64url). Random 96-bit nonces stay safe for up to
 *   2^32 values per key (SP 800-38D §8.3); rotating keys resets that count.
 * - the associated data is the caller's context string (e.g. `requests:<tenant>:<rowId>:request_body`),
 *   authenticated but not stored: a ciphertext copied to another row, column or tenant fails
 *   to decrypt instead of disclosing one tenant's data in another's view.
 *
 * Keys come from `BULWARK_ENCRYPTION_KEYS`: the first encrypts, all decrypt, so rotation is
 * "prepend a new key, re-encrypt what `needsRotation` flags, then drop the old key".
 * No message this module produces contains key material, a plaintext, or a stored value.
 */
import { createCipheriv, createDecipheriv, createHash, createSecretKey, randomBytes, type KeyObject } from 'node:crypto';
import { encryptionKeyProblems } from '../config/safety.js';

const VERSION = 'v1';
const ALGORITHM = 'aes-256-gcm';
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const KEY_ID_DOMAIN = 'bulwark-key-id';

/**
 * Nonces are cut from a block of CSPRNG output, refilled when used up: one call into the
 * generator per 341 values instead of one per value (with body storage on, two values per
 * proxied call). Each nonce is still 12 fresh random bytes, handed out once.
 */
const NONCE_BLOCK_BYTES = NONCE_BYTES * 341;
let nonceBlock = Buffer.alloc(0);
let nonceOffset = 0;

function freshNonce(): Buffer {
  if (nonceOffset + NONCE_BYTES > nonceBlock.length) {
    nonceBlock = randomBytes(NONCE_BLOCK_BYTES);
    nonceOffset = 0;
  }
  const nonce = nonceBlock.subarray(nonceOffset, nonceOffset + NONCE_BYTES);
  nonceOffset += NONCE_BYTES;
  return nonce;
}
const OPTION = 'BULWARK_ENCRYPTION_KEYS';

/** Shape only: version, 8-hex key id, 16 base64url chars (12 bytes) of nonce, at least a tag's worth of body. */
const ENCRYPTED_VALUE = /^v1\.([0-9a-f]{8})\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{22,})$/;

export type DecryptErrorReason = 'unknown_key' | 'malformed' | 'authentication_failed';

const REASON_MESSAGES: Record<DecryptErrorReason, string> = {
  unknown_key: 'the encrypted value was made with a key that is not configured',
  malformed: 'the encrypted value is malformed',
  authentication_failed: 'the encrypted value failed authentication (wrong key, wrong context, or altered)',
};

/** Why a stored value could not be decrypted. The message never holds the value, its plaintext or a key. */
export class DecryptError extends Error {
  override readonly name = 'DecryptError';
  readonly reason: DecryptErrorReason;
  /** The key id named by the value, when it could be read; safe to log. */
  readonly keyId: string | undefined;

  constructor(reason: DecryptErrorReason, keyId?: string) {
    super(keyId === undefined ? REASON_MESSAGES[reason] : `${REASON_MESSAGES[reason]} (key id ${keyId})`);
    this.reason = reason;
    this.keyId = keyId;
  }
}

/** Whether a string has the shape of a value made by `KeyRing.encrypt` (it may still fail to decrypt). */
export function isEncryptedValue(value: string): boolean {
  return parseEncryptedValue(value) !== undefined;
}

interface ParsedValue {
  keyId: string;
  nonce: Buffer;
  sealed: Buffer;
}

function parseEncryptedValue(value: string): ParsedValue | undefined {
  const match = ENCRYPTED_VALUE.exec(value);
  if (!match) return undefined;
  const [, keyId, nonceText, sealedText] = match as unknown as [string, string, string, string];
  const nonce = decodeCanonicalBase64url(nonceText);
  const sealed = decodeCanonicalBase64url(sealedText);
  if (!nonce || !sealed || nonce.length !== NONCE_BYTES || sealed.length < TAG_BYTES) return undefined;
  return { keyId, nonce, sealed };
}

/**
 * Node's decoder ignores the unused low bits of a final character, so two texts can decode to
 * the same bytes. Refusing all but the canonical text keeps stored values unmalleable.
 */
function decodeCanonicalBase64url(text: string): Buffer | undefined {
  const bytes = Buffer.from(text, 'base64url');
  return bytes.toString('base64url') === text ? bytes : undefined;
}

function keyIdOf(keyBytes: Uint8Array): string {
  return createHash('sha256').update(KEY_ID_DOMAIN).update(keyBytes).digest('hex').slice(0, 8);
}

function requireContext(aad: string): Buffer {
  // An empty context would let a value move anywhere; every caller has a row and column to name.
  if (typeof aad !== 'string' || aad.length === 0) throw new TypeError('encryption context (aad) must be a non-empty string');
  return Buffer.from(aad, 'utf8');
}

interface RingKey {
  id: string;
  key: KeyObject;
}

/** The configured data-encryption keys. The first encrypts; every key decrypts what it made. */
export class KeyRing {
  /** True for a development ring whose random key dies with the process. */
  readonly ephemeral: boolean;
  readonly #current: RingKey;
  readonly #byId: ReadonlyMap<string, RingKey>;
  readonly #ids: readonly string[];

  private constructor(keyBytes: readonly Buffer[], ephemeral: boolean) {
    const keys = keyBytes.map((bytes): RingKey => ({ id: keyIdOf(bytes), key: createSecretKey(bytes) }));
    const byId = new Map<string, RingKey>();
    keys.forEach((entry, i) => {
      const earlier = byId.get(entry.id);
      if (earlier) {
        const first = keys.indexOf(earlier) + 1;
        throw new Error(`${OPTION}: key ${i + 1} repeats key ${first} (key id ${entry.id}); list each key once`);
      }
      byId.set(entry.id, entry);
    });
    const current = keys[0];
    if (!current) throw new Error(`${OPTION}: at least one encryption key is needed (make one with: openssl rand -base64 32)`);
    this.#current = current;
    this.#byId = byId;
    this.#ids = Object.freeze(keys.map((entry) => entry.id));
    this.ephemeral = ephemeral;
  }

  /** A ring from `config.secrets.encryptionKeys`: base64 of 32 bytes each. Throws naming the option, never echoing a key. */
  static fromConfig(keys: readonly string[]): KeyRing {
    if (keys.length === 0) throw new Error(`${OPTION}: at least one encryption key is needed (make one with: openssl rand -base64 32)`);
    const problems = encryptionKeyProblems(keys);
    if (problems.length > 0) throw new Error(problems.join('; '));
    const bytes = keys.map((key) => Buffer.from(key, 'base64'));
    try {
      return new KeyRing(bytes, false);
    } finally {
      // createSecretKey copied them; don't leave raw key bytes lying in the heap longer than needed.
      for (const buffer of bytes) buffer.fill(0);
    }
  }

  /**
   * A ring with one random in-memory key, for development without a configured key. What it
   * encrypts is unreadable after a restart; the caller warns about that.
   */
  static ephemeral(): KeyRing {
    const bytes = randomBytes(32);
    try {
      return new KeyRing([bytes], true);
    } finally {
      bytes.fill(0);
    }
  }

  /** Id of the key that encrypts. */
  get currentKeyId(): string {
    return this.#current.id;
  }

  /** Ids of every key, the encrypting one first. */
  get keyIds(): readonly string[] {
    return this.#ids;
  }

  /** Seal `plaintext` (a string is taken as UTF-8) bound to `aad`, as `v1.<keyId>.<nonce>.<ciphertext+tag>`. */
  encrypt(plaintext: string | Uint8Array, aad: string): string {
    const context = requireContext(aad);
    const nonce = freshNonce();
    const cipher = createCipheriv(ALGORITHM, this.#current.key, nonce, { authTagLength: TAG_BYTES });
    cipher.setAAD(context);
    const data = typeof plaintext === 'string' ? Buffer.from(plaintext, 'utf8') : plaintext;
    const sealed = Buffer.concat([cipher.update(data), cipher.final(), cipher.getAuthTag()]);
    return `${VERSION}.${this.#current.id}.${nonce.toString('base64url')}.${sealed.toString('base64url')}`;
  }

  /** Open a value made by `encrypt` with the same `aad`. Throws `DecryptError`. */
  decrypt(value: string, aad: string): Buffer {
    const context = requireContext(aad);
    const parsed = typeof value === 'string' ? parseEncryptedValue(value) : undefined;
    if (!parsed) throw new DecryptError('malformed');
    const entry = this.#byId.get(parsed.keyId);
    if (!entry) throw new DecryptError('unknown_key', parsed.keyId);
    const tagStart = parsed.sealed.length - TAG_BYTES;
    try {
      // The tag is always the last 16 bytes; authTagLength makes Node insist on that too (it would
      // otherwise accept a shortened tag, NIST SP 800-38D §5.2.1.2).
      const decipher = createDecipheriv(ALGORITHM, entry.key, parsed.nonce, { authTagLength: TAG_BYTES });
      decipher.setAAD(context);
      decipher.setAuthTag(parsed.sealed.subarray(tagStart));
      return Buffer.concat([decipher.update(parsed.sealed.subarray(0, tagStart)), decipher.final()]);
    } catch {
      // Node's own error adds nothing and is dropped so no cause chain can carry data.
      throw new DecryptError('authentication_failed', parsed.keyId);
    }
  }

  /** `decrypt`, read as UTF-8 (refusing bytes that are not valid UTF-8). */
  decryptText(value: string, aad: string): string {
    const bytes = this.decrypt(value, aad);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new DecryptError('malformed', parseEncryptedValue(value)?.keyId);
    }
  }

  /** Whether a stored value should be re-encrypted: true unless it is a well-formed value under the current key. */
  needsRotation(value: string): boolean {
    return parseEncryptedValue(value)?.keyId !== this.#current.id;
  }

  /** Same as the exported `isEncryptedValue`, for callers holding only the ring. */
  isEncryptedValue(value: string): boolean {
    return isEncryptedValue(value);
  }
}

/** Encrypt a JSON-serialisable value. */
export function encryptJson(ring: KeyRing, value: unknown, aad: string): string {
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError('value is not JSON-serialisable');
  return ring.encrypt(text, aad);
}

/** Decrypt a value made by `encryptJson`. Returns `unknown`: validate it before use. */
export function decryptJson(ring: KeyRing, value: string, aad: string): unknown {
  const text = ring.decryptText(value, aad);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    // JSON.parse quotes the text it choked on; that text is the plaintext.
    throw new DecryptError('malformed', parseEncryptedValue(value)?.keyId);
  }
}
