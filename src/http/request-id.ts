/**
 * Gives every request an id, echoed in `X-Request-Id` and in every error envelope and audit
 * event. An inbound id is kept only when it is short and plain (≤ 64 of [A-Za-z0-9_-]), so a
 * client cannot inject log lines or oversized values through it.
 */
import { randomUUID } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import type { BulwarkEnv } from './context.js';

const ACCEPTABLE = /^[A-Za-z0-9_-]{1,64}$/;

export interface RequestIdOptions {
  header?: string;
  generate?: () => string;
}

export function requestId(options: RequestIdOptions = {}): MiddlewareHandler<BulwarkEnv> {
  const { header = 'X-Request-Id', generate = () => `req_${randomUUID().replaceAll('-', '')}` } = options;
  return async function requestIdMiddleware(c, next) {
    const inbound = c.req.header(header);
    const id = inbound && ACCEPTABLE.test(inbound) ? inbound : generate();
    c.set('requestId', id);
    c.header(header, id);
    await next();
  };
}
