/**
 * The write-behind queue (src/store/write-behind.ts): batching, retry while the database is
 * away without loss or reordering, overflow and shutdown spooling to a mode-600 file, and the
 * replay of that spool on the next start — with a fake writer and with a real PGlite that is
 * closed under the audit log.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AuditLog, tailEvents, verifyChain } from '../src/audit/log.js';
import { WriteBehind, type WriteBehindOptions, type WriteBehindReport, isDataError } from '../src/store/write-behind.js';
import { openTestDatabase } from './helpers/database.js';

const dirs: string[] = [];
const queues: { close(deadlineMs?: number): Promise<number> }[] = [];

afterEach(async () => {
  await Promise.all(queues.splice(0).map((q) => q.close(0)));
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-wb-'));
  dirs.push(dir);
  return dir;
}

async function waitFor(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A writer that records batches and fails, like a database that is away, while `away` is set. */
function fakeStore() {
  const store = {
    away: false,
    batches: [] as number[][],
    failures: 0,
    /** performance.now() of the latest failed write. */
    failedAt: 0,
    get written(): number[] {
      return store.batches.flat();
    },
    async write(batch: number[]): Promise<void> {
      await new Promise((resolve) => setTimeout(resolve, 1));
      if (store.away) {
        store.failures += 1;
        store.failedAt = performance.now();
        throw new Error('connect ECONNREFUSED 127.0.0.1:5432');
      }
      store.batches.push([...batch]);
    },
  };
  return store;
}

function queue(store: ReturnType<typeof fakeStore>, options: Partial<WriteBehindOptions<number>> = {}) {
  const reports: WriteBehindReport[] = [];
  const q = new WriteBehind<number>({
    name: 'test',
    write: (batch) => store.write(batch),
    flushIntervalMs: 10,
    report: (r) => reports.push(r),
    ...options,
  });
  queues.push(q);
  return { q, reports };
}

const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

describe('WriteBehind', () => {
  it('checks its options when built, naming the option', () => {
    const write = async () => {};
    expect(() => new WriteBehind({ name: 'q', write, maxItems: 0 })).toThrow(/maxItems/);
    expect(() => new WriteBehind({ name: 'q', write, batchSize: 1.5 })).toThrow(/batchSize/);
  });

  it('writes in batches of at most batchSize, in order, and flush writes everything', async () => {
    const store = fakeStore();
    const { q } = queue(store, { batchSize: 10, flushIntervalMs: 10_000 });
    for (const i of range(0, 25)) expect(q.push(i)).toBe(true);
    await q.flush();
    expect(store.written).toEqual(range(0, 25));
    expect(store.batches.length).toBeGreaterThanOrEqual(3);
    for (const batch of store.batches) expect(batch.length).toBeLessThanOrEqual(10);
    expect(q.stats).toMatchObject({ pending: 0, written: 25, spooled: 0, failedAttempts: 0 });
  });

  it('writes on its own after the flush interval', async () => {
    const store = fakeStore();
    const { q } = queue(store, { flushIntervalMs: 20 });
    q.push(1);
    q.push(2);
    expect(store.written).toEqual([]);
    await waitFor(() => store.written.length === 2);
    expect(store.batches).toEqual([[1, 2]]);
  });

  it('writes a full batch at once, but gathers a partial one for the interval instead of writing it straight after', async () => {
    const store = fakeStore();
    const { q } = queue(store, { batchSize: 10, flushIntervalMs: 300 });
    for (const i of range(0, 12)) q.push(i);
    await waitFor(() => store.batches.length === 1);
    expect(store.batches[0]).toEqual(range(0, 10));
    // Two items wait: items pushed meanwhile join them rather than each going in a statement of its own.
    await new Promise((resolve) => setTimeout(resolve, 100));
    q.push(12);
    expect(store.batches).toHaveLength(1);
    await waitFor(() => store.written.length === 13);
    expect(store.batches).toEqual([range(0, 10), [10, 11, 12]]);
  });

  it('retries in order while the database is away, loses nothing, and reports retrying then recovered', async () => {
    const store = fakeStore();
    store.away = true;
    const { q, reports } = queue(store, { batchSize: 4 });
    for (const i of range(0, 10)) q.push(i);
    await waitFor(() => store.failures >= 2);
    for (const i of range(10, 13)) q.push(i);
    expect(store.written).toEqual([]);
    store.away = false;
    await waitFor(() => store.written.length === 13);
    expect(store.written).toEqual(range(0, 13));
    for (const batch of store.batches) expect(batch.length).toBeLessThanOrEqual(4);

    const kinds = reports.map((r) => r.kind);
    expect(kinds[0]).toBe('retrying');
    expect(kinds).toContain('recovered');
    expect(kinds.lastIndexOf('retrying')).toBeLessThan(kinds.indexOf('recovered'));
    expect(kinds.filter((k) => k === 'recovered')).toHaveLength(1);
    expect(reports[0]).toMatchObject({ kind: 'retrying', queue: 'test', attempt: 1, error: expect.stringContaining('ECONNREFUSED') });
    expect(reports[1]).toMatchObject({ kind: 'retrying', attempt: 2 });
    expect(q.stats).toMatchObject({ pending: 0, written: 13, failedAttempts: store.failures });
  });

  it('keeps backing off while the database is away even as new items fill whole batches', async () => {
    // The first retry is due 200 ms after the first failure; steady traffic must not pull it in.
    // A run the machine stalls for most of those 200 ms cannot tell, and is run again.
    for (let run = 1; ; run++) {
      const store = fakeStore();
      store.away = true;
      const { q } = queue(store, { batchSize: 2, flushIntervalMs: 10 });
      q.push(0);
      q.push(1);
      await waitFor(() => store.failures === 1);
      for (let i = 2; i < 14; i++) {
        q.push(i);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      const failures = store.failures;
      const sinceFailureMs = performance.now() - store.failedAt;
      if (sinceFailureMs > 150 && run < 5) {
        await q.close(0);
        continue;
      }
      expect(failures).toBe(1);
      store.away = false;
      await waitFor(() => store.written.length === 14);
      expect(store.written).toEqual(range(0, 14));
      return;
    }
  });

  it('rejects flush while the write fails, keeping the items queued', async () => {
    const store = fakeStore();
    store.away = true;
    const { q } = queue(store, { flushIntervalMs: 10_000 });
    q.push(1);
    await expect(q.flush()).rejects.toThrow(/ECONNREFUSED/);
    expect(q.stats.pending).toBe(1);
    store.away = false;
    await q.flush();
    expect(store.written).toEqual([1]);
  });

  it('spools overflow past maxItems to a mode-600 file that a new queue replays and removes', async () => {
    const spoolDir = path.join(tempDir(), 'spool');
    const store = fakeStore();
    store.away = true;
    const { q, reports } = queue(store, { maxItems: 3, spoolDir });
    expect([1, 2, 3, 4, 5].map((i) => q.push(i))).toEqual([true, true, true, false, false]);

    const file = path.join(spoolDir, 'test.jsonl');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(spoolDir).mode & 0o777).toBe(0o700);
    expect(readFileSync(file, 'utf8')).toBe('4\n5\n');
    expect(reports.filter((r) => r.kind === 'spooled')).toEqual([
      { kind: 'spooled', queue: 'test', count: 1, file },
      { kind: 'spooled', queue: 'test', count: 1, file },
    ]);
    expect(q.stats).toMatchObject({ pending: 3, spooled: 2 });

    store.away = false;
    await q.flush(); // writes 1, 2, 3 and, the database being back, takes the spool in again
    await q.flush();
    expect(store.written).toEqual([1, 2, 3, 4, 5]);
    expect(reports).toContainEqual({ kind: 'replayed', queue: 'test', count: 2 });
    expect(readdirSync(spoolDir)).toEqual([]);
    expect(await q.close(1_000)).toBe(0);
  });

  it('skips unreadable lines in the spool instead of failing the start', async () => {
    const spoolDir = tempDir();
    const store = fakeStore();
    store.away = true;
    const first = queue(store, { spoolDir });
    first.q.push(7);
    expect(await first.q.close(0)).toBe(1);
    const { appendFileSync } = await import('node:fs');
    appendFileSync(path.join(spoolDir, 'test.jsonl'), '{not json\n8\n');
    store.away = false;
    const next = queue(store, { spoolDir });
    expect(next.q.replaySpool()).toBe(2);
    await next.q.flush();
    expect(store.written).toEqual([7, 8]);
  });

  it('on close, spools what the failing database did not take by the deadline and returns the count', async () => {
    const spoolDir = tempDir();
    const store = fakeStore();
    store.away = true;
    const { q, reports } = queue(store, { spoolDir, batchSize: 2 });
    for (const i of range(0, 5)) q.push(i);
    const started = Date.now();
    expect(await q.close(300)).toBe(5);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(store.failures).toBeGreaterThanOrEqual(1);
    expect(readFileSync(path.join(spoolDir, 'test.jsonl'), 'utf8')).toBe('0\n1\n2\n3\n4\n');
    expect(reports.at(-1)).toMatchObject({ kind: 'spooled', count: 5 });
    expect(q.stats).toMatchObject({ pending: 0, spooled: 5, written: 0 });
  });

  it('on close, does not wait past the deadline for a write that never returns, and spools its items', async () => {
    const spoolDir = tempDir();
    const q = new WriteBehind<number>({ name: 'hung', spoolDir, flushIntervalMs: 1, write: () => new Promise<void>(() => {}) });
    queues.push(q);
    q.push(1);
    q.push(2);
    await new Promise((resolve) => setTimeout(resolve, 20)); // the write has started and hangs
    expect(await q.close(200)).toBe(2);
    expect(readFileSync(path.join(spoolDir, 'hung.jsonl'), 'utf8')).toBe('1\n2\n');
  });

  it('spools everything queued at once when abandoned by a process that must exit now', async () => {
    const spoolDir = tempDir();
    const store = fakeStore();
    const { q } = queue(store, { spoolDir, flushIntervalMs: 10_000 });
    for (const i of range(0, 4)) q.push(i);
    expect(q.abandon()).toBe(4);
    expect(readFileSync(path.join(spoolDir, 'test.jsonl'), 'utf8')).toBe('0\n1\n2\n3\n');
    expect(q.push(9)).toBe(false);
    expect(store.written).toEqual([]);
  });

  it('replays a spool file that an earlier replay claimed but did not finish', async () => {
    const spoolDir = tempDir();
    const { writeFileSync } = await import('node:fs');
    // A pid that cannot be running: above the kernel's pid_max.
    writeFileSync(path.join(spoolDir, 'test.jsonl.replaying-99999999'), '4\n5\n');
    writeFileSync(path.join(spoolDir, 'test.jsonl'), '6\n');
    const store = fakeStore();
    const { q } = queue(store, { spoolDir });
    expect(q.replaySpool()).toBe(3);
    await q.flush();
    expect(store.written).toEqual([4, 5, 6]);
    expect(readdirSync(spoolDir)).toEqual([]);
  });

  it('on close, writes everything when the database is there and spools nothing', async () => {
    const spoolDir = tempDir();
    const store = fakeStore();
    const { q } = queue(store, { spoolDir, batchSize: 3, flushIntervalMs: 10_000 });
    for (const i of range(0, 7)) q.push(i);
    expect(await q.close(2_000)).toBe(0);
    expect(store.written).toEqual(range(0, 7));
    expect(readdirSync(spoolDir)).toEqual([]);
  });

  it('spools an item pushed after close, and reports it lost without a spool dir', async () => {
    const spoolDir = tempDir();
    const store = fakeStore();
    const { q, reports } = queue(store, { spoolDir });
    await q.close(100);
    expect(q.push(42)).toBe(false);
    expect(readFileSync(path.join(spoolDir, 'test.jsonl'), 'utf8')).toBe('42\n');
    expect(store.written).toEqual([]);
    expect(reports).toContainEqual(expect.objectContaining({ kind: 'spooled', count: 1 }));

    const noSpool = queue(store, { spoolDir: undefined });
    await noSpool.q.close(100);
    expect(noSpool.q.push(43)).toBe(false);
    expect(noSpool.reports).toEqual([{ kind: 'lost', queue: 'test', count: 1, reason: 'queue closed' }]);
  });

  it('reports items lost when the spool file cannot be written', async () => {
    const blocker = path.join(tempDir(), 'not-a-dir');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(blocker, '');
    const store = fakeStore();
    store.away = true;
    const { q, reports } = queue(store, { spoolDir: blocker });
    q.push(1);
    expect(await q.close(0)).toBe(1);
    expect(reports.at(-1)).toMatchObject({ kind: 'lost', count: 1, reason: expect.stringContaining('spool failed') });
  });
});

describe('AuditLog while the real database is away', () => {
  it('spools events it could not write on close, and a fresh log replays them into a valid chain', async () => {
    const spoolDir = tempDir();
    const first = await openTestDatabase('pglite');
    const reports: WriteBehindReport[] = [];
    const log = new AuditLog(first.database.db, { spoolDir, flushIntervalMs: 10, report: (r) => reports.push(r) });
    await first.cleanup();

    const secret = `sk-ant-api03-${randomBytes(24).toString('hex')}`;
    const recorded = [
      log.record({ type: 'auth.failure', outcome: 'failure', details: { presented: secret } }),
      log.record({ type: 'key.created', outcome: 'success', tenantId: 'acme' }),
      log.record({ type: 'key.revoked', outcome: 'success', tenantId: 'acme' }),
    ];
    await waitFor(() => reports.some((r) => r.kind === 'retrying'));
    expect(await log.close(300)).toBe(3);
    expect(reports.at(-1)).toMatchObject({ kind: 'spooled', queue: 'audit', count: 3 });

    const file = path.join(spoolDir, 'audit.jsonl');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const spooled = readFileSync(file, 'utf8');
    expect(spooled.trim().split('\n')).toHaveLength(3);
    expect(spooled).not.toContain(secret);

    const second = await openTestDatabase('pglite');
    try {
      const fresh = new AuditLog(second.database.db, { spoolDir, flushIntervalMs: 10 });
      expect(fresh.replaySpool()).toBe(3);
      await fresh.flush();
      expect(existsSync(file)).toBe(false);
      const stored = await tailEvents(second.database.db, {});
      expect(stored.map((e) => e.id)).toEqual(recorded.map((e) => e.id));
      expect(stored.map((e) => e.time)).toEqual(recorded.map((e) => e.time));
      expect(await verifyChain(second.database.db)).toMatchObject({ ok: true, checked: 3 });
      expect(await fresh.close(1_000)).toBe(0);
    } finally {
      await second.cleanup();
    }
  });
});

describe('WriteBehind with an item the database refuses', () => {
  it('isolates the refused item, sets it aside once, and writes every other item in order', async () => {
    const spoolDir = tempDir();
    const written: number[] = [];
    const reports: WriteBehindReport[] = [];
    const q = new WriteBehind<number>({
      name: 'poison',
      spoolDir,
      batchSize: 8,
      flushIntervalMs: 1,
      report: (r) => reports.push(r),
      isPermanent: isDataError,
      write: async (batch) => {
        if (batch.includes(5)) throw Object.assign(new Error('invalid input syntax for type json'), { code: '22P02' });
        written.push(...batch);
      },
    });
    queues.push(q);
    for (const i of range(0, 12)) q.push(i);
    await q.flush();
    expect(written).toEqual(range(0, 12).filter((i) => i !== 5));
    expect(readFileSync(path.join(spoolDir, 'poison.rejected.jsonl'), 'utf8')).toBe('5\n');
    expect(reports.filter((r) => r.kind === 'rejected')).toEqual([expect.objectContaining({ count: 1, error: expect.stringContaining('json') })]);
  });

  it('keeps retrying, not rejecting, while the database is merely away', async () => {
    expect(isDataError(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }))).toBe(false);
    expect(isDataError(Object.assign(new Error('terminating connection'), { code: '57P01' }))).toBe(false);
    expect(isDataError(Object.assign(new Error('duplicate key'), { code: '23505' }))).toBe(true);
  });
});

describe('WriteBehind recovering', () => {
  it('puts what spilled during an outage back in as soon as writes succeed again', async () => {
    const spoolDir = tempDir();
    const store = fakeStore();
    store.away = true;
    const { q } = queue(store, { spoolDir, maxItems: 2, flushIntervalMs: 5 });
    for (const i of range(0, 5)) q.push(i); // 0,1 queued; 2,3,4 spilled
    expect(readFileSync(path.join(spoolDir, 'test.jsonl'), 'utf8')).toBe('2\n3\n4\n');
    await new Promise((r) => setTimeout(r, 150)); // at least one failed attempt
    store.away = false;
    for (let i = 0; i < 100 && store.written.length < 5; i++) await new Promise((r) => setTimeout(r, 20));
    expect([...store.written].sort()).toEqual([0, 1, 2, 3, 4]);
    expect(readdirSync(spoolDir)).toEqual([]);
  });
});

describe('WriteBehind with sized items', () => {
  it('spills past maxBytes and writes batches of at most batchBytes (a single large item still goes alone)', async () => {
    const spoolDir = tempDir();
    const store = fakeStore();
    store.away = true;
    const sizes: Record<number, number> = { 0: 40, 1: 40, 2: 40, 3: 500 };
    const { q } = queue(store, { spoolDir, sizeOf: (i) => sizes[i] ?? 10, maxBytes: 100, batchBytes: 100, flushIntervalMs: 10_000 });
    expect([0, 1, 2].map((i) => q.push(i))).toEqual([true, true, false]); // 40 + 40 + 40 > 100
    expect(readFileSync(path.join(spoolDir, 'test.jsonl'), 'utf8')).toBe('2\n');
    store.away = false;
    await q.flush();
    await q.flush(); // the spilled item comes back once the database answers
    expect(store.batches).toEqual([[0, 1], [2]]);

    const big = queue(store, { sizeOf: (i) => sizes[i] ?? 10, maxBytes: 1_000, batchBytes: 100, flushIntervalMs: 10_000 });
    for (const i of [3, 4, 5]) big.q.push(i);
    await big.q.flush();
    expect(store.batches.slice(2)).toEqual([[3], [4, 5]]);
  });
});

describe('WriteBehind replaying a large spool', () => {
  it('takes back only what the queue has room for and leaves the rest spooled, losing nothing', async () => {
    const spoolDir = tempDir();
    const { writeFileSync } = await import('node:fs');
    writeFileSync(path.join(spoolDir, 'test.jsonl'), `${range(0, 250).join('\n')}\n`);
    const store = fakeStore();
    const { q } = queue(store, { spoolDir, maxItems: 100, flushIntervalMs: 5 });
    expect(q.replaySpool()).toBe(100);
    for (let i = 0; i < 200 && store.written.length < 250; i++) await new Promise((r) => setTimeout(r, 10));
    expect([...store.written].sort((a, b) => a - b)).toEqual(range(0, 250));
    expect(readdirSync(spoolDir)).toEqual([]);
  });
});
