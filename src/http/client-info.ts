/**
 * Facts about the caller that middleware and audit events need. Node-specific: reads the socket
 * through @hono/node-server's bindings. Trusted-proxy handling of X-Forwarded-For belongs to the
 * IP allow-list layer; until it runs, the socket address is the only address believed.
 */
import type { Context } from 'hono';

interface NodeBindings {
  incoming?: { socket?: { remoteAddress?: string } };
}

export function clientIp(c: Context): string | undefined {
  const address = (c.env as NodeBindings | undefined)?.incoming?.socket?.remoteAddress;
  return address?.replace(/^::ffff:/, '');
}

export function requestPath(c: Context): string {
  return new URL(c.req.url).pathname;
}
