/**
 * A bounded, batched writer that takes writes off the request path. Items wait in memory and
 * are written in batches; while the database is away the batch is retried with backoff and
 * nothing is dropped until the bound is reached. What cannot be written — overflow, or what is
 * still queued when a shutdown deadline passes — is appended to a spool file (mode 600) and
 * reported, and the spool is replayed on the next start. Items must hold no secrets.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { isProcessAlive } from './data-dir.js';

export interface WriteBehindOptions<T> {
  /** Names the queue in reports and its spool file. */
  name: string;
  write: (batch: T[]) => Promise<void>;
  /** Most items held in memory; past it, new items go to the spool. */
  maxItems?: number;
  batchSize?: number;
  /** The size of an item in bytes, when items vary a lot (stored bodies); enables the byte bounds. */
  sizeOf?: (item: T) => number;
  /** Most bytes held in memory (with `sizeOf`); past it, new items go to the spool. Default 256 MiB. */
  maxBytes?: number;
  /** Most bytes in one write (with `sizeOf`), well under the database's message limit. Default 16 MiB. */
  batchBytes?: number;
  flushIntervalMs?: number;
  /** Where overflow and unwritten items are kept (`<dir>/<name>.jsonl`); without it they are only reported. */
  spoolDir?: string | undefined;
  /** Told about failures: a write that will be retried, or items spooled/lost. */
  report?: (event: WriteBehindReport) => void;
  /**
   * Whether an error says the data itself was refused (retrying cannot help), as opposed to the
   * database being away. Such a batch is split until the refused item is found; that item is
   * set aside in `<name>.rejected.jsonl` (never replayed) and reported, and the rest go on.
   */
  isPermanent?: (err: unknown) => boolean;
}

/** PostgreSQL SQLSTATE classes 22 (data exception) and 23 (integrity violation): the row itself was refused. */
export function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^2[23][0-9A-Z]{3}$/.test(code);
}

export type WriteBehindReport =
  | { kind: 'retrying'; queue: string; pending: number; attempt: number; error: string }
  | { kind: 'recovered'; queue: string; pending: number }
  | { kind: 'spooled'; queue: string; count: number; file: string }
  | { kind: 'lost'; queue: string; count: number; reason: string }
  | { kind: 'replayed'; queue: string; count: number }
  | { kind: 'rejected'; queue: string; count: number; file: string | undefined; error: string };

export interface WriteBehindStats {
  pending: number;
  written: number;
  spooled: number;
  failedAttempts: number;
}

export class WriteBehind<T> {
  readonly #options: Required<Omit<WriteBehindOptions<T>, 'spoolDir' | 'report' | 'isPermanent' | 'sizeOf'>> &
    Pick<WriteBehindOptions<T>, 'spoolDir' | 'report' | 'isPermanent' | 'sizeOf'>;
  #bytes = 0;
  /** The batch size in force: halved while isolating an item the database refuses. */
  #batchLimit: number;
  /** Spool files this process is replaying, and how many of their items are not yet written. */
  #claims: string[] = [];
  #claimedPending = 0;
  #items: T[] = [];
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #attempt = 0;
  #closed = false;
  #stats: WriteBehindStats = { pending: 0, written: 0, spooled: 0, failedAttempts: 0 };

  constructor(options: WriteBehindOptions<T>) {
    const { maxItems = 10_000, batchSize = 200, flushIntervalMs = 250, maxBytes = 256 * 1024 * 1024, batchBytes = 16 * 1024 * 1024 } = options;
    if (!Number.isInteger(maxItems) || maxItems < 1) throw new Error(`WriteBehind ${options.name}: maxItems must be a positive integer`);
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`WriteBehind ${options.name}: batchSize must be a positive integer`);
    this.#options = { ...options, maxItems, batchSize, flushIntervalMs, maxBytes, batchBytes };
    this.#batchLimit = batchSize;
  }

  get stats(): WriteBehindStats {
    return { ...this.#stats, pending: this.#items.length };
  }

  /** Queues an item; never blocks and never throws. Returns false when it had to be spooled. */
  push(item: T): boolean {
    const size = this.#options.sizeOf?.(item) ?? 0;
    if (this.#closed || this.#items.length >= this.#options.maxItems || (size > 0 && this.#bytes + size > this.#options.maxBytes)) {
      this.#spool([item], this.#closed ? 'queue closed' : 'queue full');
      return false;
    }
    this.#items.push(item);
    this.#bytes += size;
    // A full batch is written at once, except while retrying: new items must not cut the backoff short.
    const batchReady = this.#items.length >= this.#options.batchSize && this.#attempt === 0;
    this.#schedule(batchReady ? 0 : this.#options.flushIntervalMs);
    return true;
  }

  /** Writes everything queued now; resolves when the queue is empty or rejects on a write error. */
  async flush(): Promise<void> {
    while (this.#items.length > 0 || this.#running) {
      if (this.#running) {
        await this.#running.catch(() => {});
        continue;
      }
      await this.#runOnce();
    }
  }

  /**
   * Stops accepting items and drains within the deadline; whatever is left is spooled.
   * Returns how many items could not be written to the database.
   */
  async close(deadlineMs = 5_000): Promise<number> {
    this.#closed = true;
    clearTimeout(this.#timer);
    const deadline = Date.now() + deadlineMs;
    while ((this.#items.length > 0 || this.#running) && Date.now() < deadline) {
      try {
        // A write that never returns must not hold shutdown past the deadline.
        await withDeadline(this.#running ?? this.#runOnce(), deadline);
      } catch {
        await sleep(Math.min(250, Math.max(0, deadline - Date.now())));
      }
    }
    const left = this.#items.splice(0);
    this.#bytes = 0;
    if (left.length) this.#spool(left, 'shutdown deadline passed while the database was away');
    this.#consumed(this.#claimedPending); // anything replayed and unwritten is in the new spool now
    return left.length;
  }

  /** Spools everything still queued, synchronously, for a process that must exit now. */
  abandon(): number {
    this.#closed = true;
    clearTimeout(this.#timer);
    const left = this.#items.splice(0);
    this.#bytes = 0;
    if (left.length) this.#spool(left, 'process exiting without draining');
    this.#consumed(this.#claimedPending);
    return left.length;
  }

  /**
   * Re-queues items a previous run spooled, ahead of anything queued since, including a file an
   * earlier replay claimed but did not finish (its process died). A claimed file is removed only
   * once its items are written (or spooled again at shutdown), so a crash in between loses
   * nothing; a write that repeats is the writer's to make idempotent. Call once at start.
   */
  replaySpool(): number {
    const file = this.#spoolFile();
    if (!file) return 0;
    const dir = path.dirname(file);
    const base = path.basename(file);
    const orphans = existsSync(dir)
      ? readdirSync(dir).filter((name) => {
          const pid = Number(/\.replaying-(\d+)(?:-\d+)*$/.exec(name)?.[1]);
          return name.startsWith(`${base}.replaying-`) && pid !== process.pid && !isProcessAlive(pid);
        })
      : [];
    const sources = [...orphans.map((name) => path.join(dir, name)), ...(existsSync(file) ? [file] : [])];
    // Only as much as the queue has room for: the rest goes back to the spool for later, so a
    // long outage's spool never has to fit in memory at once.
    let room = Math.max(0, this.#options.maxItems - this.#items.length);
    const replayed: T[] = [];
    for (const source of sources) {
      const claimed = `${file}.replaying-${process.pid}-${this.#claims.length}-${Date.now()}`;
      renameSync(source, claimed);
      const data = readFileSync(claimed); // bytes, not one string: a spool may exceed V8's string limit
      let offset = 0;
      while (offset < data.length && room > 0) {
        let end = data.indexOf(0x0a, offset);
        if (end < 0) end = data.length;
        const line = data.subarray(offset, end).toString('utf8');
        offset = end + 1;
        if (!line) continue;
        try {
          replayed.push(JSON.parse(line) as T);
          room -= 1;
        } catch {
          // a torn last line from a crash mid-append: skip it
        }
      }
      if (offset < data.length) {
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        appendFileSync(file, data.subarray(offset), { mode: 0o600 });
      }
      // Claimed only once read whole: if anything above threw, the file stays on disk (an
      // orphan the next start replays) instead of being released unread.
      this.#claims.push(claimed);
    }
    // Older than anything queued since: to the front, without spreading a huge array as arguments.
    this.#items = replayed.concat(this.#items);
    if (this.#options.sizeOf) for (const item of replayed) this.#bytes += this.#options.sizeOf(item);
    this.#claimedPending += replayed.length;
    this.#releaseClaimsIfDone();
    if (replayed.length) {
      this.#options.report?.({ kind: 'replayed', queue: this.#options.name, count: replayed.length });
      this.#schedule(0);
    }
    return replayed.length;
  }

  /** Counts items taken off the front of the queue (written or set aside) against the claims. */
  #consumed(count: number): void {
    this.#claimedPending = Math.max(0, this.#claimedPending - count);
    this.#releaseClaimsIfDone();
  }

  #releaseClaimsIfDone(): void {
    if (this.#claimedPending > 0) return;
    for (const claimed of this.#claims.splice(0)) rmSync(claimed, { force: true });
  }

  #schedule(delayMs: number): void {
    if (this.#running) return;
    if (this.#timer && delayMs > 0) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#runOnce().catch(() => {});
    }, delayMs);
    this.#timer.unref();
  }

  async #runOnce(): Promise<void> {
    if (this.#running || this.#items.length === 0) return;
    const batch = this.#takeBatch();
    let refused = false;
    this.#running = (async () => {
      try {
        await this.#options.write(batch);
        this.#removeFront(batch.length);
        this.#stats.written += batch.length;
        this.#consumed(batch.length);
        if (this.#attempt > 0) this.#options.report?.({ kind: 'recovered', queue: this.#options.name, pending: this.#items.length });
        this.#attempt = 0;
        this.#batchLimit = this.#options.batchSize;
      } catch (err) {
        if (this.#options.isPermanent?.(err)) {
          refused = true;
          if (batch.length > 1) {
            this.#batchLimit = Math.ceil(batch.length / 2);
          } else {
            this.#removeFront(1);
            this.#reject(batch, err);
            this.#consumed(1);
            this.#batchLimit = this.#options.batchSize;
          }
          return;
        }
        this.#attempt += 1;
        this.#stats.failedAttempts += 1;
        this.#options.report?.({
          kind: 'retrying',
          queue: this.#options.name,
          pending: this.#items.length,
          attempt: this.#attempt,
          error: err instanceof Error ? err.message : String(err),
        });
        throw err;
      } finally {
        this.#running = undefined;
      }
    })();
    try {
      await this.#running;
      // What spilled while the database was away goes back in once it answers again (in slices
      // the queue has room for), not only at the next start.
      if (!this.#closed && this.#items.length < this.#options.maxItems / 2) {
        const spool = this.#spoolFile();
        if (spool && existsSync(spool)) {
          try {
            this.replaySpool();
          } catch (err) {
            this.#options.report?.({ kind: 'retrying', queue: this.#options.name, pending: this.#items.length, attempt: 0, error: `spool replay failed: ${(err as Error).message}` });
          }
        }
      }
      // After a refused batch the split halves are tried at once: the database is there. A full
      // batch waiting goes at once too; a partial one waits out the interval to gather more, so a
      // fast database is not kept busy with many small statements (each has a fixed cost).
      if (this.#items.length > 0 && (!this.#closed || refused)) {
        this.#schedule(refused || this.#items.length >= this.#options.batchSize ? 0 : this.#options.flushIntervalMs);
      }
    } catch (err) {
      // Back off: 100 ms doubling to 5 s, while items stay queued in order.
      if (!this.#closed) this.#schedule(Math.min(5_000, 100 * 2 ** Math.min(this.#attempt, 6)));
      throw err;
    }
  }

  /** The next batch: at most the batch limit in items and, with sizes, in bytes (never empty). */
  #takeBatch(): T[] {
    const count = Math.min(this.#batchLimit, this.#items.length);
    if (!this.#options.sizeOf) return this.#items.slice(0, count);
    let bytes = 0;
    let n = 0;
    while (n < count) {
      const size = this.#options.sizeOf(this.#items[n] as T);
      if (n > 0 && bytes + size > this.#options.batchBytes) break;
      bytes += size;
      n += 1;
    }
    return this.#items.slice(0, n);
  }

  #removeFront(count: number): void {
    const removed = this.#items.splice(0, count);
    if (this.#options.sizeOf) for (const item of removed) this.#bytes -= this.#options.sizeOf(item);
  }

  #spoolFile(): string | undefined {
    return this.#options.spoolDir ? path.join(this.#options.spoolDir, `${this.#options.name}.jsonl`) : undefined;
  }

  #reject(items: T[], err: unknown): void {
    const file = this.#options.spoolDir ? path.join(this.#options.spoolDir, `${this.#options.name}.rejected.jsonl`) : undefined;
    let written: string | undefined;
    if (file) {
      try {
        mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
        appendFileSync(file, items.map((i) => `${JSON.stringify(i)}\n`).join(''), { mode: 0o600 });
        written = file;
      } catch {
        written = undefined;
      }
    }
    const error = err instanceof Error ? err.message : String(err);
    this.#options.report?.({ kind: 'rejected', queue: this.#options.name, count: items.length, file: written, error });
  }

  #spool(items: T[], reason: string): void {
    const file = this.#spoolFile();
    if (file) {
      try {
        mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
        appendFileSync(file, items.map((i) => `${JSON.stringify(i)}\n`).join(''), { mode: 0o600 });
        this.#stats.spooled += items.length;
        this.#options.report?.({ kind: 'spooled', queue: this.#options.name, count: items.length, file });
        return;
      } catch (err) {
        reason = `${reason}; spool failed: ${(err as Error).message}`;
      }
    }
    this.#options.report?.({ kind: 'lost', queue: this.#options.name, count: items.length, reason });
  }
}

function withDeadline(work: Promise<void>, deadline: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((_, reject) => {
    timer = setTimeout(() => reject(new Error('deadline passed')), Math.max(0, deadline - Date.now()));
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
