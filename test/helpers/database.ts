/**
 * Real databases for tests: PGlite in memory, and the PostgreSQL on this machine with a fresh
 * schema per call so concurrent runs never collide. PostgreSQL tests never skip: if the server
 * is down the suite fails, as CI requires.
 */
import { randomBytes } from 'node:crypto';
import { it } from 'vitest';
import pg from 'pg';
import { type Database, openDatabase } from '../../src/store/database.js';
import { migrateToLatest } from '../../src/store/migrations.js';

export const POSTGRES_URL = 'postgres://postgres@127.0.0.1:5432/test';
export const ENGINES = ['pglite', 'postgres'] as const;
export type Engine = (typeof ENGINES)[number];

export interface TestDatabase {
  database: Database;
  /** For PostgreSQL: the schema the test owns (pass as BULWARK_DATABASE_SCHEMA to child processes). */
  schema: string;
  cleanup(): Promise<void>;
}

export function freshSchemaName(): string {
  return `t_${randomBytes(6).toString('hex')}`;
}

export async function dropSchema(schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: POSTGRES_URL });
  await client.connect();
  try {
    await client.query(`drop schema if exists ${schema} cascade`);
  } finally {
    await client.end();
  }
}

export async function openTestDatabase(engine: Engine, options: { migrate?: boolean } = {}): Promise<TestDatabase> {
  const schema = engine === 'postgres' ? freshSchemaName() : 'public';
  const database = await openDatabase(engine === 'postgres' ? { url: POSTGRES_URL, schema } : { memory: true });
  if (options.migrate !== false) await migrateToLatest(database);
  return {
    database,
    schema,
    async cleanup() {
      await database.close();
      if (engine === 'postgres') await dropSchema(schema);
    },
  };
}

/**
 * Registers a test only on PostgreSQL (it needs a second connection or schema, which the
 * in-memory PGlite cannot have), so PGlite runs report no skipped tests.
 */
export function itOnPostgres(engine: Engine): (name: string, fn: () => Promise<void>, timeout?: number) => void {
  return engine === 'postgres' ? (name, fn, timeout) => it(name, fn, timeout) : () => {};
}
