/**
 * DNS-rebinding defence, before CORS and authentication.
 *
 * `hostCheck`: a page on an attacker's domain that re-resolves to Bulwark's address still
 * sends its own name in `Host`, so only the names the operator listed (and loopback names,
 * when asked) are served; anything else is answered 421 Misdirected Request (RFC 9110 §15.5.20).
 * The MCP Streamable HTTP transport asks servers to do this (MCP spec 2025-06-18,
 * "Security Warning": validate the Origin header, bind to localhost).
 *
 * Pure parsing (`parseHost`) is kept apart from the HTTP edge; it and `printable` are shared
 * with `originCheck` (./origin.ts).
 */
import type { MiddlewareHandler } from 'hono';
import type { AuditEventInput } from '../audit/log.js';
import { requestFacts, requestHeader } from '../http/client-info.js';
import type { BulwarkEnv } from '../http/context.js';
import { ApiError } from '../http/errors.js';

export interface HostCheckOptions {
  /**
   * Host names the public may use, from BULWARK_ALLOWED_HOSTS: `example.com` matches any
   * port, `example.com:8443` only that port, IPv6 literals in brackets (`[2001:db8::1]`).
   */
  allowedHosts: readonly string[];
  /** Also serve `localhost`, `127.x.y.z` and `[::1]` (a loopback bind, development). */
  allowLoopback: boolean;
  audit: (event: AuditEventInput) => void;
}

export interface ParsedHost {
  /** Lower-case; IPv6 literals keep their brackets; no trailing dot. */
  hostname: string;
  port: number | undefined;
}

const HOST_NAME = /^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*$/;
const IPV6_LITERAL = /^\[[0-9a-f:.]+\]$/;
const LOOPBACK_V4 = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
/** Long enough for any real host; the rest of a hostile value is not echoed. */
const MAX_ECHO = 255;

/** Parses a `Host` value (RFC 9110 §7.2: uri-host [":" port]); undefined when it is not one. */
export function parseHost(value: string): ParsedHost | undefined {
  const host = value.trim().toLowerCase();
  let hostname: string;
  let portText: string | undefined;
  if (host.startsWith('[')) {
    const close = host.indexOf(']');
    if (close < 0) return undefined;
    hostname = host.slice(0, close + 1);
    const rest = host.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) return undefined;
      portText = rest.slice(1);
    }
    const canonical = canonicalIpv6(hostname);
    if (!canonical) return undefined;
    hostname = canonical;
  } else {
    const colon = host.indexOf(':');
    if (colon >= 0) {
      if (host.indexOf(':', colon + 1) >= 0) return undefined; // an unbracketed IPv6 literal
      portText = host.slice(colon + 1);
      hostname = host.slice(0, colon);
    } else {
      hostname = host;
    }
    // "example.com." is the same name as "example.com" (RFC 1034 §3.1).
    if (hostname.endsWith('.')) hostname = hostname.slice(0, -1);
    if (!HOST_NAME.test(hostname) || hostname.length > 253) return undefined;
  }
  if (portText === undefined) return { hostname, port: undefined };
  if (!/^\d{1,5}$/.test(portText)) return undefined;
  const port = Number(portText);
  return port >= 1 && port <= 65_535 ? { hostname, port } : undefined;
}

/** `[0:0::1]` and `[::1]` are one address; the WHATWG URL parser gives the canonical form. */
function canonicalIpv6(bracketed: string): string | undefined {
  if (!IPV6_LITERAL.test(bracketed)) return undefined;
  try {
    return new URL(`http://${bracketed}/`).hostname;
  } catch {
    return undefined;
  }
}

export function isLoopbackHost(hostname: string): boolean {
  if (hostname === 'localhost' || hostname === '[::1]') return true;
  const v4 = LOOPBACK_V4.exec(hostname);
  return v4 !== null && v4.slice(1).every((octet) => Number(octet) <= 255);
}

function hostOfUrl(url: string): string | undefined {
  return URL.canParse(url) ? new URL(url).host || undefined : undefined;
}

export function hostCheck(options: HostCheckOptions): MiddlewareHandler<BulwarkEnv> {
  const { allowedHosts, allowLoopback, audit } = options;
  if (!Array.isArray(allowedHosts)) throw new Error('hostCheck: allowedHosts must be a list of host names');
  if (typeof allowLoopback !== 'boolean') throw new Error('hostCheck: allowLoopback must be a boolean');
  if (typeof audit !== 'function') throw new Error('hostCheck: audit is required');
  if (allowedHosts.length === 0 && !allowLoopback) {
    throw new Error('hostCheck: allowedHosts is empty and allowLoopback is false, so every request would be refused; set BULWARK_ALLOWED_HOSTS');
  }
  // Precomputed: names allowed on any port, and exact name:port pairs.
  const anyPort = new Set<string>();
  const exact = new Set<string>();
  for (const entry of allowedHosts) {
    const text = String(entry).trim();
    // A bare IPv6 address is accepted in configuration and bracketed here.
    const bareIpv6 = !text.startsWith('[') && text.indexOf(':') !== text.lastIndexOf(':');
    const parsed = parseHost(bareIpv6 ? `[${text}]` : text);
    if (!parsed) {
      throw new Error(`hostCheck: allowedHosts entry "${text}" is not a host name or host:port (no scheme, path or wildcard)`);
    }
    if (parsed.port === undefined) anyPort.add(parsed.hostname);
    else exact.add(`${parsed.hostname}:${parsed.port}`);
  }

  const allowed = (host: ParsedHost) =>
    anyPort.has(host.hostname) ||
    (host.port !== undefined && exact.has(`${host.hostname}:${host.port}`)) ||
    // Clients leave the scheme's default port out of Host (RFC 9110 §7.2).
    (host.port === undefined && (exact.has(`${host.hostname}:443`) || exact.has(`${host.hostname}:80`))) ||
    (allowLoopback && isLoopbackHost(host.hostname));

  return async function hostCheckMiddleware(c, next) {
    // On Node the URL is built from the Host header; in-process requests (tests) carry their host only in the URL.
    const value = requestHeader(c, 'host') ?? hostOfUrl(c.req.url);
    const parsed = value === undefined ? undefined : parseHost(value);
    if (parsed && allowed(parsed)) return next();

    const shown = value === undefined ? '' : printable(value);
    audit({
      type: 'http.host_refused',
      outcome: 'denied',
      ...requestFacts(c),
      details: { host: value === undefined ? null : shown },
    });
    throw new ApiError(
      'host_not_allowed',
      value === undefined
        ? 'The request has no Host header; Bulwark answers only for the host names in BULWARK_ALLOWED_HOSTS.'
        : `Bulwark does not answer for host "${shown}"; add it to BULWARK_ALLOWED_HOSTS if it is this server.`,
    );
  };
}

/** A hostile header value, cut short and reduced to visible ASCII before it is echoed or stored. */
export function printable(value: string): string {
  const cut = value.length > MAX_ECHO ? `${value.slice(0, MAX_ECHO)}…` : value;
  return cut.replace(/[^\x20-\x7e…]/g, '?');
}
