/**
 * One log line per request: method, path (no query string, where secrets like to hide),
 * status, duration, request id, principal. The logger masks anything secret-shaped that
 * slips through. With authentication off, every line carries the warning.
 */
import type { Context, MiddlewareHandler } from 'hono';
import { clientIp, requestPath } from './client-info.js';
import type { BulwarkEnv } from './context.js';
import type { Logger } from './logger.js';

export interface AccessLogOptions {
  logger: Logger;
  listener: 'public' | 'admin';
  /** Add the auth-off warning to every line. */
  authDisabled?: boolean;
}

export function accessLog(options: AccessLogOptions): MiddlewareHandler<BulwarkEnv> {
  const { logger, listener, authDisabled = false } = options;
  if (!logger) throw new Error('accessLog: logger is required');
  return async function accessLogMiddleware(c, next) {
    const started = performance.now();
    try {
      await next();
    } finally {
      const status = c.get('sentStatus') ?? c.res.status;
      const level = status >= 500 ? 'error' : 'info';
      if (logger.isLevelEnabled(level)) writeLine(c, level, status, started);
    }
  };

  function writeLine(c: Context<BulwarkEnv>, level: 'error' | 'info', status: number, started: number): void {
    const principal = c.get('principal');
    const line = {
      requestId: c.get('requestId'),
      listener,
      method: c.req.method,
      path: requestPath(c),
      status,
      ms: Math.round((performance.now() - started) * 10) / 10,
      ip: clientIp(c),
      ...(principal ? { tenant: principal.tenant, keyId: principal.keyId } : {}),
      ...(authDisabled ? { warning: 'AUTHENTICATION IS OFF (BULWARK_AUTH=off)' } : {}),
    };
    logger[level](line, level === 'error' ? 'request failed' : 'request');
  }
}
