/**
 * The floor for the benchmark: the least a Node proxy can do for `POST /v1/messages` — forward
 * the request to the upstream through an undici Pool (configured like Bulwark's upstream pool)
 * and pipe status, headers and body stream back. No auth, no parsing, no accounting. Whatever
 * Bulwark costs above this is Bulwark's own overhead.
 *
 * Runs as its own process; argv[2] is the upstream URL. Prints `{"url": …}` on stdout when
 * listening on 127.0.0.1. Exits on SIGTERM, or when its stdin closes (the parent went away).
 */
import { type IncomingHttpHeaders, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { type Dispatcher, Pool } from 'undici';

const upstreamUrl = process.argv[2];
if (!upstreamUrl) throw new Error('bare proxy: pass the upstream URL as the first argument');

/** Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and are never forwarded. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate', 'host']);

function forwardable(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
  }
  return out;
}

// Same pool shape as Bulwark's `Upstream` (src/proxy/upstream.ts), so the comparison is fair.
const pool = new Pool(upstreamUrl, { connections: 256, keepAliveTimeout: 30_000 });

const server = createServer((req, res) => {
  const abort = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) abort.abort();
  });
  const method = (req.method ?? 'GET') as Dispatcher.HttpMethod;
  pool
    .request({
      method,
      path: req.url ?? '/',
      headers: forwardable(req.headers),
      body: method === 'GET' || method === 'HEAD' ? null : req,
      signal: abort.signal,
    })
    .then(async (upstream) => {
      res.writeHead(upstream.statusCode, forwardable(upstream.headers));
      // Each chunk goes out as it arrives: SSE events are not held back.
      await pipeline(upstream.body, res);
    })
    .catch(() => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end('{"type":"error","error":{"type":"api_error","message":"bare proxy: upstream failed"}}');
      } else {
        res.destroy();
      }
    });
});
server.keepAliveTimeout = 30_000;

let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await pool.close();
  process.exit(0);
}
process.on('SIGTERM', () => void stop());
process.stdin.on('end', () => void stop());
process.stdin.resume();

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` })}\n`);
});
