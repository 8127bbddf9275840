/**
 * The one `RateLimiter` interface (STYLE.md 4) and its two back ends, both built on
 * rate-limiter-flexible: memory (one process) and Redis (every instance shares the counts).
 *
 * Windows are fixed: a counter starts at its first hit and expires `durationSeconds` later.
 * Counting uses the library's atomic add-and-expire (`penalty`: one Lua INCRBY + TTL on Redis)
 * and the limit is decided here, so one counter serves a rule's name and window whatever its
 * points: a key with its own, larger limit shares the counter with the default.
 *
 * The Redis back end never stops serving and never stops limiting: while Redis is unreachable,
 * slow or failing, each call is answered by an in-memory limiter and reported via `onFallback`.
 * (rate-limiter-flexible's `insuranceLimiter` does the same switch but swallows the error, which
 * is exactly what the operator must see, so the switch is made here.)
 */
import { RateLimiterMemory, RateLimiterRedis, type RateLimiterAbstract, type RateLimiterRes } from 'rate-limiter-flexible';
import type { createClient } from 'redis';

/** A limit: at most `points` per `durationSeconds`. `name` names the counter; treat rules as immutable. */
export interface RateLimitRule {
  readonly name: string;
  readonly points: number;
  readonly durationSeconds: number;
}

export interface RateLimitResult {
  allowed: boolean;
  limit: number;
  remaining: number;
  /** Milliseconds until the window ends (or a block lifts). */
  resetMs: number;
  /** Points counted in the window, this call's included (tells the call that crossed the limit). */
  consumed: number;
}

export interface RateLimitState {
  consumed: number;
  resetMs: number;
}

export interface RateLimiter {
  /** Counts `cost` points for `key` under `rule`; refused calls count too (fixed window). */
  consume(key: string, rule: RateLimitRule, cost?: number): Promise<RateLimitResult>;
  /** The current count for `key`, or `null` when it has none. */
  get(key: string, rule: RateLimitRule): Promise<RateLimitState | null>;
  /** Sets the count for `key` to `points`, expiring in `seconds` (a lockout, a repeat counter). */
  set(key: string, rule: RateLimitRule, points: number, seconds: number): Promise<void>;
  delete(key: string, rule: RateLimitRule): Promise<void>;
}

type Counter = RateLimiterAbstract;

function checkRule(rule: RateLimitRule): void {
  if (!rule || typeof rule.name !== 'string' || !/^[\x21-\x7e]+$/.test(rule.name)) {
    throw new Error(`rate limit rule: name must be visible ASCII without spaces (got ${JSON.stringify(rule?.name)})`);
  }
  if (!Number.isInteger(rule.points) || rule.points < 0) throw new Error(`rate limit rule ${rule.name}: points must be an integer >= 0`);
  // Whole seconds: Redis expiries are set in seconds and a zero-second window would never expire.
  if (!Number.isInteger(rule.durationSeconds) || rule.durationSeconds < 1) {
    throw new Error(`rate limit rule ${rule.name}: durationSeconds must be an integer >= 1`);
  }
}

function checkPoints(what: string, points: number): void {
  if (!Number.isInteger(points) || points < 0) throw new Error(`rate limiter: ${what} must be an integer >= 0 (got ${points})`);
}

/** One library limiter per rule name and window, created on first use. */
class CounterCache {
  readonly #byRule = new WeakMap<RateLimitRule, Counter>();
  readonly #byName = new Map<string, Counter>();
  readonly #create: (keyPrefix: string, durationSeconds: number) => Counter;
  readonly #prefix: string;

  constructor(prefix: string, create: (keyPrefix: string, durationSeconds: number) => Counter) {
    this.#prefix = prefix;
    this.#create = create;
  }

  for(rule: RateLimitRule): Counter {
    // Hot path: middleware pass the same rule objects every time.
    let counter = this.#byRule.get(rule);
    if (counter) return counter;
    checkRule(rule);
    const name = `${rule.name}:${rule.durationSeconds}`;
    counter = this.#byName.get(name);
    if (!counter) {
      counter = this.#create(`${this.#prefix}:${name}`, rule.durationSeconds);
      this.#byName.set(name, counter);
    }
    this.#byRule.set(rule, counter);
    return counter;
  }
}

function result(rule: RateLimitRule, res: RateLimiterRes): RateLimitResult {
  const consumed = res.consumedPoints;
  return {
    allowed: consumed <= rule.points,
    limit: rule.points,
    remaining: Math.max(rule.points - consumed, 0),
    resetMs: Math.max(res.msBeforeNext, 0),
    consumed,
  };
}

function state(res: RateLimiterRes | null): RateLimitState | null {
  // A memory record may outlive its expiry by a timer tick; an expired count is no count.
  if (!res || res.msBeforeNext <= 0) return null;
  return { consumed: res.consumedPoints, resetMs: res.msBeforeNext };
}

/** Counts in this process only: development, a single instance, and the Redis back end's fallback. */
export class MemoryRateLimiter implements RateLimiter {
  readonly #counters: CounterCache;

  constructor(prefix = 'bulwark:rl') {
    // The library's `points` is unused (limits are decided here); its `duration` is the window.
    this.#counters = new CounterCache(prefix, (keyPrefix, duration) => new RateLimiterMemory({ keyPrefix, points: 1, duration }));
  }

  async consume(key: string, rule: RateLimitRule, cost = 1): Promise<RateLimitResult> {
    const counter = this.#counters.for(rule);
    if (cost !== 1) checkPoints('cost', cost);
    return result(rule, await counter.penalty(key, cost));
  }

  async get(key: string, rule: RateLimitRule): Promise<RateLimitState | null> {
    return state(await this.#counters.for(rule).get(key));
  }

  async set(key: string, rule: RateLimitRule, points: number, seconds: number): Promise<void> {
    const counter = this.#counters.for(rule);
    checkPoints('points', points);
    if (!Number.isInteger(seconds) || seconds < 1) throw new Error(`rate limiter: seconds must be an integer >= 1 (got ${seconds})`);
    await counter.set(key, points, seconds);
  }

  async delete(key: string, rule: RateLimitRule): Promise<void> {
    await this.#counters.for(rule).delete(key);
  }
}

type RedisClient = ReturnType<typeof createClient>;

export class RedisTimeoutError extends Error {
  constructor(ms: number) {
    super(`Redis did not answer within ${ms} ms`);
    this.name = 'RedisTimeoutError';
  }
}

export interface RedisRateLimiterOptions {
  client: RedisClient;
  prefix: string;
  /** Called for every call answered in memory instead of Redis, with the reason. */
  onFallback: (err: unknown) => void;
  /** A Redis call slower than this is answered in memory (default 500 ms). */
  commandTimeoutMs?: number;
}

/**
 * Counts in Redis, shared by every instance using the same prefix. Each call that Redis cannot
 * answer — not connected, an error, or slower than `commandTimeoutMs` — is answered by the
 * in-memory fallback, so a Redis outage degrades limits to per-instance instead of lifting them.
 */
export class RedisRateLimiter implements RateLimiter {
  readonly #client: RedisClient;
  readonly #counters: CounterCache;
  readonly #fallback: MemoryRateLimiter;
  readonly #onFallback: (err: unknown) => void;
  readonly #timeoutMs: number;
  /** The connection's last error, reported while it is down (cheaper than a new Error per call). */
  #connectionError: unknown = new Error('Redis is not connected');

  constructor(options: RedisRateLimiterOptions) {
    const { client, prefix, onFallback, commandTimeoutMs = 500 } = options;
    if (!client) throw new Error('RedisRateLimiter: client is required');
    if (typeof onFallback !== 'function') throw new Error('RedisRateLimiter: onFallback is required');
    if (!Number.isFinite(commandTimeoutMs) || commandTimeoutMs <= 0) throw new Error('RedisRateLimiter: commandTimeoutMs must be > 0');
    this.#client = client;
    this.#onFallback = onFallback;
    this.#timeoutMs = commandTimeoutMs;
    this.#fallback = new MemoryRateLimiter(prefix);
    this.#counters = new CounterCache(
      prefix,
      (keyPrefix, duration) =>
        new RateLimiterRedis({
          storeClient: client,
          // node-redis v4+ ('redis' package): camelCase commands, options-object EVAL.
          useRedisPackage: true,
          // Fail at once instead of queueing while disconnected (the client also disables its offline queue).
          rejectIfRedisNotReady: true,
          keyPrefix,
          points: 1,
          duration,
        }),
    );
  }

  /** Records why the connection is down, so fallbacks report the real cause. */
  noteConnectionError(err: unknown): void {
    this.#connectionError = err;
  }

  #degrade(err: unknown): void {
    try {
      this.#onFallback(err);
    } catch {
      // A failing report must not turn into a failing request.
    }
  }

  async consume(key: string, rule: RateLimitRule, cost = 1): Promise<RateLimitResult> {
    const counter = this.#counters.for(rule);
    if (cost !== 1) checkPoints('cost', cost);
    if (this.#client.isReady) {
      try {
        return result(rule, await this.#within(counter.penalty(key, cost)));
      } catch (err) {
        this.#degrade(err);
      }
    } else this.#degrade(this.#connectionError);
    return this.#fallback.consume(key, rule, cost);
  }

  async get(key: string, rule: RateLimitRule): Promise<RateLimitState | null> {
    const counter = this.#counters.for(rule);
    if (this.#client.isReady) {
      try {
        return state(await this.#within(counter.get(key)));
      } catch (err) {
        this.#degrade(err);
      }
    } else this.#degrade(this.#connectionError);
    return this.#fallback.get(key, rule);
  }

  async set(key: string, rule: RateLimitRule, points: number, seconds: number): Promise<void> {
    const counter = this.#counters.for(rule);
    checkPoints('points', points);
    if (!Number.isInteger(seconds) || seconds < 1) throw new Error(`rate limiter: seconds must be an integer >= 1 (got ${seconds})`);
    if (this.#client.isReady) {
      try {
        await this.#within(counter.set(key, points, seconds));
        return;
      } catch (err) {
        this.#degrade(err);
      }
    } else this.#degrade(this.#connectionError);
    await this.#fallback.set(key, rule, points, seconds);
  }

  async delete(key: string, rule: RateLimitRule): Promise<void> {
    const counter = this.#counters.for(rule);
    // Also forget what the fallback counted during an outage, so a reset is a reset everywhere here.
    await this.#fallback.delete(key, rule);
    if (this.#client.isReady) {
      try {
        await this.#within(counter.delete(key));
        return;
      } catch (err) {
        this.#degrade(err);
      }
    } else this.#degrade(this.#connectionError);
  }

  /** node-redis times out single commands, not MULTI/pipelines (GET + PTTL, SET + PTTL): bound them all. */
  #within<T>(promise: Promise<T>): Promise<T> {
    const ms = this.#timeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new RedisTimeoutError(ms)), ms);
      promise.then(
        (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }
}

export interface CreateRateLimiterOptions {
  /** `redis://` or `rediss://` URL; without it, counts stay in this process. */
  redisUrl?: string | undefined;
  /** Prefix of every counter's key; instances that must share limits share it. */
  prefix?: string;
  /** Called for every call answered in memory because Redis could not answer it. */
  onFallback?: (err: unknown) => void;
  /** Called when Redis is back after fallbacks (so a caller can log an outage once). */
  onRecover?: () => void;
  /** How long start-up waits for Redis before serving from the fallback (default 2000 ms). */
  connectTimeoutMs?: number;
  /** A Redis call slower than this is answered in memory (default 500 ms). */
  commandTimeoutMs?: number;
  /** Longest wait between reconnection attempts (default 5000 ms); reconnection never gives up. */
  maxReconnectDelayMs?: number;
}

export interface RateLimiterRuntime {
  limiter: RateLimiter;
  backend: 'memory' | 'redis';
  /** Closes the Redis connection (and its reconnection timers). Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Builds the limiter the configuration asks for. With Redis, start-up waits at most
 * `connectTimeoutMs` for the connection; if Redis is down it starts in fallback and keeps
 * reconnecting in the background (capped exponential backoff), switching back when it can.
 */
export async function createRateLimiter(options: CreateRateLimiterOptions = {}): Promise<RateLimiterRuntime> {
  const {
    redisUrl,
    prefix = 'bulwark:rl',
    onFallback = () => {},
    onRecover = () => {},
    connectTimeoutMs = 2_000,
    commandTimeoutMs = 500,
    maxReconnectDelayMs = 5_000,
  } = options;
  if (!prefix || !/^[\x21-\x7e]+$/.test(prefix)) throw new Error('createRateLimiter: prefix must be visible ASCII without spaces');
  if (!redisUrl) return { limiter: new MemoryRateLimiter(prefix), backend: 'memory', close: async () => {} };
  if (!/^rediss?:\/\//.test(redisUrl)) throw new Error('createRateLimiter: redisUrl must start with redis:// or rediss://');
  for (const [name, value] of Object.entries({ connectTimeoutMs, commandTimeoutMs, maxReconnectDelayMs })) {
    if (!Number.isFinite(value) || value <= 0) throw new Error(`createRateLimiter: ${name} must be > 0`);
  }

  // Loaded only here: a deployment without Redis does not carry its client in memory.
  const redis = await import('redis');
  let degraded = false;
  const client: RedisClient = redis.createClient({
    url: redisUrl,
    // Commands fail at once while disconnected instead of piling up until Redis returns.
    disableOfflineQueue: true,
    commandOptions: { timeout: commandTimeoutMs },
    socket: {
      connectTimeout: connectTimeoutMs,
      reconnectStrategy: (retries: number) => Math.min(100 * 2 ** Math.min(retries, 10), maxReconnectDelayMs),
    },
  });
  const limiter = new RedisRateLimiter({
    client,
    prefix,
    commandTimeoutMs,
    onFallback: (err) => {
      degraded = true;
      onFallback(err);
    },
  });
  // Without an 'error' listener a connection error would crash the process (EventEmitter).
  client.on('error', (err: unknown) => limiter.noteConnectionError(err));
  client.on('ready', () => {
    if (!degraded) return;
    degraded = false;
    onRecover();
  });

  let closed = false;
  const connected = client.connect().then(
    () => true,
    // Rejects only when closed before connecting; the reason is already reported via 'error'.
    () => false,
  );
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([connected, new Promise<void>((resolve) => (timer = setTimeout(resolve, connectTimeoutMs)))]);
  clearTimeout(timer);

  return {
    limiter,
    backend: 'redis',
    async close() {
      if (closed) return;
      closed = true;
      if (!client.isOpen) return;
      try {
        await client.close();
      } catch {
        client.destroy();
      }
      await connected;
    },
  };
}
