/**
 * The requests queue (src/proxy/request-log.ts) against real databases, both ways it writes: the
 * unnest INSERT (PostgreSQL, and the embedded database's fallback) and COPY (the embedded
 * database). What goes in comes back out unchanged, a replayed batch doubles no row, and a row
 * the database refuses costs only itself.
 */
import { type Selectable, sql } from 'kysely';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { type RequestLog, type RequestRecord, createRequestLog } from '../src/proxy/request-log.js';
import type { RequestsTable } from '../src/store/tables.js';
import type { WriteBehindReport } from '../src/store/write-behind.js';
import { type Engine, type TestDatabase, openTestDatabase } from './helpers/database.js';

const WAYS: [Engine, boolean][] = [
  ['pglite', true],
  ['pglite', false],
  ['postgres', false],
];

let counter = 0;
function record(extra: Partial<RequestRecord> = {}): RequestRecord {
  counter += 1;
  return {
    id: `r${counter}`, time: '2026-12-07T10:00:00.123Z', tenantId: 'acme', keyId: 'k1', method: 'POST', path: '/v1/messages', model: 'claude-sonnet-4-5',
    stream: counter % 2 === 0, status: 200, errorType: null, inputTokens: 12, outputTokens: 34, cacheCreationInputTokens: 5, cacheReadInputTokens: 6,
    costUsd: 0.000123, latencyMs: 17, firstTokenMs: counter % 2 === 0 ? 9 : null, ip: '127.0.0.1', userAgent: 'sdk/1.0', requestId: `req_${counter}`,
    upstreamRequestId: null, requestBody: null, responseBody: null, ...extra,
  };
}

type Row = Selectable<RequestsTable>;

describe.each(WAYS)('requests on %s (COPY: %s)', (engine, bulkCopy) => {
  let t: TestDatabase;
  let log: RequestLog;
  let reports: WriteBehindReport[];
  beforeAll(async () => {
    t = await openTestDatabase(engine);
  });
  afterAll(async () => {
    await log?.close();
    await t?.cleanup();
  });
  beforeEach(async () => {
    await log?.close();
    await sql`delete from requests`.execute(t.database.db);
    reports = [];
    log = createRequestLog(t.database.db, { bulkCopy, flushIntervalMs: 5, report: (event) => reports.push(event) });
  });

  const stored = async () => (await sql<Row>`select * from requests order by id`.execute(t.database.db)).rows;

  it('stores every field as given, text that looks like CSV or COPY syntax included', async () => {
    const awkward = [
      'comma, "quotes" and ""doubled""',
      'line one\nline two\r\nline three',
      '\\.\nafter an end-of-data marker',
      '\\N',
      'back\\slash and \\t tab\t',
      'unicode: ü 日本 🦫',
      '',
    ];
    const records = awkward.map((text, i) =>
      record({ userAgent: text, requestBody: i % 2 ? text : null, responseBody: i % 2 ? null : text, errorType: i === 0 ? 'api_error' : null, status: i === 0 ? 502 : 200 }),
    );
    for (const r of records) log.push(r);
    await log.flush();
    const rows = await stored();
    expect(rows).toHaveLength(records.length);
    for (const r of records) {
      const row = rows.find((x) => x.id === r.id)!;
      expect(row).toMatchObject({
        tenant_id: r.tenantId, stream: r.stream, status: r.status, error_type: r.errorType, input_tokens: 12, output_tokens: 34,
        cache_creation_input_tokens: 5, cache_read_input_tokens: 6, first_token_ms: r.firstTokenMs, user_agent: r.userAgent,
        request_body: r.requestBody, response_body: r.responseBody,
      });
      expect(row.cost_usd).toBeCloseTo(0.000123, 12);
      expect(new Date(row.time).toISOString()).toBe(r.time);
    }
    // An empty string stays an empty string, not a null.
    expect(rows.find((x) => x.id === records.at(-1)!.id)?.user_agent).toBe('');
  });

  it('writes a replayed batch without doubling the rows already in and without losing the new ones', async () => {
    const first = [record(), record(), record()];
    for (const r of first) log.push(r);
    await log.flush();
    const later = [record(), record()];
    for (const r of [...later, ...first]) log.push(r);
    await log.flush();
    expect((await stored()).map((r) => r.id).sort()).toEqual([...first, ...later].map((r) => r.id).sort());
    expect(reports.filter((r) => r.kind === 'rejected')).toEqual([]);
  });

  it('refuses only the row the database cannot take, and keeps the rest of its batch', async () => {
    const good = [record(), record(), record(), record()];
    const bad = record({ userAgent: 'nul \u0000 byte' });
    for (const r of [good[0]!, good[1]!, bad, good[2]!, good[3]!]) log.push(r);
    await log.flush();
    expect((await stored()).map((r) => r.id).sort()).toEqual(good.map((r) => r.id).sort());
    const rejected = reports.filter((r) => r.kind === 'rejected');
    expect(rejected).toHaveLength(1);
    expect(rejected[0]).toMatchObject({ count: 1 });
  });

  it(`writes a batch of 500 in one statement${bulkCopy ? ', a COPY' : ''}`, async () => {
    const copies = vi.spyOn(t.database.db, 'executeQuery');
    try {
      const many = Array.from({ length: 500 }, () => record({ requestBody: 'x'.repeat(50) }));
      for (const r of many) log.push(r);
      await log.flush();
      expect((await stored()).length).toBe(500);
      expect(log.stats).toMatchObject({ pending: 0, written: 500, failedAttempts: 0 });
      // COPY is sent with executeQuery, the INSERT through its executor: one COPY or none.
      expect(copies.mock.calls.map(([query]) => ('sql' in query ? query.sql : query.compile().sql).split(' ')[0])).toEqual(bulkCopy ? ['copy'] : []);
    } finally {
      copies.mockRestore();
    }
  });
});
