/**
 * Opens the database behind one query layer: PGlite (embedded, under the data dir) by default,
 * PostgreSQL when a URL is given. Both get the same Kysely<Tables>, schema and migrations.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { promisify } from 'node:util';
import { Kysely, PostgresDialect, sql } from 'kysely';
import type { Pool } from 'pg';
import { lockEmbeddedDatabase } from './data-dir.js';
import { PGliteDialect } from './pglite-dialect.js';
import { PGliteThread } from './pglite-thread.js';
import { assertSchemaName } from './schema-name.js';
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
  /** Called if the embedded engine's thread stops while the database is open (every query then fails). */
  onEngineStopped?: (err: Error) => void;
}

/**
 * Added to PGlite's own start parameters: a 16 MB buffer cache instead of PostgreSQL's 128 MB.
 * The embedded engine's memory never shrinks, and a gateway's writes are appends that need
 * little cache; reads still go through the operating system's page cache.
 */
const EMBEDDED_EXTRA_START_PARAMS = ['-c', 'shared_buffers=16MB'];

/**
 * A new data directory is created in a short-lived child process: PGlite runs initdb in its own
 * WebAssembly instance, whose half a gigabyte would otherwise stay resident for the server's life.
 */
const INIT_SCRIPT = `
const { PGlite } = require(process.argv[1]);
(async () => {
  const db = new PGlite(process.argv[2], { startParams: [...PGlite.defaultStartParams, ...JSON.parse(process.argv[3])] });
  await db.waitReady;
  await db.close();
})().catch((err) => { process.stderr.write(String((err && err.message) || err)); process.exit(1); });
`;

async function initialiseEmbedded(dir: string): Promise<void> {
  if (existsSync(path.join(dir, 'PG_VERSION'))) return;
  const pgliteModule = createRequire(import.meta.url).resolve('@electric-sql/pglite');
  try {
    await promisify(execFile)(
      process.execPath,
      ['-e', INIT_SCRIPT, pgliteModule, dir, JSON.stringify(EMBEDDED_EXTRA_START_PARAMS)],
      { timeout: 120_000 },
    );
  } catch (err) {
    const detail = (err as { stderr?: string }).stderr?.trim() || (err as Error).message;
    throw new Error(`creating the embedded database in ${dir} failed: ${detail}`);
  }
}

export async function openDatabase(options: OpenDatabaseOptions): Promise<Database> {
  const schema = options.schema ?? 'public';
  assertSchemaName(schema);
  return options.url ? openPostgres(options.url, schema, options.onPoolError) : openPGlite(options, schema);
}

async function openPGlite(options: OpenDatabaseOptions, schema: string): Promise<Database> {
  let dir: string | undefined;
  let release = () => {};
  if (!options.memory) {
    if (!options.dataDir) throw new Error('dataDir is required for the embedded database');
    dir = path.join(options.dataDir, 'db');
    mkdirSync(options.dataDir, { recursive: true, mode: 0o700 });
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    release = lockEmbeddedDatabase(options.dataDir);
  }
  let engine: PGliteThread;
  try {
    if (dir) await initialiseEmbedded(dir);
    engine = await PGliteThread.start({ dir, extraStartParams: EMBEDDED_EXTRA_START_PARAMS, schema, onStopped: options.onEngineStopped });
  } catch (err) {
    release();
    throw err;
  }
  const db = new Kysely<Tables>({ dialect: new PGliteDialect(engine) });
  return {
    db,
    kind: 'pglite',
    schema,
    location: dir ? `embedded (${dir})` : 'embedded (memory)',
    async ping() {
      await sql`select 1`.execute(db);
    },
    async close() {
      await db.destroy();
      await engine.close();
      release();
    },
  };
}

async function openPostgres(url: string, schema: string, onPoolError?: (err: Error) => void): Promise<Database> {
  // Loaded only here: the embedded database's deployments do not carry the driver in memory.
  const { default: pg } = await import('pg');
  const pool: Pool = new pg.Pool({
    connectionString: url,
    max: 10,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    ...(schema !== 'public' ? { options: `-c search_path=${schema}` } : {}),
  });
  // The pool listens for errors only on idle clients. A client that is checked out but between
  // statements (inside a transaction, say) when its connection dies emits 'error' with no
  // listener, which would crash the process; so every client reports its own errors (its next
  // statement fails and is retried), and the pool's event, which repeats an idle client's, is
  // only acknowledged.
  pool.on('connect', (client) => client.on('error', (err) => onPoolError?.(err)));
  pool.on('error', () => {});
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
