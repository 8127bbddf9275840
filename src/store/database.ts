/**
 * Opens the database behind one query layer: PGlite (embedded, under the data dir) by default,
 * PostgreSQL when a URL is given. Both get the same Kysely<Tables>, schema and migrations.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { lockEmbeddedDatabase } from './data-dir.js';
import { PGliteDialect } from './pglite-dialect.js';
import type { Tables } from './tables.js';

export type DatabaseKind = 'pglite' | 'postgres';

export interface Database {
  readonly db: Kysely<Tables>;
  readonly kind: DatabaseKind;
  /** The schema Bulwark's tables live in. */
  readonly schema: string;
  /** Where the data lives, safe to print (no password). */
  readonly location: string;
  /** Resolves when the database answers a trivial query. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  /** A postgres:// URL; without it the embedded database is used. */
  url?: string | undefined;
  /** Data dir for the embedded database (`<dataDir>/db`), created with mode 700. */
  dataDir?: string;
  /** PostgreSQL schema to work in (created if missing). */
  schema?: string;
  /** Embedded database in memory only (tests). */
  memory?: boolean;
  /** Called with errors from idle pool clients, which would otherwise crash the process. */
  onPoolError?: (err: Error) => void;
}

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

export async function openDatabase(options: OpenDatabaseOptions): Promise<Database> {
  const schema = options.schema ?? 'public';
  if (!SCHEMA_NAME.test(schema)) throw new Error(`schema: '${schema}' is not a lower-case SQL identifier`);
  return options.url ? openPostgres(options.url, schema, options.onPoolError) : openPGlite(options, schema);
}

async function openPGlite(options: OpenDatabaseOptions, schema: string): Promise<Database> {
  let pglite: PGlite;
  let location: string;
  let release = () => {};
  if (options.memory) {
    pglite = new PGlite();
    location = 'embedded (memory)';
  } else {
    if (!options.dataDir) throw new Error('dataDir is required for the embedded database');
    const dir = path.join(options.dataDir, 'db');
    mkdirSync(options.dataDir, { recursive: true, mode: 0o700 });
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    release = lockEmbeddedDatabase(options.dataDir);
    pglite = new PGlite(dir);
    location = `embedded (${dir})`;
  }
  try {
    await pglite.waitReady;
  } catch (err) {
    release();
    throw err;
  }
  if (schema !== 'public') {
    await pglite.exec(`create schema if not exists ${schema}; set search_path to ${schema}`);
  }
  const db = new Kysely<Tables>({ dialect: new PGliteDialect(pglite) });
  return {
    db,
    kind: 'pglite',
    schema,
    location,
    async ping() {
      await sql`select 1`.execute(db);
    },
    async close() {
      await db.destroy();
      if (!pglite.closed) await pglite.close();
      release();
    },
  };
}

async function openPostgres(url: string, schema: string, onPoolError?: (err: Error) => void): Promise<Database> {
  const pool = new pg.Pool({
    connectionString: url,
    max: 10,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    ...(schema !== 'public' ? { options: `-c search_path=${schema}` } : {}),
  });
  pool.on('error', (err) => onPoolError?.(err));
  if (schema !== 'public') {
    try {
      await pool.query(`create schema if not exists ${schema}`);
    } catch (err) {
      // IF NOT EXISTS is not race-free: of instances starting together, the losers get a unique
      // violation (23505) although the schema now exists, which is all they need.
      if ((err as { code?: string }).code !== '23505') throw err;
    }
  }
  const db = new Kysely<Tables>({ dialect: new PostgresDialect({ pool }) });
  const parsed = new URL(url);
  return {
    db,
    kind: 'postgres',
    schema,
    location: `postgres://${parsed.host}${parsed.pathname}${schema !== 'public' ? ` (schema ${schema})` : ''}`,
    async ping() {
      await sql`select 1`.execute(db);
    },
    async close() {
      await db.destroy();
    },
  };
}
