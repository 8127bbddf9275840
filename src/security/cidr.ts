/**
 * CIDR lists (RFC 4632 for IPv4, RFC 4291 §2.3 for IPv6 prefixes) parsed once into a matcher,
 * and the one normalisation of an IP address every security module shares. Pure: no HTTP.
 *
 * An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, RFC 4291 §2.5.5.2), which a dual-stack
 * socket reports for an IPv4 peer, is the IPv4 address: it matches IPv4 entries and is written
 * as IPv4 in audit events. A bare address in a list means one host (/32 or /128).
 */
import { BlockList, isIP } from 'node:net';

/** A parsed list; `entries` is the normalised text of each entry, for printing and audit. */
export interface CidrList {
  readonly entries: readonly string[];
  readonly blockList: BlockList;
}

export type IpFamily = 'ipv4' | 'ipv6';

const MAPPED_IPV4 = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/;
const PREFIX = /^\d{1,3}$/;

/**
 * The canonical text of an IP address, or `undefined` when `value` is not one. IPv6 is
 * lower-cased and compressed (RFC 5952); an IPv4-mapped IPv6 address becomes IPv4; a zone id
 * (`fe80::1%eth0`) is dropped, since it names an interface, not a peer.
 */
export function normalizeIp(value: string): string | undefined {
  const family = isIP(value);
  if (family === 4) return value;
  if (family !== 6) return undefined;
  const zone = value.indexOf('%');
  const address = zone === -1 ? value : value.slice(0, zone);
  if (isIP(address) !== 6) return undefined;
  // WHATWG URL serialises IPv6 hosts the RFC 5952 way, mapped IPv4 included (as hex).
  let canonical: string;
  try {
    canonical = new URL(`http://[${address}]/`).hostname.slice(1, -1);
  } catch {
    return undefined; // never seen: isIP and the URL parser read RFC 4291 alike
  }
  const mapped = MAPPED_IPV4.exec(canonical);
  if (mapped) {
    const high = parseInt(mapped[1] as string, 16);
    const low = parseInt(mapped[2] as string, 16);
    return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`;
  }
  return canonical;
}

export function ipFamily(ip: string): IpFamily | undefined {
  const family = isIP(ip);
  return family === 4 ? 'ipv4' : family === 6 ? 'ipv6' : undefined;
}

type ParsedEntry = { address: string; prefix: number; family: IpFamily };

/** One entry, or the reason it is not one. */
function parseEntry(raw: string): ParsedEntry | string {
  const value = raw.trim();
  if (!value) return 'an empty entry';
  const slash = value.indexOf('/');
  const addressText = slash === -1 ? value : value.slice(0, slash);
  if (addressText.includes('%')) return 'a zone id is not allowed';
  const original = ipFamily(addressText);
  const address = normalizeIp(addressText);
  if (!original || !address) return 'not an IPv4 or IPv6 address';
  const family = ipFamily(address) as IpFamily;
  const max = original === 'ipv4' ? 32 : 128;
  let prefix = max;
  if (slash !== -1) {
    const prefixText = value.slice(slash + 1);
    if (!PREFIX.test(prefixText) || Number(prefixText) > max) return `the prefix length must be 0–${max}`;
    prefix = Number(prefixText);
  }
  if (original === 'ipv6' && family === 'ipv4') {
    // `::ffff:10.0.0.0/104` is `10.0.0.0/8`. A shorter prefix reaches past the mapped range
    // (::ffff:0:0/96) and cannot be written as IPv4: refuse it rather than guess.
    if (prefix < 96) return 'an IPv4-mapped prefix must be at least /96';
    prefix -= 96;
  }
  return { address, prefix, family };
}

function build(values: readonly unknown[], reject: (raw: unknown, reason: string) => void): CidrList {
  const blockList = new BlockList();
  const entries: string[] = [];
  for (const raw of values) {
    const parsed = typeof raw === 'string' ? parseEntry(raw) : 'not a string';
    if (typeof parsed === 'string') {
      reject(raw, parsed);
      continue;
    }
    blockList.addSubnet(parsed.address, parsed.prefix, parsed.family);
    entries.push(`${parsed.address}/${parsed.prefix}`);
  }
  return { entries: Object.freeze(entries), blockList };
}

/**
 * Parses a list of CIDRs and bare addresses. Throws, naming `optionName` and the entry, on
 * anything that is not one: a list that silently drops an entry lets in what it was meant to
 * keep out (or keeps out the operator).
 */
export function parseCidrList(values: readonly string[], optionName: string): CidrList {
  if (!Array.isArray(values)) throw new Error(`${optionName} must be a list of CIDRs or IP addresses`);
  return build(values, (raw, reason) => {
    throw new Error(`${optionName}: ${JSON.stringify(raw)} is not a CIDR or IP address (${reason})`);
  });
}

/**
 * The same, for lists read from stored data at request time: an entry that does not parse
 * is dropped and reported instead of thrown. It matches nothing, so the list fails closed.
 */
export function parseCidrListLenient(values: readonly string[]): { list: CidrList; rejected: string[] } {
  const rejected: string[] = [];
  const list = build(values, (raw) => rejected.push(String(raw)));
  return { list, rejected };
}

/** Whether `ip` falls in any entry. Something that is not an IP address matches nothing. */
export function matchesAny(list: CidrList, ip: string | undefined): boolean {
  if (ip === undefined || list.entries.length === 0) return false;
  const address = normalizeIp(ip);
  if (!address) return false;
  return list.blockList.check(address, ipFamily(address) as IpFamily);
}
