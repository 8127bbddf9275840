/**
 * Load generation for the benchmark: a bounded autocannon run (duration and request count both
 * capped) with latencies kept at full precision, and sequential time-to-first-byte probes with
 * undici. Loopback only.
 *
 * Why our own latency list: autocannon's latency histogram has a 1 ms lowest discernible value,
 * so on loopback (sub-millisecond answers) its p50 reads 0 or 1 and cannot show a 0.5 ms
 * difference. Its `response` event carries the hrtime-based duration, which we keep instead.
 */
import { performance } from 'node:perf_hooks';
import autocannon from 'autocannon';
import { Agent, request } from 'undici';

export interface LoadSpec {
  url: string;
  headers: Record<string, string>;
  body: string;
  connections: number;
  durationSeconds: number;
  maxRequests: number;
  /** Each response's latency (ms) is appended here too, so that rounds can be merged. */
  latencies?: number[];
}

export interface LoadResult {
  connections: number;
  durationSeconds: number;
  /** Responses received (2xx + non-2xx) per second of the run. */
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  /** Requests autocannon wrote to a socket; may exceed `responses` by those in flight at the end. */
  sent: number;
  responses: number;
  ok2xx: number;
  non2xx: number;
  /** Connection errors and timeouts. */
  errors: number;
  statusCodes: Record<string, number>;
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}

export function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const latencies: number[] = [];
  return new Promise((resolve, reject) => {
    const instance = autocannon(
      {
        url: spec.url,
        method: 'POST',
        headers: spec.headers,
        body: spec.body,
        connections: spec.connections,
        duration: spec.durationSeconds,
        maxOverallRequests: spec.maxRequests,
        timeout: 10,
      },
      (error, result) => {
        if (error) return reject(error);
        latencies.sort((a, b) => a - b);
        const responses = result['2xx'] + result.non2xx;
        const statusCodes: Record<string, number> = {};
        for (const [code, { count }] of Object.entries(result.statusCodeStats)) statusCodes[code] = Number(count);
        resolve({
          connections: spec.connections,
          durationSeconds: result.duration,
          requestsPerSecond: result.duration > 0 ? responses / result.duration : 0,
          p50Ms: percentile(latencies, 50),
          p99Ms: percentile(latencies, 99),
          sent: result.requests.sent,
          responses,
          ok2xx: result['2xx'],
          non2xx: result.non2xx,
          errors: result.errors,
          statusCodes,
        });
      },
    );
    instance.on('response', (_client, _status, _bytes, responseTime) => {
      latencies.push(responseTime);
      spec.latencies?.push(responseTime);
    });
  });
}

/**
 * Several runs of one target as one result: counts summed, req/s over the summed duration,
 * p50/p99 over every response of every run (`latencies`, as collected through `LoadSpec`).
 */
export function mergeRuns(runs: readonly LoadResult[], latencies: readonly number[]): LoadResult {
  const sorted = [...latencies].sort((a, b) => a - b);
  const sum = (pick: (r: LoadResult) => number) => runs.reduce((total, r) => total + pick(r), 0);
  const statusCodes: Record<string, number> = {};
  for (const run of runs) for (const [code, count] of Object.entries(run.statusCodes)) statusCodes[code] = (statusCodes[code] ?? 0) + count;
  const durationSeconds = sum((r) => r.durationSeconds);
  const responses = sum((r) => r.responses);
  return {
    connections: runs[0]?.connections ?? 0,
    durationSeconds,
    requestsPerSecond: durationSeconds > 0 ? responses / durationSeconds : 0,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    sent: sum((r) => r.sent),
    responses,
    ok2xx: sum((r) => r.ok2xx),
    non2xx: sum((r) => r.non2xx),
    errors: sum((r) => r.errors),
    statusCodes,
  };
}

export interface FirstByteTarget {
  name: string;
  url: string;
  headers: Record<string, string>;
}

export interface FirstByteResult {
  name: string;
  samples: number;
  /** Median time from sending the request to the response headers. */
  medianHeadersMs: number;
  /** Median time from sending the request to the first body chunk (the first SSE event). */
  medianFirstChunkMs: number;
  non2xx: number;
  errors: number;
}

/**
 * `rounds` sequential streaming requests to each target, interleaved (a, b, a, b …) so that
 * drift in the machine's load hits every target alike; each body is read to its end.
 */
export async function measureFirstByte(targets: readonly FirstByteTarget[], body: string, rounds: number, warmupRounds: number): Promise<{ results: FirstByteResult[]; sentPerTarget: number }> {
  const agent = new Agent({ connections: 1, keepAliveTimeout: 30_000 });
  const firstChunk = targets.map(() => [] as number[]);
  const headersAt = targets.map(() => [] as number[]);
  const non2xx = targets.map(() => 0);
  const errors = targets.map(() => 0);
  try {
    for (let round = 0; round < warmupRounds + rounds; round += 1) {
      for (const [i, target] of targets.entries()) {
        const started = performance.now();
        try {
          const response = await request(target.url, { method: 'POST', headers: target.headers, body, dispatcher: agent });
          const gotHeaders = performance.now();
          let gotFirstChunk: number | undefined;
          for await (const _chunk of response.body) gotFirstChunk ??= performance.now();
          if (response.statusCode < 200 || response.statusCode > 299) non2xx[i]! += 1;
          else if (round >= warmupRounds && gotFirstChunk !== undefined) {
            headersAt[i]!.push(gotHeaders - started);
            firstChunk[i]!.push(gotFirstChunk - started);
          }
        } catch {
          errors[i]! += 1;
        }
      }
    }
  } finally {
    await agent.close();
  }
  const median = (values: number[]) => percentile([...values].sort((a, b) => a - b), 50);
  return {
    sentPerTarget: warmupRounds + rounds,
    results: targets.map((target, i) => ({
      name: target.name,
      samples: firstChunk[i]!.length,
      medianHeadersMs: median(headersAt[i]!),
      medianFirstChunkMs: median(firstChunk[i]!),
      non2xx: non2xx[i]!,
      errors: errors[i]!,
    })),
  };
}
