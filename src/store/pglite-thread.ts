/**
 * The embedded PostgreSQL (PGlite) on a worker thread of its own. PGlite executes SQL in
 * WebAssembly, synchronously: on the main thread every batch of `requests` rows would stop the
 * event loop that serves the proxy. On its own thread the engine works while requests are
 * served, and the main thread only hands over the SQL and its parameters (structured clone).
 *
 * Queries are answered in the order they are sent, one at a time, as PGlite does in-process;
 * the dialect's mutex above keeps transactions whole. If the thread dies, every pending and
 * later query fails with the reason, and `/readyz` says the database is down.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { assertSchemaName } from './schema-name.js';

export interface EmbeddedQueryResult<R> {
  rows: R[];
  affectedRows?: number | undefined;
}

/**
 * The data of a `COPY … FROM '/dev/blob'` (CSV or text, as the statement says), given as that
 * query's only parameter. The embedded engine alone takes it: PGlite reads `/dev/blob` from the
 * query's `blob` option.
 */
export class CopyData {
  constructor(readonly text: string) {}
}

/** What the Kysely dialect needs from the engine. */
export interface EmbeddedEngine {
  query<R>(sql: string, params: readonly unknown[]): Promise<EmbeddedQueryResult<R>>;
}

export interface EmbeddedOptions {
  /** The data directory (already initialised); without it, a database in memory. */
  dir: string | undefined;
  /** Start parameters added to PGlite's own. */
  extraStartParams: readonly string[];
  /** A schema other than `public` is created and put on the search path. */
  schema: string;
  /** Called once if the thread stops other than through `close()` (a crash, an out-of-memory end). */
  onStopped?: ((reason: Error) => void) | undefined;
}

/** Own properties a PostgreSQL error carries (code, detail, constraint, …); parameters are left out. */
type ErrorFields = Record<string, string | number | boolean>;

type Reply = { id: number; rows: unknown[]; affectedRows?: number } | { id: number; error: ErrorFields };

/**
 * The worker's source, CommonJS, run with `eval` so the same code serves the built server and
 * the tests (which run the TypeScript sources, where no `.js` file sits next to this one).
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { PGlite } = require(workerData.modulePath);

function fields(err) {
  const out = { message: String((err && err.message) || err), name: (err && err.name) || 'Error' };
  if (err && typeof err === 'object') {
    for (const [key, value] of Object.entries(err)) {
      if (key !== 'params' && key !== 'query' && ['string', 'number', 'boolean'].includes(typeof value)) out[key] = value;
    }
  }
  return out;
}

(async () => {
  const startParams = [...PGlite.defaultStartParams, ...workerData.extraStartParams];
  const db = workerData.dir ? new PGlite(workerData.dir, { startParams }) : new PGlite({ startParams });
  await db.waitReady;
  if (workerData.schema !== 'public') await db.exec('create schema if not exists ' + workerData.schema + '; set search_path to ' + workerData.schema);
  async function handle(message) {
    if (message.op === 'close') {
      await db.close();
      parentPort.postMessage({ id: message.id, rows: [] });
      parentPort.close();
      return;
    }
    // COPY ... FROM '/dev/blob' reads the query's blob.
    const result = message.copy === undefined
      ? await db.query(message.sql, message.params)
      : await db.query(message.sql, [], { blob: new Blob([message.copy]) });
    parentPort.postMessage({ id: message.id, rows: result.rows, affectedRows: result.affectedRows });
  }
  // One statement at a time, in the order sent; a failure (a constraint, a value that cannot be
  // cloned back) answers that query and the next one still runs.
  let queue = Promise.resolve();
  parentPort.on('message', (message) => {
    queue = queue.then(() => handle(message)).catch((err) => parentPort.postMessage({ id: message.id, error: fields(err) }));
  });
  parentPort.postMessage({ id: 0, rows: [] });
})().catch((err) => parentPort.postMessage({ id: 0, error: fields(err) }));
`;

/** An error raised in the engine, rebuilt here with its PostgreSQL fields (`code` above all). */
function toError(error: ErrorFields): Error {
  const { message, name, ...rest } = error;
  const err = Object.assign(new Error(String(message)), rest);
  err.name = String(name ?? 'Error');
  return err;
}

export class PGliteThread implements EmbeddedEngine {
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve: (reply: Reply) => void; reject: (err: Error) => void }>();
  #nextId = 1;
  #stopped: Error | undefined;
  #closing = false;
  /** Set once the engine answered its start-up: a failure before that is the start's error, not a stop. */
  #ready = false;

  private constructor(worker: Worker, onStopped: EmbeddedOptions['onStopped']) {
    this.#worker = worker;
    worker.on('message', (reply: Reply) => this.#settle(reply.id, reply));
    const stop = (reason: Error) => {
      if (this.#ready && !this.#stopped && !this.#closing) onStopped?.(reason);
      this.#stopped ??= reason;
      for (const waiter of this.#pending.values()) waiter.reject(this.#stopped);
      this.#pending.clear();
    };
    worker.on('error', (err) => stop(new Error(`the embedded database stopped: ${err.message}`)));
    worker.on('exit', (code) => stop(new Error(`the embedded database stopped (thread exit ${code})`)));
  }

  /** Starts the engine and resolves once it answers queries. */
  static async start(options: EmbeddedOptions): Promise<PGliteThread> {
    // The schema is written into SQL on the thread.
    assertSchemaName(options.schema);
    const modulePath = createRequire(import.meta.url).resolve('@electric-sql/pglite');
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      // The thread's own objects are few and short-lived (a batch's parameters, its answer); the
      // default young generation, sized for a server's main thread, would keep tens of MB resident.
      resourceLimits: { maxYoungGenerationSizeMb: 8 },
      workerData: { modulePath, dir: options.dir, extraStartParams: [...options.extraStartParams], schema: options.schema },
    });
    const thread = new PGliteThread(worker, options.onStopped);
    // Id 0 is the start-up report.
    const ready = await thread.#await(0);
    if ('error' in ready) {
      await worker.terminate();
      throw toError(ready.error);
    }
    thread.#ready = true;
    return thread;
  }

  get closed(): boolean {
    return this.#stopped !== undefined;
  }

  async query<R>(sql: string, params: readonly unknown[]): Promise<EmbeddedQueryResult<R>> {
    const id = this.#nextId++;
    const reply = this.#await(id);
    if (!this.#stopped) {
      try {
        const copy = params.length === 1 && params[0] instanceof CopyData ? params[0].text : undefined;
        this.#worker.postMessage(copy === undefined ? { id, op: 'query', sql, params } : { id, op: 'query', sql, copy });
      } catch (err) {
        // A parameter that cannot be cloned (a function, a symbol): this query fails, nothing waits for it.
        this.#settle(id, { id, error: { message: `a query parameter cannot be sent to the embedded database: ${(err as Error).message}`, name: 'TypeError' } });
      }
    }
    const answer = await reply;
    if ('error' in answer) throw toError(answer.error);
    return { rows: answer.rows as R[], affectedRows: answer.affectedRows };
  }

  /** Closes the database (its files are then consistent) and ends the thread. */
  async close(): Promise<void> {
    if (this.#stopped) return;
    // Held open until the thread has exited, not only until it has answered.
    this.#closing = true;
    this.#worker.ref();
    const id = this.#nextId++;
    const reply = this.#await(id);
    const exited = new Promise<void>((resolve) => this.#worker.once('exit', () => resolve()));
    this.#worker.postMessage({ id, op: 'close' });
    const answer = await reply;
    await exited;
    if ('error' in answer) throw toError(answer.error);
  }

  #settle(id: number, reply: Reply): void {
    const waiter = this.#pending.get(id);
    if (!waiter) return;
    this.#pending.delete(id);
    if (this.#pending.size === 0 && !this.#closing) this.#worker.unref();
    waiter.resolve(reply);
  }

  /**
   * The reply to query `id`. The thread holds the process open only while a reply is awaited:
   * an idle database never keeps a finished command from exiting, a pending query always does.
   */
  #await(id: number): Promise<Reply> {
    if (this.#stopped) return Promise.reject(this.#stopped);
    if (this.#pending.size === 0) this.#worker.ref();
    return new Promise<Reply>((resolve, reject) => this.#pending.set(id, { resolve, reject }));
  }
}
