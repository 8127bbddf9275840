/**
 * The embedded database on its own thread (src/store/pglite-thread.ts): errors come back with
 * their PostgreSQL fields, values survive the crossing, and a closed engine answers with an
 * error instead of leaving a query waiting forever.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { CopyData, PGliteThread } from '../src/store/pglite-thread.js';

const engines: PGliteThread[] = [];
afterEach(async () => {
  await Promise.all(engines.splice(0).map((engine) => engine.close()));
});

async function engine(): Promise<PGliteThread> {
  const started = await PGliteThread.start({ dir: undefined, extraStartParams: [], schema: 'public' });
  engines.push(started);
  return started;
}

describe('PGliteThread', () => {
  it('returns rows with their types, and affected-row counts', async () => {
    const db = await engine();
    await db.query('create table t (id text primary key, n int8, at timestamptz, raw bytea, doc jsonb)', []);
    const inserted = await db.query('insert into t values ($1, $2, $3, $4, $5), ($6, $2, $3, $4, $5)', ['a', 7, new Date('2026-01-02T03:04:05Z'), new Uint8Array([1, 2, 3]), { k: ['v'] }, 'b']);
    expect(inserted.affectedRows).toBe(2);
    const { rows } = await db.query<{ id: string; n: number; at: Date; raw: Uint8Array; doc: unknown }>('select * from t order by id', []);
    expect(rows).toHaveLength(2);
    expect(rows[0]!.at).toBeInstanceOf(Date);
    expect(rows[0]!.at.toISOString()).toBe('2026-01-02T03:04:05.000Z');
    expect([...rows[0]!.raw]).toEqual([1, 2, 3]);
    expect(rows[0]!.doc).toEqual({ k: ['v'] });
  });

  it('raises a refused statement with its SQLSTATE, and the next query still runs', async () => {
    const db = await engine();
    await db.query('create table u (id text primary key)', []);
    await db.query('insert into u values ($1)', ['x']);
    const refused = await db.query('insert into u values ($1)', ['x']).catch((err: unknown) => err as Error & { code?: string; constraint?: string });
    expect(refused).toBeInstanceOf(Error);
    expect(refused).toMatchObject({ code: '23505', constraint: 'u_pkey' });
    expect((refused as Error).message).toMatch(/duplicate key/);
    expect((await db.query('select count(*)::int as n from u', [])).rows).toEqual([{ n: 1 }]);
  });

  it('copies rows from CopyData, all or none: a refused row leaves the table as it was', async () => {
    const db = await engine();
    await db.query('create table c (id text primary key, n int4, note text)', []);
    const copied = await db.query("copy c from '/dev/blob' with (format csv)", [new CopyData('a,1,"x, ""y""\nz"\nb,2,\n')]);
    expect(copied.affectedRows).toBe(2);
    const refused = await db.query("copy c from '/dev/blob' with (format csv)", [new CopyData('c,3,ok\nd,not a number,bad\n')]).catch((err: unknown) => err as Error & { code?: string });
    expect(refused).toMatchObject({ code: '22P02' });
    const { rows } = await db.query<{ id: string; n: number; note: string | null }>('select * from c order by id', []);
    expect(rows).toEqual([
      { id: 'a', n: 1, note: 'x, "y"\nz' },
      { id: 'b', n: 2, note: null },
    ]);
  });

  it('fails a query whose parameter cannot be sent, and the next query still runs', async () => {
    const db = await engine();
    await expect(db.query('select $1::text as v', [() => 'not data'])).rejects.toThrow(/cannot be sent to the embedded database/);
    expect((await db.query('select $1::text as v', ['data'])).rows).toEqual([{ v: 'data' }]);
  });

  it('answers queries after close with an error instead of leaving them waiting', async () => {
    const db = await PGliteThread.start({ dir: undefined, extraStartParams: [], schema: 'public' });
    await db.close();
    expect(db.closed).toBe(true);
    await expect(db.query('select 1', [])).rejects.toThrow(/embedded database stopped/);
  });

  it('refuses a schema name that is not a plain identifier, before any SQL runs', async () => {
    await expect(PGliteThread.start({ dir: undefined, extraStartParams: [], schema: 'x; drop table t' })).rejects.toThrow(/not a lower-case SQL identifier/);
  });

  it('puts a schema other than public on the search path', async () => {
    const db = await PGliteThread.start({ dir: undefined, extraStartParams: [], schema: 'tenant_x' });
    engines.push(db);
    await db.query('create table here (id int)', []);
    expect((await db.query('select table_schema from information_schema.tables where table_name = $1', ['here'])).rows).toEqual([{ table_schema: 'tenant_x' }]);
  });
});
