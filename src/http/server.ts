/**
 * Starts and stops a Bulwark server: checks the data dir is free, opens and migrates the
 * database, builds the runtime, binds both listeners, announces itself to the CLI through the
 * data dir, audits the start, and on shutdown stops accepting, drains queued writes and
 * closes the database. Node-specific.
 */
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
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
import { Metrics } from '../monitor/metrics.js';
import { type RateLimiterRuntime, createRateLimiter } from '../security/rate-limiter.js';

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
      onEngineStopped: (err) => logger.error({ error: err.message }, 'the embedded database stopped; every query fails until Bulwark is restarted (queued writes are retried, then spooled)'),
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

  const metrics = new Metrics();
  const rateLimiter = await sharedRateLimiter(config, logger, metrics);
  let runtime: Runtime;
  try {
    runtime = createRuntime({ config, logger, database, metrics, rateLimiter, ...(options.flushIntervalMs ? { flushIntervalMs: options.flushIntervalMs } : {}) });
  } catch (err) {
    // Nothing may keep the process alive after a refused start: no Redis reconnection, no open database.
    await rateLimiter.close();
    await database.close();
    throw new StartupError(`Cannot start: ${(err as Error).message}`, EXIT_CONFIG);
  }
  try {
    runtime.replaySpools();
    // Sessions opened with the admin token, admin key or bootstrap key do not outlive the process
    // that held them: those credentials are replaced or re-read at every start.
    await Promise.all(['admin-token', 'admin-key', 'bootstrap'].map((id) => runtime.sessions.destroyForKey(id)));
    await ensureDefaultTenant(runtime);
    runtime.fileCredentials.start();
    // Not awaited: an upstream MCP server that does not answer must not hold up the start; it joins the lists when it connects.
    void runtime.startUpstreams();
  } catch (err) {
    try {
      await runtime.drain(1_000);
      await runtime.stop();
    } finally {
      await database.close();
    }
    throw new StartupError(`Cannot prepare the data dir and database: ${(err as Error).message}`, EXIT_UNAVAILABLE);
  }

  const servers: Server[] = [];
  let publicUrl: string;
  let adminUrl: string;
  try {
    const tls = config.tls.cert && config.tls.key ? { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) } : undefined;
    const adminTls = config.tls.admin ? tls : undefined;
    const publicServer = await listen(createPublicApp(runtime), config.server.host, config.server.port, 'BULWARK_PORT', tls);
    servers.push(publicServer);
    const adminServer = await listen(createAdminApp(runtime), config.admin.host, config.admin.port, 'BULWARK_ADMIN_PORT', adminTls);
    servers.push(adminServer);
    publicUrl = urlOf(publicServer, config.server.host, Boolean(tls));
    adminUrl = urlOf(adminServer, config.admin.host, Boolean(adminTls));
  } catch (err) {
    await Promise.all(servers.map(closeServer));
    await runtime.drain(1_000);
    await runtime.stop();
    await database.close();
    throw err;
  }

  // Counted before the server is announced, so that the first-key hint is printed together with
  // the "listening" line rather than after it, when a reader (or a script) has moved on.
  const keyCount = await runtime.keys.count();
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
  if (keyCount === 0 && !config.bootstrapKey.key) {
    say('No API keys yet. Create the first one (shown once; keep it safe):');
    say(`  npm run --silent bulwark -- keys create --name first-key --scopes admin --tenant ${DEFAULT_TENANT}`);
  }

  // Retention: once at start, then hourly.
  const runPurge = () => {
    purge(database.db, { bodyDays: config.storage.retentionDays, rowDays: config.storage.usageRetentionDays }).then(
      (result) => {
        if (result.bodiesCleared || result.rowsDeleted || result.conversationsDeleted) {
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
  const sessionPurgeTimer = setInterval(() => {
    runtime.sessions.purgeExpired().catch((err: unknown) => logger.warn({ error: (err as Error).message }, 'expired sessions could not be purged; will try again'));
  }, 600_000);
  sessionPurgeTimer.unref();
  // MCP sessions: idle ones end within a minute of their limit; old event history goes too.
  const mcpPurgeTimer = setInterval(() => {
    runtime.mcp.purge().catch((err: unknown) => logger.warn({ error: (err as Error).message }, 'MCP sessions could not be purged; will try again'));
    runtime.eventTickets.purgeExpired().catch((err: unknown) => logger.warn({ error: (err as Error).message }, 'expired event tickets could not be purged; will try again'));
  }, 60_000);
  mcpPurgeTimer.unref();

  let closing: Promise<void> | undefined;
  return {
    publicUrl,
    adminUrl,
    runtime,
    close() {
      closing ??= (async () => {
        clearInterval(purgeTimer);
        clearInterval(sessionPurgeTimer);
        clearInterval(mcpPurgeTimer);
        // Open MCP streams would hold the listeners open; their sessions stay in the store for the next start.
        await runtime.mcp.close();
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

/**
 * The rate limiter: Redis when REDIS_URL is set, so every instance counts together. When Redis
 * cannot answer, each call is counted in this process instead — limits keep holding, per
 * instance — which is logged once per outage and counted in a metric.
 */
async function sharedRateLimiter(config: Config, logger: Logger, metrics: Metrics): Promise<RateLimiterRuntime> {
  let degraded = false;
  return createRateLimiter({
    redisUrl: config.redis.url,
    // Instances share counters when they share a database schema: the same deployment.
    prefix: `bulwark:rl:${config.database.schema}`,
    onFallback: (err) => {
      metrics.inc('bulwark_rate_limit_fallbacks_total', 'Rate-limit decisions made in process because Redis could not answer.', {});
      if (degraded) return;
      degraded = true;
      logger.warn({ error: (err as Error).message }, 'Redis is unreachable: rate limits are counted per instance until it is back');
    },
    onRecover: () => {
      degraded = false;
      logger.info('Redis is back: rate limits are shared again');
    },
  });
}

/**
 * TLS 1.2 at least; for 1.2, only forward-secret AEAD suites (Mozilla's "intermediate" list).
 * TLS 1.3's suites are all modern and left to OpenSSL's defaults.
 */
const TLS12_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

function listen(app: Hono<BulwarkEnv>, host: string, port: number, setting: string, tls?: { cert: Buffer; key: Buffer }): Promise<Server> {
  const server = createAdaptorServer({
    fetch: app.fetch,
    ...(tls
      ? { createServer: createHttpsServer, serverOptions: { cert: tls.cert, key: tls.key, minVersion: 'TLSv1.2' as const, ciphers: TLS12_CIPHERS, honorCipherOrder: true } }
      : {}),
  }) as Server;
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

function urlOf(server: Server, host: string, tls: boolean): string {
  const { port } = server.address() as AddressInfo;
  const shown = host.includes(':') ? `[${host}]` : host;
  return `${tls ? 'https' : 'http'}://${shown}:${port}`;
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections?.();
    // Requests still running after 10 s are cut so shutdown cannot hang forever.
    setTimeout(() => server.closeAllConnections?.(), 10_000).unref();
  });
}
