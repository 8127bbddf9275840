/**
 * Starts and stops a Bulwark server: checks the data dir is free, opens and migrates the
 * database, builds the runtime, binds both listeners, announces itself to the CLI through the
 * data dir, audits the start, and on shutdown stops accepting, drains queued writes and
 * closes the database. Node-specific.
 */
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { createAdaptorServer } from '@hono/node-server';
import type { Hono } from 'hono';
import { DEFAULT_TENANT } from '../auth/principal.js';
import type { Config } from '../config/load.js';
import { type Database, openDatabase } from '../store/database.js';
import { prepareDataDir, publishServer, runningServer, unpublishServer } from '../store/data-dir.js';
import { migrateToLatest, pendingMigrations } from '../store/migrations.js';
import { purge } from '../proxy/retention.js';
import { VERSION } from '../version.js';
import { createAdminApp, createPublicApp } from './app.js';
import type { BulwarkEnv } from './context.js';
import type { Logger } from './logger.js';
import { type Runtime, createRuntime, ensureDefaultTenant } from './runtime.js';

/** A start-up failure with the process exit code it deserves (sysexits.h). */
export class StartupError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number) {
    super(message);
    this.name = 'StartupError';
    this.exitCode = exitCode;
  }
}

export const EXIT_UNAVAILABLE = 69;
export const EXIT_CONFIG = 78;

export interface RunningServer {
  readonly publicUrl: string;
  readonly adminUrl: string;
  readonly runtime: Runtime;
  close(): Promise<void>;
}

export interface StartOptions {
  logger: Logger;
  /** Where human-readable start-up lines go (the CLI passes stderr). */
  say?: (line: string) => void;
  flushIntervalMs?: number;
}

export async function startServer(config: Config, options: StartOptions): Promise<RunningServer> {
  const { logger, say = () => {} } = options;
  prepareDataDir(config.dataDir);
  const usesEmbedded = !config.database.url;
  const other = runningServer(config.dataDir);
  if (other && usesEmbedded) {
    throw new StartupError(`Another Bulwark server (pid ${other.pid}) is using ${config.dataDir}; stop it or set BULWARK_DATA_DIR.`, EXIT_UNAVAILABLE);
  }

  let database: Database;
  try {
    database = await openDatabase({
      url: config.database.url,
      dataDir: config.dataDir,
      schema: config.database.schema,
      onPoolError: (err) => logger.warn({ error: err.message }, 'database connection lost'),
    });
    await database.ping();
  } catch (err) {
    throw new StartupError(`Cannot open the database: ${(err as Error).message}`, EXIT_UNAVAILABLE);
  }

  try {
    if (config.mode === 'production') {
      const pending = await pendingMigrations(database);
      if (pending.length) {
        throw new StartupError(`The database needs migrations (${pending.join(', ')}); run "bulwark migrate" first.`, EXIT_CONFIG);
      }
    } else {
      const { applied } = await migrateToLatest(database);
      if (applied.length) logger.info({ applied }, 'database migrated');
    }
  } catch (err) {
    await database.close();
    if (err instanceof StartupError) throw err;
    throw new StartupError(`Cannot migrate the database: ${(err as Error).message}`, EXIT_UNAVAILABLE);
  }

  const runtime = createRuntime({ config, logger, database, ...(options.flushIntervalMs ? { flushIntervalMs: options.flushIntervalMs } : {}) });
  runtime.replaySpools();
  runtime.fileCredentials.start();
  await ensureDefaultTenant(runtime);

  const servers: Server[] = [];
  let publicUrl: string;
  let adminUrl: string;
  try {
    const publicServer = await listen(createPublicApp(runtime), config.server.host, config.server.port, 'BULWARK_PORT');
    servers.push(publicServer);
    const adminServer = await listen(createAdminApp(runtime), config.admin.host, config.admin.port, 'BULWARK_ADMIN_PORT');
    servers.push(adminServer);
    publicUrl = urlOf(publicServer, config.server.host);
    adminUrl = urlOf(adminServer, config.admin.host);
  } catch (err) {
    await Promise.all(servers.map(closeServer));
    await runtime.drain(1_000);
    await runtime.stop();
    await database.close();
    throw err;
  }

  publishServer(config.dataDir, { pid: process.pid, adminUrl, publicUrl, database: database.kind, startedAt: runtime.startedAt.toISOString() }, runtime.adminToken);
  runtime.audit({
    type: 'server.started',
    outcome: 'info',
    details: {
      version: VERSION,
      mode: config.mode,
      authEnabled: config.auth.enabled,
      public: publicUrl,
      admin: adminUrl,
      database: database.kind,
      bootstrapKey: Boolean(config.bootstrapKey.key),
    },
  });
  logger.info({ version: VERSION, mode: config.mode, public: publicUrl, admin: adminUrl, database: database.location }, 'bulwark started');
  say(`Bulwark ${VERSION} (${config.mode}) listening on ${publicUrl} (public) and ${adminUrl} (admin); database: ${database.location}`);
  if (!config.auth.enabled) {
    const warning = 'WARNING: authentication is OFF (BULWARK_AUTH=off). Anyone who can reach the public listener can use it. Development on loopback only.';
    logger.warn(warning);
    say(warning);
  }
  const keyCount = await runtime.keys.count();
  if (keyCount === 0 && !config.bootstrapKey.key) {
    say('No API keys yet. Create the first one (shown once; keep it safe):');
    say(`  npm run --silent bulwark -- keys create --name first-key --scopes admin --tenant ${DEFAULT_TENANT}`);
  }

  // Retention: once at start, then hourly.
  const runPurge = () => {
    purge(database.db, { bodyDays: config.storage.retentionDays, rowDays: config.storage.usageRetentionDays }).then(
      (result) => {
        if (result.bodiesCleared || result.rowsDeleted) {
          runtime.audit({ type: 'retention.purged', outcome: 'success', details: { ...result, via: 'schedule' } });
          logger.info(result, 'retention purge');
        }
      },
      (err: unknown) => logger.warn({ error: (err as Error).message }, 'retention purge failed; will try again in an hour'),
    );
  };
  runPurge();
  const purgeTimer = setInterval(runPurge, 3_600_000);
  purgeTimer.unref();

  let closing: Promise<void> | undefined;
  return {
    publicUrl,
    adminUrl,
    runtime,
    close() {
      closing ??= (async () => {
        clearInterval(purgeTimer);
        await Promise.all(servers.map(closeServer));
        runtime.audit({ type: 'server.stopped', outcome: 'info', details: { version: VERSION } });
        const unwritten = await runtime.drain(5_000);
        if (unwritten) logger.error({ unwritten }, 'some writes could not reach the database; they are in the spool for the next start');
        await runtime.stop();
        unpublishServer(config.dataDir);
        await database.close();
        logger.info('bulwark stopped');
      })();
      return closing;
    },
  };
}

function listen(app: Hono<BulwarkEnv>, host: string, port: number, setting: string): Promise<Server> {
  const server = createAdaptorServer({ fetch: app.fetch }) as Server;
  // Slow-client protection: Node's defaults, made explicit.
  server.headersTimeout = 60_000;
  server.requestTimeout = 300_000;
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'is already in use' : err.code === 'EACCES' ? 'needs privileges' : `failed (${err.code ?? err.message})`;
      reject(new StartupError(`Cannot listen on ${host}:${port}: the port ${why}; choose another with ${setting}.`, EXIT_UNAVAILABLE));
    });
    server.listen(port, host, () => resolve(server));
  });
}

function urlOf(server: Server, host: string): string {
  const { port } = server.address() as AddressInfo;
  const shown = host.includes(':') ? `[${host}]` : host;
  return `http://${shown}:${port}`;
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections?.();
    // Requests still running after 10 s are cut so shutdown cannot hang forever.
    setTimeout(() => server.closeAllConnections?.(), 10_000).unref();
  });
}
