/**
 * The part of autocannon 8's programmatic API the benchmark uses (the package ships no types;
 * field meanings from its README, "autocannon(opts[, cb])" and "Results").
 */
declare module 'autocannon' {
  import type { EventEmitter } from 'node:events';

  interface Options {
    url: string;
    method?: string;
    headers?: Record<string, string>;
    body?: string;
    connections?: number;
    /** Seconds. */
    duration?: number;
    /** Ends the run after this many requests overall, whichever of it and `duration` comes first. */
    maxOverallRequests?: number;
    /** Seconds to wait for a response. */
    timeout?: number;
    title?: string;
  }

  interface Histogram {
    average: number;
    p50: number;
    p99: number;
    max: number;
    total: number;
    /** Requests histogram only: how many requests were written to a socket. */
    sent?: number;
  }

  interface Result {
    title?: string;
    duration: number;
    errors: number;
    timeouts: number;
    non2xx: number;
    '2xx': number;
    statusCodeStats: Record<string, { count: number }>;
    latency: Histogram;
    requests: Histogram & { sent: number };
  }

  interface Instance extends EventEmitter {
    stop(): void;
    /** `response` gives (client, statusCode, resBytes, responseTimeMs) with sub-millisecond precision. */
    on(event: 'response', listener: (client: unknown, statusCode: number, resBytes: number, responseTime: number) => void): this;
    on(event: string, listener: (...args: unknown[]) => void): this;
  }

  function autocannon(options: Options, callback: (error: Error | null, result: Result) => void): Instance;
  export default autocannon;
  export type { Options, Result, Instance };
}
