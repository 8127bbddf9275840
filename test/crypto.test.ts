/**
 * Column encryption at rest (src/store/crypto.ts).
 *
 * Keys and plaintexts are generated at run time, so this file holds no key-shaped literal.
 */
import { randomBytes } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import { DecryptError, decryptJson, encryptJson, isEncryptedValue, KeyRing } from '../src/store/crypto.js';

const AAD = 'requests:tenant-a:42:request_body';

function newKey(): string {
  return randomBytes(32).toString('base64');
}

function secretText(): string {
  return `secret-${randomBytes(16).toString('hex')}`;
}

/** What `fn` threw; fails the test when it did not throw. */
function thrownBy(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a throw');
}

function expectDecryptError(fn: () => unknown, reason: DecryptError['reason']): DecryptError {
  const err = thrownBy(fn);
  expect(err).toBeInstanceOf(DecryptError);
  expect((err as DecryptError).reason).toBe(reason);
  return err as DecryptError;
}

/** The value with one byte of its nonce (part 2) or sealed body (part 3) flipped, re-encoded canonically. */
function flipByte(value: string, part: 2 | 3, index: number): string {
  const parts = value.split('.');
  const bytes = Buffer.from(parts[part]!, 'base64url');
  bytes[index] = bytes[index]! ^ 0x01;
  parts[part] = bytes.toString('base64url');
  return parts.join('.');
}

describe('KeyRing', () => {
  it('round-trips text and bytes', () => {
    const ring = KeyRing.fromConfig([newKey()]);
    const text = `${secretText()} — ünïcödé ✓`;
    expect(ring.decryptText(ring.encrypt(text, AAD), AAD)).toBe(text);

    const bytes = randomBytes(1000);
    expect(ring.decrypt(ring.encrypt(bytes, AAD), AAD).equals(bytes)).toBe(true);

    expect(ring.decryptText(ring.encrypt('', AAD), AAD)).toBe('');
  });

  it('writes a self-describing v1 value naming the current key', () => {
    const ring = KeyRing.fromConfig([newKey()]);
    const value = ring.encrypt(secretText(), AAD);
    const [version, keyId, nonce, sealed] = value.split('.');
    expect(version).toBe('v1');
    expect(keyId).toBe(ring.currentKeyId);
    expect(keyId).toMatch(/^[0-9a-f]{8}$/);
    expect(Buffer.from(nonce!, 'base64url')).toHaveLength(12);
    expect(sealed).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(isEncryptedValue(value)).toBe(true);
    expect(ring.isEncryptedValue(value)).toBe(true);
  });

  it('gives the same key the same id in every ring', () => {
    const key = newKey();
    expect(KeyRing.fromConfig([key]).currentKeyId).toBe(KeyRing.fromConfig([key]).currentKeyId);
    expect(KeyRing.fromConfig([newKey()]).currentKeyId).not.toBe(KeyRing.fromConfig([key]).currentKeyId);
  });

  it('encrypts the same plaintext differently each time with a fresh nonce', () => {
    const ring = KeyRing.fromConfig([newKey()]);
    const text = secretText();
    // More values than one block of random bytes yields nonces for, so a refill is crossed.
    const values = Array.from({ length: 1_000 }, () => ring.encrypt(text, AAD));
    expect(new Set(values).size).toBe(1_000);
    expect(new Set(values.map((value) => value.split('.')[2])).size).toBe(1_000);
    for (const value of values) expect(ring.decryptText(value, AAD)).toBe(text);
  });

  it('refuses a value moved to another row, column or tenant with authentication_failed', () => {
    const ring = KeyRing.fromConfig([newKey()]);
    const value = ring.encrypt(secretText(), 'requests:tenant-a:42:request_body');
    for (const other of ['requests:tenant-a:42:response_body', 'requests:tenant-a:43:request_body', 'requests:tenant-b:42:request_body']) {
      expectDecryptError(() => ring.decrypt(value, other), 'authentication_failed');
    }
  });

  it('refuses an empty encryption context', () => {
    const ring = KeyRing.fromConfig([newKey()]);
    expect(() => ring.encrypt(secretText(), '')).toThrow(TypeError);
    expect(() => ring.decrypt(ring.encrypt(secretText(), AAD), '')).toThrow(TypeError);
  });

  it('refuses a value with any single byte of nonce, ciphertext or tag altered', () => {
    const ring = KeyRing.fromConfig([newKey()]);
    const value = ring.encrypt(secretText(), AAD);
    const sealedLength = Buffer.from(value.split('.')[3]!, 'base64url').length;
    for (let i = 0; i < 12; i++) expectDecryptError(() => ring.decrypt(flipByte(value, 2, i), AAD), 'authentication_failed');
    // Covers every ciphertext byte and the 16 tag bytes at the end.
    for (let i = 0; i < sealedLength; i++) expectDecryptError(() => ring.decrypt(flipByte(value, 3, i), AAD), 'authentication_failed');
  });

  it('refuses a truncated tag and a non-canonical encoding as malformed or unauthenticated', () => {
    const ring = KeyRing.fromConfig([newKey()]);
    const value = ring.encrypt(secretText(), AAD);
    const parts = value.split('.');
    const sealed = Buffer.from(parts[3]!, 'base64url');
    const truncated = [...parts.slice(0, 3), sealed.subarray(0, sealed.length - 4).toString('base64url')].join('.');
    expect(() => ring.decrypt(truncated, AAD)).toThrow(DecryptError);

    // A 12-byte nonce is 16 characters with no spare bits, so alter the sealed part: the last
    // character of a non-multiple-of-3 length carries unused bits that Node would ignore.
    const body = sealed.length % 3 === 0 ? Buffer.concat([sealed, Buffer.from([0])]) : sealed;
    const canonical = body.toString('base64url');
    const last = canonical.at(-1)!;
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const twin = canonical.slice(0, -1) + alphabet[alphabet.indexOf(last) ^ 1];
    expect(Buffer.from(twin, 'base64url').equals(body)).toBe(true);
    expectDecryptError(() => ring.decrypt([...parts.slice(0, 3), twin].join('.'), AAD), 'malformed');
  });

  it('refuses values that are not in the v1 format as malformed', () => {
    // The key id is 8 hex characters; about one key in 40 gives an id of digits only, which
    // upper-casing would not change, so take a key whose id has a letter.
    let ring = KeyRing.fromConfig([newKey()]);
    while (!/[a-f]/.test(ring.currentKeyId)) ring = KeyRing.fromConfig([newKey()]);
    const value = ring.encrypt(secretText(), AAD);
    const [, keyId, nonce, sealed] = value.split('.');
    for (const bad of ['', 'plain text', `v2.${keyId}.${nonce}.${sealed}`, `v1.${keyId}.${nonce}`, `v1.${keyId}.${nonce}.${sealed}.x`, `v1.${keyId!.toUpperCase()}.${nonce}.${sealed}`, `v1.${keyId}.${nonce}=.${sealed}`, `v1.${keyId}.${nonce}.${sealed}==`, `v1.${keyId}.${nonce}.AAAA`]) {
      expectDecryptError(() => ring.decrypt(bad, AAD), 'malformed');
      expect(isEncryptedValue(bad)).toBe(false);
    }
  });

  it('refuses a value made with a key it does not hold with unknown_key', () => {
    const value = KeyRing.fromConfig([newKey()]).encrypt(secretText(), AAD);
    const other = KeyRing.fromConfig([newKey()]);
    const err = expectDecryptError(() => other.decrypt(value, AAD), 'unknown_key');
    expect(err.keyId).toBe(value.split('.')[1]);
  });

  it('refuses a value whose key id was rewritten to a held key with authentication_failed', () => {
    const oldKey = newKey();
    const newRing = KeyRing.fromConfig([newKey(), oldKey]);
    const value = KeyRing.fromConfig([oldKey]).encrypt(secretText(), AAD);
    const relabelled = value.replace(`.${value.split('.')[1]}.`, `.${newRing.currentKeyId}.`);
    expectDecryptError(() => newRing.decrypt(relabelled, AAD), 'authentication_failed');
  });

  it('decrypts values made by an old key after rotation and flags only those for re-encryption', () => {
    const oldKey = newKey();
    const newKeyText = newKey();
    const oldRing = KeyRing.fromConfig([oldKey]);
    const rotated = KeyRing.fromConfig([newKeyText, oldKey]);
    const text = secretText();

    const oldValue = oldRing.encrypt(text, AAD);
    const newValue = rotated.encrypt(text, AAD);

    expect(rotated.decryptText(oldValue, AAD)).toBe(text);
    expect(rotated.needsRotation(oldValue)).toBe(true);
    expect(rotated.needsRotation(newValue)).toBe(false);
    expect(rotated.needsRotation('not encrypted')).toBe(true);
    expect(newValue.split('.')[1]).toBe(rotated.currentKeyId);
    expect(rotated.keyIds).toEqual([rotated.currentKeyId, oldRing.currentKeyId]);
    // The old ring alone cannot read what the new key wrote.
    expectDecryptError(() => oldRing.decrypt(newValue, AAD), 'unknown_key');
  });

  it('refuses bad configured keys naming BULWARK_ENCRYPTION_KEYS without echoing them', () => {
    const tooShort = randomBytes(16).toString('base64');
    const tooLong = randomBytes(48).toString('base64');
    const notBase64 = `${randomBytes(30).toString('hex')}!@#$`;
    const withWhitespace = ` ${newKey()}\n`;
    const weak = Buffer.alloc(32, 7).toString('base64');
    for (const bad of [tooShort, tooLong, notBase64, withWhitespace, weak]) {
      const err = thrownBy(() => KeyRing.fromConfig([newKey(), bad]));
      expect(err.message).toContain('BULWARK_ENCRYPTION_KEYS');
      expect(err.message).toContain('key 2');
      expect(err.message).not.toContain(bad.trim());
      expect(err.message).not.toContain(bad.trim().slice(0, 12));
    }
  });

  it('refuses an empty key list and a repeated key naming BULWARK_ENCRYPTION_KEYS', () => {
    expect(() => KeyRing.fromConfig([])).toThrow(/BULWARK_ENCRYPTION_KEYS/);
    const key = newKey();
    const err = thrownBy(() => KeyRing.fromConfig([key, key]));
    expect(err.message).toMatch(/BULWARK_ENCRYPTION_KEYS: key 2 repeats key 1/);
    expect(err.message).not.toContain(key);
  });

  it('never puts the plaintext, the value or a key in an error message', () => {
    const key = newKey();
    const keyHex = Buffer.from(key, 'base64').toString('hex');
    const ring = KeyRing.fromConfig([key]);
    const text = secretText();
    const value = ring.encrypt(text, AAD);
    const errors = [
      thrownBy(() => ring.decrypt(value, 'requests:tenant-b:42:request_body')),
      thrownBy(() => ring.decrypt(flipByte(value, 3, 0), AAD)),
      thrownBy(() => ring.decrypt(`${value}!`, AAD)),
      thrownBy(() => KeyRing.fromConfig([newKey()]).decrypt(value, AAD)),
      // Authentic bytes that are not JSON: JSON.parse would quote them.
      thrownBy(() => decryptJson(ring, ring.encrypt(text, AAD), AAD)),
      // Authentic bytes that are not UTF-8.
      thrownBy(() => ring.decryptText(ring.encrypt(Buffer.from([0xff, 0xfe, 0xfd]), AAD), AAD)),
    ];
    for (const err of errors) {
      expect(err).toBeInstanceOf(DecryptError);
      const shown = `${err.message} ${String(err.stack)} ${JSON.stringify(err)} ${String(err.cause)}`;
      for (const secret of [text, value.split('.')[3]!, key, key.slice(0, 12), keyHex.slice(0, 16)]) {
        expect(shown).not.toContain(secret);
      }
    }
  });

  it('gives key ids that do not contain the key', () => {
    for (let i = 0; i < 20; i++) {
      const key = newKey();
      const ring = KeyRing.fromConfig([key]);
      const id = ring.currentKeyId;
      expect(id).toMatch(/^[0-9a-f]{8}$/);
      expect(key).not.toContain(id);
      expect(Buffer.from(key, 'base64').toString('hex')).not.toContain(id);
      expect(JSON.stringify(ring)).not.toContain(key);
    }
  });

  it('makes an ephemeral development ring that works but cannot be read by another', () => {
    const ring = KeyRing.ephemeral();
    expect(ring.ephemeral).toBe(true);
    expect(KeyRing.fromConfig([newKey()]).ephemeral).toBe(false);
    const text = secretText();
    const value = ring.encrypt(text, AAD);
    expect(ring.decryptText(value, AAD)).toBe(text);
    // Like a restart: a new ephemeral ring has a different key.
    expectDecryptError(() => KeyRing.ephemeral().decrypt(value, AAD), 'unknown_key');
  });
});

describe('encryptJson / decryptJson', () => {
  it('round-trips a JSON value bound to its context', () => {
    const ring = KeyRing.fromConfig([newKey()]);
    const payload = { token: secretText(), nested: [1, null, true] };
    const value = encryptJson(ring, payload, AAD);
    expect(decryptJson(ring, value, AAD)).toEqual(payload);
    expectDecryptError(() => decryptJson(ring, value, `${AAD}x`), 'authentication_failed');
  });

  it('refuses a value that is not JSON-serialisable', () => {
    const ring = KeyRing.fromConfig([newKey()]);
    expect(() => encryptJson(ring, undefined, AAD)).toThrow(TypeError);
  });
});
