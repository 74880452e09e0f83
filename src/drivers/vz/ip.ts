// Finding a vz guest's IPv4 address on the host, pure parsers plus one resolver with its readers
// injected. Order: the guest agent (it knows), then macOS's DHCP server leases (/var/db/dhcpd_leases,
// written by bootpd for NAT guests), then the ARP cache (`arp -an`, also covering bridged guests that
// got their address elsewhere once they have talked to the host).
import { normalizeMac } from './config.ts';

export interface DhcpLease {
  mac: string;
  ip: string;
  name?: string;
  /** Expiry, seconds since the epoch (bootpd's `lease=0x...`). */
  expires?: number;
}

/**
 * Parses /var/db/dhcpd_leases: blocks of `key=value` lines between a `{` line and a `}` line, as bootpd
 * writes them (hw_address is "<hardware type>,<mac>" with octets not zero-padded: "1,5a:94:ef:e4:c:ee").
 * Blocks that are not Ethernet, or lack an address, are skipped; a truncated last block is ignored (the
 * file may be read while bootpd rewrites it).
 */
export function parseDhcpdLeases(text: string): DhcpLease[] {
  const leases: DhcpLease[] = [];
  let block: Record<string, string> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '{') {
      block = {};
    } else if (line === '}') {
      if (block) {
        const lease = leaseFrom(block);
        if (lease) leases.push(lease);
      }
      block = undefined;
    } else if (block && line !== '') {
      const eq = line.indexOf('=');
      if (eq > 0) block[line.slice(0, eq)] = line.slice(eq + 1);
    }
  }
  return leases;
}

function leaseFrom(block: Record<string, string>): DhcpLease | undefined {
  const hw = block.hw_address;
  const ip = block.ip_address;
  if (!hw || !ip || !isIPv4(ip)) return undefined;
  const comma = hw.indexOf(',');
  if (comma < 0 || hw.slice(0, comma) !== '1') return undefined; // 1: ARPHRD_ETHER
  const mac = normalizeMac(hw.slice(comma + 1));
  if (!mac) return undefined;
  const expires = block.lease && /^0x[0-9a-f]+$/i.test(block.lease) ? Number.parseInt(block.lease.slice(2), 16) : undefined;
  return { mac, ip, ...(block.name ? { name: block.name } : {}), ...(expires !== undefined ? { expires } : {}) };
}

/** The address leased to mac; the latest lease wins when bootpd kept several. */
export function leaseIpFor(leases: DhcpLease[], mac: string): string | undefined {
  const want = normalizeMac(mac);
  const mine = leases.filter((l) => l.mac === want);
  mine.sort((a, b) => (b.expires ?? 0) - (a.expires ?? 0));
  return mine[0]?.ip;
}

export interface ArpEntry {
  ip: string;
  mac: string;
  iface: string;
}

/**
 * Parses `arp -an` (macOS: "? (192.168.64.3) at 5a:94:ef:e4:c:ee on bridge100 ifscope [bridge]").
 * Incomplete entries and lines of any other shape are skipped.
 */
export function parseArp(text: string): ArpEntry[] {
  const out: ArpEntry[] = [];
  for (const line of text.split('\n')) {
    const m = /\((\d+\.\d+\.\d+\.\d+)\) at (\S+) on (\S+)/.exec(line);
    if (!m || !isIPv4(m[1]!)) continue;
    const mac = normalizeMac(m[2]!);
    if (mac) out.push({ ip: m[1]!, mac, iface: m[3]! });
  }
  return out;
}

export function arpIpFor(entries: ArpEntry[], mac: string): string | undefined {
  const want = normalizeMac(mac);
  return entries.find((e) => e.mac === want)?.ip;
}

export interface IpSources {
  /** The guest agent's answer, when it runs (undefined or a rejection: no answer). */
  askAgent?: () => Promise<string | undefined>;
  /** The text of /var/db/dhcpd_leases (undefined: no such file). */
  readLeases: () => Promise<string | undefined>;
  /** The output of `arp -an`. */
  runArp: () => Promise<string>;
}

export interface FoundIp {
  ip: string;
  source: 'agent' | 'dhcp' | 'arp';
}

/** The guest's IPv4 address from the first source that knows it, or undefined. */
export async function discoverIp(mac: string, sources: IpSources): Promise<FoundIp | undefined> {
  const fromAgent = await sources.askAgent?.().catch(() => undefined);
  if (fromAgent && isIPv4(fromAgent)) return { ip: fromAgent, source: 'agent' };
  const leases = await sources.readLeases().catch(() => undefined);
  const fromDhcp = leases === undefined ? undefined : leaseIpFor(parseDhcpdLeases(leases), mac);
  if (fromDhcp) return { ip: fromDhcp, source: 'dhcp' };
  const arp = await sources.runArp().catch(() => '');
  const fromArp = arpIpFor(parseArp(arp), mac);
  return fromArp ? { ip: fromArp, source: 'arp' } : undefined;
}

function isIPv4(s: string): boolean {
  const parts = s.split('.');
  return parts.length === 4 && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255);
}
