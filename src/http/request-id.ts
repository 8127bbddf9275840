/**
 * Gives every request an id, echoed in `X-Request-Id` and in every error envelope and audit
 * event. An inbound id is kept only when it is short and plain (≤ 64 of [A-Za-z0-9_-]), so a
 * client cannot inject log lines or oversized values through it.
 */
import { randomUUID } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import { nodeResponse } from '../security/headers.js';
import { requestHeader } from './client-info.js';
import type { BulwarkEnv } from './context.js';

const ACCEPTABLE = /^[A-Za-z0-9_-]{1,64}$/;

export interface RequestIdOptions {
  header?: string;
  generate?: () => string;
}

export function requestId(options: RequestIdOptions = {}): MiddlewareHandler<BulwarkEnv> {
  const { header = 'X-Request-Id', generate = () => `req_${randomUUID().replaceAll('-', '')}` } = options;
  const lookup = header.toLowerCase();
  return async function requestIdMiddleware(c, next) {
    const inbound = requestHeader(c, lookup);
    const id = inbound && ACCEPTABLE.test(inbound) ? inbound : generate();
    c.set('requestId', id);
    // On Node, onto the socket's response: Node merges it into whatever writes the head, the
    // proxy's fast path included, and no web Headers is built for it. Elsewhere, onto c.res.
    const outgoing = nodeResponse(c);
    if (outgoing) outgoing.setHeader(header, id);
    else c.header(header, id);
    await next();
  };
}
