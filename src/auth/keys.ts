/**
 * Bulwark API key format, generation and hashing. A key reads
 * `bwk_live_<id>_<secret>`: a recognisable prefix (so secret scanners and people can spot it),
 * a public id (16 base62 characters, the lookup handle), and 32 random bytes of secret in
 * base62. Only a hash of the secret is stored. The secret has 256 bits of entropy, so a fast
 * hash is safe (no password stretching needed); an optional server secret makes it an HMAC,
 * so a stolen table alone cannot even confirm a guessed key.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const KEY_PREFIXES = ['bwk_live_', 'bwk_test_'] as const;
export type KeyPrefix = (typeof KEY_PREFIXES)[number];
export type HashAlgorithm = 'sha256' | 'hmac-sha256';

const ID_LENGTH = 16;
const SECRET_BYTES = 32;
const SECRET_LENGTH = 43; // ceil(256 / log2(62))
const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const KEY_PATTERN = new RegExp(`^(bwk_(?:live|test)_)([0-9A-Za-z]{${ID_LENGTH}})_([0-9A-Za-z]{${SECRET_LENGTH}})$`);

export interface ParsedKey {
  prefix: KeyPrefix;
  id: string;
  secret: string;
}

export interface GeneratedKey extends ParsedKey {
  /** The full key, shown to its owner once and never stored. */
  plaintext: string;
}

/** Encodes bytes as fixed-length base62 (left-padded with '0'). */
function base62(bytes: Buffer, length: number): string {
  let n = BigInt(`0x${bytes.toString('hex') || '0'}`);
  let out = '';
  while (n > 0n) {
    out = BASE62[Number(n % 62n)] + out;
    n /= 62n;
  }
  return out.padStart(length, '0').slice(-length);
}

/** A public key id: 16 base62 characters (~95 bits), unguessable but not secret. */
export function generateKeyId(): string {
  // 12 random bytes = 96 bits, which fits in 16 base62 digits (62^16 > 2^95.2); drop the top bit.
  const bytes = randomBytes(12);
  bytes[0] = (bytes[0] as number) & 0x7f;
  return base62(bytes, ID_LENGTH);
}

export function generateKey(prefix: KeyPrefix): GeneratedKey {
  const id = generateKeyId();
  const secret = base62(randomBytes(SECRET_BYTES), SECRET_LENGTH);
  return { prefix, id, secret, plaintext: `${prefix}${id}_${secret}` };
}

/** Splits a presented key, or returns undefined when it is not in Bulwark's format. */
export function parseKey(presented: string): ParsedKey | undefined {
  const match = KEY_PATTERN.exec(presented);
  if (!match) return undefined;
  return { prefix: match[1] as KeyPrefix, id: match[2] as string, secret: match[3] as string };
}

export function looksLikeBulwarkKey(value: string): boolean {
  return value.startsWith('bwk_');
}

export interface KeyHasher {
  readonly algorithm: HashAlgorithm;
  hash(secret: string): string;
  /** Constant-time comparison of a presented secret against a stored hash of the given algorithm. */
  verify(secret: string, storedHash: string, algorithm: string): boolean;
}

export function createKeyHasher(hmacSecret?: string): KeyHasher {
  const digest = (secret: string, algorithm: string): Buffer | undefined => {
    if (algorithm === 'sha256') return createHash('sha256').update(secret).digest();
    if (algorithm === 'hmac-sha256' && hmacSecret) return createHmac('sha256', hmacSecret).update(secret).digest();
    return undefined;
  };
  const algorithm: HashAlgorithm = hmacSecret ? 'hmac-sha256' : 'sha256';
  return {
    algorithm,
    hash: (secret) => (digest(secret, algorithm) as Buffer).toString('hex'),
    verify(secret, storedHash, storedAlgorithm) {
      const presented = digest(secret, storedAlgorithm);
      const stored = Buffer.from(storedHash, 'hex');
      if (!presented || stored.length !== presented.length) return false;
      return timingSafeEqual(presented, stored);
    },
  };
}
