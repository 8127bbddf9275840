/**
 * The upstream stand-in as its own process for the benchmark, so that the load generator, the
 * proxy under test and the upstream each have their own event loop (in one process they would
 * share a thread and the proxy would be charged for the upstream's work).
 *
 * Prints one JSON line `{"url": …}` on stdout when listening. Accepts the API key given in
 * BENCH_STAND_IN_API_KEY. Exits on SIGTERM, or when its stdin closes (the parent went away).
 */
import { startAnthropicStandIn } from '../test/stand-in/anthropic.js';

const apiKey = process.env.BENCH_STAND_IN_API_KEY;
if (!apiKey) throw new Error('bench stand-in: BENCH_STAND_IN_API_KEY must be set');

const standIn = await startAnthropicStandIn({ eventIntervalMs: 0 });
standIn.apiKeys.add(apiKey);

// The stand-in records every request for tests to inspect; under load that list would grow by
// hundreds of thousands of parsed bodies and turn into GC work measured against every scenario.
const forget = setInterval(() => {
  standIn.requests.length = 0;
}, 250);

let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  clearInterval(forget);
  await standIn.close();
  process.exit(0);
}
process.on('SIGTERM', () => void stop());
process.stdin.on('end', () => void stop());
process.stdin.resume();

process.stdout.write(`${JSON.stringify({ url: standIn.url })}\n`);
