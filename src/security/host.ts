/**
 * DNS-rebinding and cross-site request defences, before CORS and authentication.
 *
 * `hostCheck`: a page on an attacker's domain that re-resolves to Bulwark's address still
 * sends its own name in `Host`, so only the names the operator listed (and loopback names,
 * when asked) are served; anything else is answered 421 Misdirected Request (RFC 9110 §15.5.20).
 * The MCP Streamable HTTP transport asks servers to do this (MCP spec 2025-06-18,
 * "Security Warning": validate the Origin header, bind to localhost).
 *
 * `originCheck`: a browser names the page's origin in `Origin` (RFC 6454 §7, Fetch §3.2). A
 * request from a foreign or opaque (`null`) origin is refused with 403 when it could change
 * state or carries a credential; requests without `Origin` (CLIs, SDKs) are not browsers'
 * cross-site requests and pass. Preflights (`OPTIONS`) are CORS's to answer.
 *
 * Pure parsing (`parseHost`, `normalizeOrigin`) is kept apart from the HTTP edge.
 */
import type { MiddlewareHandler } from 'hono';
import type { AuditEventInput } from '../audit/log.js';
import { requestFacts } from '../http/client-info.js';
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
    const value = c.req.header('host') ?? hostOfUrl(c.req.url);
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

export interface OriginCheckOptions {
  /** Browser origins allowed to call Bulwark (`https://app.example.com`), as for CORS. */
  allowedOrigins: readonly string[];
  audit: (event: AuditEventInput) => void;
}

/**
 * The ASCII serialisation of an origin (RFC 6454 §6.2): `scheme://host[:port]`, lower case,
 * default port dropped. Undefined for anything else, including `null` and a URL with a path.
 */
export function normalizeOrigin(value: string): string | undefined {
  const text = value.trim();
  if (!/^https?:\/\/[^/?#\s]+\/?$/i.test(text)) return undefined;
  try {
    const url = new URL(text);
    if (url.username || url.password) return undefined;
    return url.origin;
  } catch {
    return undefined;
  }
}

/** Methods that must not change state (RFC 9110 §9.2.1); OPTIONS is CORS's. */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

export function originCheck(options: OriginCheckOptions): MiddlewareHandler<BulwarkEnv> {
  const { allowedOrigins, audit } = options;
  if (!Array.isArray(allowedOrigins)) throw new Error('originCheck: allowedOrigins must be a list of origins');
  if (typeof audit !== 'function') throw new Error('originCheck: audit is required');
  const allowed = new Set<string>();
  for (const entry of allowedOrigins) {
    const origin = normalizeOrigin(String(entry));
    if (!origin) throw new Error(`originCheck: allowedOrigins entry "${String(entry)}" is not an origin like https://app.example.com`);
    allowed.add(origin);
  }

  return async function originCheckMiddleware(c, next) {
    const origin = c.req.header('origin');
    if (origin === undefined || c.req.method === 'OPTIONS') return next();
    const credentialed = c.req.header('authorization') !== undefined || c.req.header('x-api-key') !== undefined || c.req.header('cookie') !== undefined;
    if (SAFE_METHODS.has(c.req.method) && !credentialed) return next();

    const normalized = normalizeOrigin(origin);
    if (normalized && (allowed.has(normalized) || sameOrigin(normalized, c.req.header('host')))) return next();

    const shown = printable(origin);
    audit({
      type: 'http.origin_refused',
      outcome: 'denied',
      ...requestFacts(c),
      details: { origin: shown, reason: credentialed ? 'credentialed' : 'state_changing' },
    });
    throw new ApiError('origin_not_allowed', `Requests from origin "${shown}" are not allowed; add it to BULWARK_CORS_ORIGINS if it is yours.`);
  };
}

/** Whether the origin names the host the request was sent to (its scheme is not compared). */
function sameOrigin(origin: string, hostHeader: string | undefined): boolean {
  if (hostHeader === undefined) return false;
  const host = parseHost(hostHeader);
  if (!host) return false;
  const url = new URL(origin);
  const defaultPort = url.protocol === 'https:' ? 443 : 80;
  const originPort = url.port === '' ? defaultPort : Number(url.port);
  const hostPort = host.port ?? defaultPort;
  return url.hostname === host.hostname && originPort === hostPort;
}

/** A hostile header value, cut short and reduced to visible ASCII before it is echoed or stored. */
function printable(value: string): string {
  const cut = value.length > MAX_ECHO ? `${value.slice(0, MAX_ECHO)}…` : value;
  return cut.replace(/[^\x20-\x7e…]/g, '?');
}
