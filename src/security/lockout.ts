/**
 * Brute-force lockout: an `AuthFailureTracker` that authentication reports its failures to.
 * Too many failures from one address (its /64 for IPv6) lock it out, for longer each time;
 * `ipRateLimit` then refuses it with 429 `locked_out` even when it presents a valid key.
 */
import type { Context } from 'hono';
import { requestFacts } from '../http/client-info.js';
import { type Audit, addressKey, positiveInteger } from './rate-limit.js';
import type { RateLimitRule, RateLimiter } from './rate-limiter.js';

export interface LockoutOptions {
  /** Failed authentications from one address… (default 10) */
  failures?: number;
  /** …within this many seconds lock it out (default 300). */
  windowSeconds?: number;
  /** The first lockout's length (default 300 s); each repeat doubles it… */
  lockSeconds?: number;
  /** …up to this (default 86 400 s). */
  maxLockSeconds?: number;
  /** How long lockouts are remembered for the doubling, from the last one (default 86 400 s). */
  repeatWindowSeconds?: number;
}

export interface AuthFailureTrackerOptions extends LockoutOptions {
  limiter: RateLimiter;
  audit: Audit;
}

export interface AuthFailureTracker {
  /** Milliseconds `ip` (its /64 for IPv6) stays locked out; 0 when it is not. */
  lockedForMs(ip: string): Promise<number>;
  /**
   * Counts one failed authentication from `ip` and locks the address out at the threshold.
   * Pass it to `authenticate` as its failure hook and await it before answering, so the next
   * request already sees the lockout. Successes do not reset the count: an attacker holding
   * one valid key could otherwise interleave it to guess without limit.
   */
  readonly recordFailure: (ip: string | undefined, c?: Context) => Promise<void>;
}

/** The n-th lockout (from 1) within the repeat window lasts `lockSeconds · 2^(n-1)`, capped. */
export function lockSecondsFor(repeat: number, lockSeconds: number, maxLockSeconds: number): number {
  return Math.min(lockSeconds * 2 ** Math.min(Math.max(repeat, 1) - 1, 40), maxLockSeconds);
}

/** Addresses whose lock a process remembers on its own; beyond this, expired ones go first, then the oldest. */
const MAX_KNOWN_LOCKS = 10_000;

export function authFailureTracker(options: AuthFailureTrackerOptions): AuthFailureTracker {
  const { limiter, audit, failures = 10, windowSeconds = 300, lockSeconds = 300, maxLockSeconds = 86_400, repeatWindowSeconds = 86_400 } = options;
  const owner = 'authFailureTracker';
  if (!limiter) throw new Error(`${owner}: limiter is required`);
  if (typeof audit !== 'function') throw new Error(`${owner}: audit is required`);
  positiveInteger(owner, 'failures', failures);
  positiveInteger(owner, 'windowSeconds', windowSeconds);
  positiveInteger(owner, 'lockSeconds', lockSeconds);
  positiveInteger(owner, 'maxLockSeconds', maxLockSeconds);
  positiveInteger(owner, 'repeatWindowSeconds', repeatWindowSeconds);
  if (maxLockSeconds < lockSeconds) throw new Error(`${owner}: maxLockSeconds must be >= lockSeconds`);

  const failureRule: RateLimitRule = { name: 'auth-failures', points: failures, durationSeconds: windowSeconds };
  // A lock is a count set with the lock's own expiry; any count means locked.
  const lockRule: RateLimitRule = { name: 'auth-lock', points: 0, durationSeconds: maxLockSeconds };
  const repeatRule: RateLimitRule = { name: 'auth-lock-repeat', points: 0, durationSeconds: repeatWindowSeconds };

  // Locks this process set or saw, kept beside the shared store: when Redis is away the
  // in-memory fallback cannot see the locks held there, and these still hold.
  const knownLocks = new Map<string, number>();
  const remember = (subject: string, untilMs: number) => {
    const known = knownLocks.get(subject);
    if (known !== undefined && known >= untilMs) return;
    if (known === undefined && knownLocks.size >= MAX_KNOWN_LOCKS) {
      const now = Date.now();
      for (const [key, until] of knownLocks) if (until <= now) knownLocks.delete(key);
      if (knownLocks.size >= MAX_KNOWN_LOCKS) knownLocks.delete(knownLocks.keys().next().value as string);
    }
    knownLocks.set(subject, untilMs);
  };

  async function lockedForMs(ip: string): Promise<number> {
    const subject = addressKey(ip);
    const lock = await limiter.get(subject, lockRule);
    const shared = lock && lock.consumed > 0 ? lock.resetMs : 0;
    if (shared > 0) remember(subject, Date.now() + shared);
    const local = (knownLocks.get(subject) ?? 0) - Date.now();
    return Math.max(shared, local, 0);
  }

  async function recordFailure(ip: string | undefined, c?: Context): Promise<void> {
    if (ip === undefined) return;
    const subject = addressKey(ip);
    const counted = await limiter.consume(subject, failureRule);
    // Exactly one failure reaches the threshold (atomic count), so one lockout per crossing.
    if (counted.consumed !== failures) return;
    const repeat = ((await limiter.get(subject, repeatRule))?.consumed ?? 0) + 1;
    const seconds = lockSecondsFor(repeat, lockSeconds, maxLockSeconds);
    remember(subject, Date.now() + seconds * 1000);
    await Promise.all([
      limiter.set(subject, lockRule, repeat, seconds),
      limiter.set(subject, repeatRule, repeat, repeatWindowSeconds),
      // The next lockout needs `failures` new failures after this one ends.
      limiter.delete(subject, failureRule),
    ]);
    audit({
      type: 'auth.lockout',
      outcome: 'denied',
      ...(c ? requestFacts(c) : {}),
      ip,
      details: { failures: counted.consumed, windowSeconds, lockSeconds: seconds, repeat, ...(subject !== ip ? { network: subject } : {}) },
    });
  }

  return { lockedForMs, recordFailure };
}
