/**
 * Turns the benchmark's measurements into the printed table, the comparisons against the bare
 * proxy, and the targets; the same data goes to bench/results.json.
 */
import { type FirstByteResult, type LoadResult, percentile } from './load.js';

export type Mode = 'json' | 'stream';
export type Target = 'stand-in (direct)' | 'bare proxy' | 'bulwark' | 'bulwark + storage' | 'bulwark on PostgreSQL';

/** The scenarios that are Bulwark, compared against the bare proxy. */
export const BULWARK_TARGETS: readonly Target[] = ['bulwark', 'bulwark + storage', 'bulwark on PostgreSQL'];

export interface Measurement extends LoadResult {
  target: Target;
  mode: Mode;
  /** req/s of each round; round i of every target ran back to back with the others' round i. */
  roundRps: number[];
  /** CPU of the serving process per response, all threads and the main thread (µs; Linux only). */
  cpuUsPerRequest?: number;
  mainThreadCpuUsPerRequest?: number;
}

export interface Comparison {
  target: Target;
  mode: Mode;
  connections: number;
  /** Median over the rounds of Bulwark's req/s over the bare proxy's in the same round. */
  rpsRatio: number;
  /** The lowest and highest of those per-round ratios: how much the machine moved under the run. */
  rpsRatioMin: number;
  rpsRatioMax: number;
  /** Bulwark's p50 minus the bare proxy's, in ms. */
  addedP50Ms: number;
}

export interface TargetCheck {
  name: string;
  goal: string;
  value: string;
  met: boolean | undefined;
}

export function compare(measurements: readonly Measurement[]): Comparison[] {
  const out: Comparison[] = [];
  for (const m of measurements) {
    if (!BULWARK_TARGETS.includes(m.target)) continue;
    const bare = measurements.find((b) => b.target === 'bare proxy' && b.mode === m.mode && b.connections === m.connections);
    if (!bare) continue;
    const ratios = m.roundRps.map((rps, round) => rps / bare.roundRps[round]!).sort((a, b) => a - b);
    out.push({
      target: m.target,
      mode: m.mode,
      connections: m.connections,
      rpsRatio: percentile(ratios, 50),
      rpsRatioMin: ratios[0] ?? Number.NaN,
      rpsRatioMax: ratios.at(-1) ?? Number.NaN,
      addedP50Ms: m.p50Ms - bare.p50Ms,
    });
  }
  return out;
}

const fixed = (value: number, digits: number) => (Number.isFinite(value) ? value.toFixed(digits) : '-');

function table(headers: readonly string[], rows: readonly (readonly string[])[], rightAligned: ReadonlySet<number>): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => (rightAligned.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function formatLoadTable(measurements: readonly Measurement[], comparisons: readonly Comparison[]): string {
  const rows = measurements.map((m) => {
    const c = comparisons.find((x) => x.target === m.target && x.mode === m.mode && x.connections === m.connections);
    return [
      m.mode,
      String(m.connections),
      m.target,
      fixed(m.requestsPerSecond, 0),
      fixed(m.p50Ms, 3),
      fixed(m.p99Ms, 3),
      String(m.errors),
      String(m.non2xx),
      fixed(m.cpuUsPerRequest ?? Number.NaN, 0),
      fixed(m.mainThreadCpuUsPerRequest ?? Number.NaN, 0),
      c ? `${fixed(c.rpsRatio, 2)}x` : '',
      c ? `${fixed(c.rpsRatioMin, 2)}-${fixed(c.rpsRatioMax, 2)}` : '',
      c ? `${c.addedP50Ms >= 0 ? '+' : ''}${fixed(c.addedP50Ms, 3)}` : '',
    ];
  });
  return table(
    ['mode', 'conns', 'scenario', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx', 'cpu µs/req', 'main µs/req', 'vs bare', 'rounds', 'added p50 ms'],
    rows,
    new Set([1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
  );
}

export function formatFirstByteTable(results: readonly FirstByteResult[], bareName: string): string {
  const bare = results.find((r) => r.name === bareName);
  const rows = results.map((r) => [
    r.name,
    String(r.samples),
    fixed(r.medianHeadersMs, 3),
    fixed(r.medianFirstChunkMs, 3),
    bare && r.name !== bareName && !r.name.startsWith('stand-in') ? `${r.medianFirstChunkMs - bare.medianFirstChunkMs >= 0 ? '+' : ''}${fixed(r.medianFirstChunkMs - bare.medianFirstChunkMs, 3)}` : '',
    String(r.non2xx + r.errors),
  ]);
  return table(['streaming, sequential', 'samples', 'median headers ms', 'median first chunk ms', 'vs bare ms', 'failed'], rows, new Set([1, 2, 3, 4, 5]));
}

export function formatTargets(checks: readonly TargetCheck[]): string {
  const rows = checks.map((c) => [c.met === undefined ? 'n/a' : c.met ? 'met' : 'MISSED', c.name, c.goal, c.value]);
  return table(['', 'target', 'goal', 'measured'], rows, new Set());
}

export const megabytes = (bytes: number) => bytes / (1024 * 1024);
