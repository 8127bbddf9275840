/**
 * Who the client is, by IP address, behind trusted reverse proxies. `resolveClientIp` is the
 * pure rule; `clientAddress` is the middleware that applies it once per request and leaves
 * the answer in the `clientIp` context variable for the allow-list, rate limits and audit.
 *
 * The rule (the one RFC 7239 §7.1 and every careful proxy library follow): start from the
 * socket's peer. Only if that peer is a trusted proxy, walk the forwarding header from the
 * right — each proxy appends the address it received from — skipping trusted hops, and take
 * the right-most address that is not a trusted proxy. Entries to its left were written by the
 * client and prove nothing. A hop that does not parse as an address (RFC 7239 `unknown`, an
 * obfuscated node, garbage) stops the walk at the last address that did: it is never believed.
 *
 * Headers: RFC 7239 `Forwarded: for=…` and the de-facto `X-Forwarded-For`. The middleware
 * reads one of them (X-Forwarded-For by default): a proxy that only appends to one passes a
 * client's own copy of the other through untouched, so believing both would believe the client.
 */
import type { MiddlewareHandler } from 'hono';
import { requestHeader, socketAddress } from '../http/client-info.js';
import { type CidrList, matchesAny, normalizeIp, parseCidrList } from './cidr.js';

export interface ClientIpVariables {
  /** The client's address, canonical (IPv4-mapped IPv6 as IPv4); undefined without a socket. */
  clientIp: string | undefined;
}

export interface ClientIpEnv {
  Variables: ClientIpVariables;
}

/** Which header carries the chain: `forwarded-first` reads X-Forwarded-For only without Forwarded. */
export type ForwardedSource = 'forwarded-first' | 'forwarded' | 'x-forwarded-for';

export interface ForwardingHeaders {
  forwarded?: string | undefined;
  xForwardedFor?: string | undefined;
}

const IPV4_WITH_PORT = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/;
/** RFC 7239 §6: node-port = port / obfport. */
const PORT = /^(?:\d{1,5}|_[A-Za-z0-9._-]+)$/;

/**
 * One hop's address: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`,
 * `[2001:db8::1]:4711`. Anything else — `unknown`, `_hidden`, a hostname — is undefined.
 */
export function parseHop(value: string): string | undefined {
  const text = value.trim();
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close === -1) return undefined;
    const rest = text.slice(close + 1);
    if (rest !== '' && !(rest.startsWith(':') && PORT.test(rest.slice(1)))) return undefined;
    const inside = text.slice(1, close);
    return inside.includes(':') ? normalizeIp(inside) : undefined;
  }
  const withPort = IPV4_WITH_PORT.exec(text);
  if (withPort) return normalizeIp(withPort[1] as string);
  return normalizeIp(text);
}

/** Splits on `separator` outside double-quoted strings (RFC 7230 §3.2.6 quoted-pair aware). */
function splitOutsideQuotes(text: string, separator: string): string[] {
  const parts: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '\\') i++;
      else if (ch === '"') quoted = false;
    } else if (ch === '"') {
      quoted = true;
    } else if (ch === separator) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}

/** A parameter value: a token, or a quoted-string unquoted; undefined when malformed. */
function unquote(raw: string): string | undefined {
  const value = raw.trim();
  if (value.startsWith('"')) {
    if (value.length < 2 || !value.endsWith('"')) return undefined;
    const inner = value.slice(1, -1);
    let out = '';
    for (let i = 0; i < inner.length; i++) {
      const ch = inner[i] as string;
      if (ch === '\\') {
        if (i + 1 >= inner.length) return undefined;
        out += inner[++i];
      } else if (ch === '"') {
        return undefined;
      } else {
        out += ch;
      }
    }
    return out;
  }
  return value && !/[\s"]/.test(value) ? value : undefined;
}

/**
 * The `for=` address of each element of a `Forwarded` header (RFC 7239 §4), left to right;
 * undefined for an element that is malformed, has no `for`, has it twice (§4: a parameter
 * MUST NOT occur more than once per element), or names no address.
 */
export function forwardedForChain(header: string): Array<string | undefined> {
  return splitOutsideQuotes(header, ',').map((element) => {
    let node: string | undefined;
    let seen = false;
    for (const pair of splitOutsideQuotes(element, ';')) {
      if (pair.trim() === '') continue;
      const eq = pair.indexOf('=');
      if (eq === -1) return undefined;
      if (pair.slice(0, eq).trim().toLowerCase() !== 'for') continue;
      if (seen) return undefined;
      seen = true;
      const value = unquote(pair.slice(eq + 1));
      node = value === undefined ? undefined : parseHop(value);
    }
    return node;
  });
}

/** The addresses of an `X-Forwarded-For` header, left to right; undefined for a malformed entry. */
export function xForwardedForChain(header: string): Array<string | undefined> {
  return header.split(',').map(parseHop);
}

function chainFrom(headers: ForwardingHeaders, source: ForwardedSource): Array<string | undefined> {
  const forwarded = headers.forwarded?.trim() ? headers.forwarded : undefined;
  const xff = headers.xForwardedFor?.trim() ? headers.xForwardedFor : undefined;
  if (source === 'forwarded' || (source === 'forwarded-first' && forwarded !== undefined)) {
    return forwarded === undefined ? [] : forwardedForChain(forwarded);
  }
  return xff === undefined ? [] : xForwardedForChain(xff);
}

/**
 * The client's address: the socket peer unless it is a trusted proxy, else the right-most
 * untrusted hop of the forwarding chain. Undefined only when there is no usable socket address.
 */
export function resolveClientIp(
  socketIp: string | undefined,
  headers: ForwardingHeaders,
  trusted: CidrList,
  source: ForwardedSource = 'forwarded-first',
): string | undefined {
  const peer = socketIp === undefined ? undefined : normalizeIp(socketIp);
  if (peer === undefined) return undefined;
  if (!matchesAny(trusted, peer)) return peer;
  const chain = chainFrom(headers, source);
  let current = peer;
  for (let i = chain.length - 1; i >= 0; i--) {
    const hop = chain[i];
    if (hop === undefined) return current;
    current = hop;
    if (!matchesAny(trusted, hop)) return hop;
  }
  // Every hop was a trusted proxy: the left-most is as far as the chain can be followed.
  return current;
}

export interface ClientAddressOptions {
  /** CIDRs or addresses of the reverse proxies whose forwarding headers are believed. Default: none. */
  trustedProxies?: readonly string[];
  source?: ForwardedSource;
}

const SOURCES: readonly ForwardedSource[] = ['forwarded-first', 'forwarded', 'x-forwarded-for'];

/** Sets `clientIp`. With no trusted proxy (the default) forwarding headers are never read. */
export function clientAddress(options: ClientAddressOptions = {}): MiddlewareHandler<ClientIpEnv> {
  const { trustedProxies = [], source = 'x-forwarded-for' } = options;
  const trusted = parseCidrList(trustedProxies, 'trustedProxies');
  if (!SOURCES.includes(source)) throw new Error(`clientAddress: source must be one of ${SOURCES.join(', ')}, not ${JSON.stringify(source)}`);

  if (trusted.entries.length === 0) {
    return async function clientAddressMiddleware(c, next) {
      const peer = socketAddress(c);
      c.set('clientIp', peer === undefined ? undefined : normalizeIp(peer));
      await next();
    };
  }
  return async function clientAddressMiddleware(c, next) {
    const headers = { forwarded: requestHeader(c, 'forwarded'), xForwardedFor: requestHeader(c, 'x-forwarded-for') };
    c.set('clientIp', resolveClientIp(socketAddress(c), headers, trusted, source));
    await next();
  };
}
