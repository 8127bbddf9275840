/**
 * `npm run bench`: measures what Bulwark costs on top of a bare pass-through proxy, on loopback.
 *
 * Scenarios, each JSON and `stream: true`, each at 1 and 32 connections: the upstream stand-in
 * directly, a bare node:http + undici proxy (the floor), Bulwark with auth and usage accounting,
 * Bulwark with body storage on, and Bulwark on PostgreSQL (skipped when none answers). For each
 * mode and connection count the targets take turns for several short rounds, so the machine's
 * drift hits all alike, and each ratio to the bare proxy is taken within a round; the CPU each
 * serving process spends per response is read from /proc around every run. Then sequential
 * streaming requests compare time to first byte, Bulwark's peak RSS is reported, and after a
 * drained shutdown its `requests` rows are counted against the responses the load generator
 * received.
 *
 * Everything is bounded: each run stops at its duration or its request cap, a watchdog ends the
 * whole benchmark, and every child process is stopped by its pid. Results go to
 * bench/results.json. Targets are printed, never enforced.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { request } from 'undici';
import { type FirstByteTarget, type LoadResult, type LoadSpec, measureFirstByte, mergeRuns, runLoad } from './load.js';
import { type Bulwark, REPO_ROOT, type RowCount, cpuTime, removeDataDir, startBulwark, startScript, stopAndCountRows, stopChild } from './processes.js';
import { type Measurement, type Mode, type Target, type TargetCheck, compare, formatFirstByteTable, formatLoadTable, formatTargets, megabytes } from './report.js';

const SETTINGS = {
  modes: ['json', 'stream'] as const satisfies readonly Mode[],
  connections: [1, 32],
  /** Each target runs `rounds` times per mode and connection count, the targets taking turns. */
  rounds: 3,
  durationSeconds: 2,
  maxRequests: 200_000,
  warmupSeconds: 1,
  warmupMaxRequests: 50_000,
  firstByteRounds: 200,
  firstByteWarmupRounds: 10,
  /** Pause after the load before stopping Bulwark, so queued rows are not all left to the drain. */
  settleMs: 2_000,
  /** The whole benchmark is ended after this, whatever state it is in. */
  watchdogMs: 6 * 60_000,
};

const TARGETS = { rpsRatioAt32: 0.7, addedP50MsAt1: 0.5, firstByteOverheadMs: 1, rssMb: 150 };

const MODEL = 'claude-haiku-4-5-20251001';
const BODIES: Record<Mode, string> = {
  json: JSON.stringify({ model: MODEL, max_tokens: 16, messages: [{ role: 'user', content: 'Hello from the Bulwark bench' }] }),
  stream: JSON.stringify({ model: MODEL, max_tokens: 16, stream: true, messages: [{ role: 'user', content: 'Hello from the Bulwark bench' }] }),
};

function headersWith(apiKey: string): Record<string, string> {
  return { 'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'x-api-key': apiKey };
}

/** What was sent to one Bulwark instance, to hold its row count against. */
interface Tally {
  sent: number;
  responses: number;
  errors: number;
}

interface Endpoint {
  target: Target;
  /** The process serving `url`, whose CPU time is read around each run. */
  pid: number;
  url: string;
  headers: Record<string, string>;
  bulwark?: { instance: Bulwark; tally: Tally };
}

const log = (line: string) => process.stderr.write(`${line}\n`);

/** One request until Bulwark answers 200, proving key and credential are in place. */
async function waitUntilServing(endpoint: Endpoint, tally: Tally): Promise<void> {
  const deadline = Date.now() + 15_000;
  let last = '';
  while (Date.now() < deadline) {
    tally.sent += 1;
    try {
      const response = await request(endpoint.url, { method: 'POST', headers: endpoint.headers, body: BODIES.json });
      const text = await response.body.text();
      tally.responses += 1;
      if (response.statusCode === 200) return;
      last = `${response.statusCode} ${text.slice(0, 200)}`;
    } catch (err) {
      tally.errors += 1;
      last = (err as Error).message;
    }
    await sleep(250);
  }
  throw new Error(`${endpoint.target} did not answer 200 within 15 s (last: ${last})`);
}

interface RowCheck {
  target: Target;
  responses: number;
  sent: number;
  clientErrors: number;
  rows: number;
  spooledRows: number;
  lost: number;
  matchesResponses: boolean;
  /** Rows equal to requests sent: every request, answered or cut off by the end of a run, has its row. */
  matchesSent: boolean;
  shutdown: RowCount['stop'];
}

/** Whether a PostgreSQL server answers at `url` within two seconds. */
async function postgresAnswers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

async function dropSchema(url: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`drop schema if exists ${schema} cascade`);
  } finally {
    await client.end();
  }
}

async function main(): Promise<void> {
  const watchdog = setTimeout(() => {
    log(`bench: still running after ${SETTINGS.watchdogMs / 60_000} min; giving up (children are killed on exit)`);
    process.exit(2);
  }, SETTINGS.watchdogMs);
  watchdog.unref();
  const startedAt = new Date();

  // A key for the stand-in only; it is accepted nowhere else.
  const upstreamApiKey = `sk-ant-api03-bench-${randomBytes(16).toString('hex')}`;
  const standIn = await startScript('stand-in-main.ts', [], { ...process.env, BENCH_STAND_IN_API_KEY: upstreamApiKey });
  const bare = await startScript('bare-proxy-main.ts', [standIn.url]);
  log(`stand-in ${standIn.url}, bare proxy ${bare.url}`);

  const plain = await startBulwark({ upstreamUrl: standIn.url, upstreamApiKey, storeBodies: false });
  if (!plain.ok) throw new Error(`Bulwark did not start (exit ${plain.exitCode}):\n${plain.stderr}`);
  log(`bulwark ${plain.bulwark.publicUrl} (pid ${plain.bulwark.child.pid})`);
  const storage = await startBulwark({ upstreamUrl: standIn.url, upstreamApiKey, storeBodies: true });
  let storageNote: string | undefined;
  if (!storage.ok) {
    storageNote = storage.refusedConfig ? 'storage on: not available in this build' : `storage on: did not start (exit ${storage.exitCode})`;
    const reason = storage.stderr.split('\n').find((line) => line.includes('BULWARK_STORE_BODIES'))?.trim();
    log(`${storageNote}${reason ? ` (${reason})` : ''}`);
    if (reason) storageNote += ` (${reason.replace(/^-\s*/, '')})`;
  } else {
    log(`bulwark + storage ${storage.bulwark.publicUrl} (pid ${storage.bulwark.child.pid})`);
  }

  // The same Bulwark on PostgreSQL (the deployment the shared-state features are for), when one
  // answers at BENCH_DATABASE_URL; its schema is this run's own and dropped at the end.
  const databaseUrl = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const schema = `bulwark_bench_${randomBytes(4).toString('hex')}`;
  let postgresNote: string | undefined;
  const onPostgres = (await postgresAnswers(databaseUrl))
    ? await startBulwark({ upstreamUrl: standIn.url, upstreamApiKey, storeBodies: false, database: { url: databaseUrl, schema } })
    : undefined;
  if (!onPostgres) postgresNote = `on PostgreSQL: skipped (nothing answers at ${new URL(databaseUrl).host}; set BENCH_DATABASE_URL)`;
  else if (!onPostgres.ok) postgresNote = `on PostgreSQL: did not start (exit ${onPostgres.exitCode})`;
  else log(`bulwark on PostgreSQL ${onPostgres.bulwark.publicUrl} (pid ${onPostgres.bulwark.child.pid})`);
  if (postgresNote) log(postgresNote);

  const endpoints: Endpoint[] = [
    { target: 'stand-in (direct)', pid: standIn.child.pid!, url: `${standIn.url}/v1/messages`, headers: headersWith(upstreamApiKey) },
    { target: 'bare proxy', pid: bare.child.pid!, url: `${bare.url}/v1/messages`, headers: headersWith(upstreamApiKey) },
    {
      target: 'bulwark',
      pid: plain.bulwark.child.pid!,
      url: `${plain.bulwark.publicUrl}/v1/messages`,
      headers: headersWith(plain.bulwark.apiKey),
      bulwark: { instance: plain.bulwark, tally: { sent: 0, responses: 0, errors: 0 } },
    },
  ];
  if (storage.ok) {
    endpoints.push({
      target: 'bulwark + storage',
      pid: storage.bulwark.child.pid!,
      url: `${storage.bulwark.publicUrl}/v1/messages`,
      headers: headersWith(storage.bulwark.apiKey),
      bulwark: { instance: storage.bulwark, tally: { sent: 0, responses: 0, errors: 0 } },
    });
  }
  if (onPostgres?.ok) {
    endpoints.push({
      target: 'bulwark on PostgreSQL',
      pid: onPostgres.bulwark.child.pid!,
      url: `${onPostgres.bulwark.publicUrl}/v1/messages`,
      headers: headersWith(onPostgres.bulwark.apiKey),
      bulwark: { instance: onPostgres.bulwark, tally: { sent: 0, responses: 0, errors: 0 } },
    });
  }
  for (const endpoint of endpoints) if (endpoint.bulwark) await waitUntilServing(endpoint, endpoint.bulwark.tally);

  const measurements: Measurement[] = [];
  const count = (endpoint: Endpoint, run: LoadResult) => {
    if (!endpoint.bulwark) return;
    endpoint.bulwark.tally.sent += run.sent;
    endpoint.bulwark.tally.responses += run.responses;
    endpoint.bulwark.tally.errors += run.errors;
  };
  for (const mode of SETTINGS.modes) {
    for (const connections of SETTINGS.connections) {
      const spec = (endpoint: Endpoint): LoadSpec => ({ url: endpoint.url, headers: endpoint.headers, body: BODIES[mode], connections, durationSeconds: SETTINGS.durationSeconds, maxRequests: SETTINGS.maxRequests });
      for (const endpoint of endpoints) count(endpoint, await runLoad({ ...spec(endpoint), durationSeconds: SETTINGS.warmupSeconds, maxRequests: SETTINGS.warmupMaxRequests }));
      // Round-robin: the machine's drift (other tenants, CPU frequency) lands on every target alike.
      const runs = endpoints.map(() => ({ results: [] as LoadResult[], latencies: [] as number[], cpu: { processUs: 0, mainThreadUs: 0, measured: true } }));
      for (let round = 0; round < SETTINGS.rounds; round += 1) {
        for (const [i, endpoint] of endpoints.entries()) {
          const before = cpuTime(endpoint.pid);
          const result = await runLoad({ ...spec(endpoint), latencies: runs[i]!.latencies });
          const after = cpuTime(endpoint.pid);
          count(endpoint, result);
          runs[i]!.results.push(result);
          if (before && after) {
            runs[i]!.cpu.processUs += after.processUs - before.processUs;
            runs[i]!.cpu.mainThreadUs += after.mainThreadUs - before.mainThreadUs;
          } else {
            runs[i]!.cpu.measured = false;
          }
        }
      }
      for (const [i, endpoint] of endpoints.entries()) {
        const { results, latencies, cpu } = runs[i]!;
        const merged = mergeRuns(results, latencies);
        const cpuPerResponse = cpu.measured && merged.responses > 0 ? { cpuUsPerRequest: cpu.processUs / merged.responses, mainThreadCpuUsPerRequest: cpu.mainThreadUs / merged.responses } : {};
        measurements.push({ ...merged, ...cpuPerResponse, target: endpoint.target, mode, roundRps: results.map((r) => r.requestsPerSecond) });
        log(`${mode.padEnd(6)} c=${String(connections).padStart(2)}  ${endpoint.target.padEnd(21)} ${merged.requestsPerSecond.toFixed(0).padStart(6)} req/s  p50 ${merged.p50Ms.toFixed(3)} ms`);
      }
    }
  }

  log(`time to first byte: ${SETTINGS.firstByteRounds} sequential streaming requests per target…`);
  const firstByteTargets: FirstByteTarget[] = endpoints.map((e) => ({ name: e.target, url: e.url, headers: e.headers }));
  const firstByte = await measureFirstByte(firstByteTargets, BODIES.stream, SETTINGS.firstByteRounds, SETTINGS.firstByteWarmupRounds);
  for (const [i, endpoint] of endpoints.entries()) {
    if (!endpoint.bulwark) continue;
    const failed = firstByte.results[i]!.errors;
    endpoint.bulwark.tally.sent += firstByte.sentPerTarget;
    endpoint.bulwark.tally.responses += firstByte.sentPerTarget - failed;
    endpoint.bulwark.tally.errors += failed;
  }

  await sleep(SETTINGS.settleMs);
  const rowChecks: RowCheck[] = [];
  const rss: Array<{ target: Target; idleMb: number; peakMb: number }> = [];
  for (const endpoint of endpoints) {
    if (!endpoint.bulwark) continue;
    const { instance, tally } = endpoint.bulwark;
    log(`stopping ${endpoint.target} (SIGTERM) and counting its rows…`);
    const counted = await stopAndCountRows(instance);
    rss.push({ target: endpoint.target, idleMb: megabytes(instance.idleRssBytes), peakMb: megabytes(instance.rss.peakBytes) });
    const lost = Math.max(0, tally.responses - counted.rows);
    rowChecks.push({
      target: endpoint.target,
      responses: tally.responses,
      sent: tally.sent,
      clientErrors: tally.errors,
      rows: counted.rows,
      spooledRows: counted.spooledRows,
      lost,
      matchesResponses: counted.rows === tally.responses,
      matchesSent: counted.rows === tally.sent,
      shutdown: counted.stop,
    });
    removeDataDir(instance);
  }
  await stopChild(bare.child, 5_000);
  await stopChild(standIn.child, 5_000);
  if (onPostgres?.ok) await dropSchema(databaseUrl, schema);

  // ---- Report -------------------------------------------------------------------------------
  const comparisons = compare(measurements);
  const bulwarkFirstByte = firstByte.results.find((r) => r.name === 'bulwark');
  const bareFirstByte = firstByte.results.find((r) => r.name === 'bare proxy');
  const firstByteOverheadMs = bulwarkFirstByte && bareFirstByte ? bulwarkFirstByte.medianFirstChunkMs - bareFirstByte.medianFirstChunkMs : Number.NaN;

  const checks: TargetCheck[] = [];
  for (const c of comparisons.filter((x) => x.connections === 32)) {
    checks.push({ name: `${c.target} ${c.mode} req/s at 32 connections`, goal: `>= ${TARGETS.rpsRatioAt32}x bare proxy`, value: `${c.rpsRatio.toFixed(2)}x`, met: c.rpsRatio >= TARGETS.rpsRatioAt32 });
  }
  for (const c of comparisons.filter((x) => x.connections === 1)) {
    checks.push({ name: `${c.target} ${c.mode} added p50 at 1 connection`, goal: `<= ${TARGETS.addedP50MsAt1} ms`, value: `${c.addedP50Ms.toFixed(3)} ms`, met: c.addedP50Ms <= TARGETS.addedP50MsAt1 });
  }
  checks.push({ name: 'bulwark streaming first-byte overhead', goal: `< ${TARGETS.firstByteOverheadMs} ms`, value: `${firstByteOverheadMs.toFixed(3)} ms`, met: Number.isFinite(firstByteOverheadMs) ? firstByteOverheadMs < TARGETS.firstByteOverheadMs : undefined });
  for (const r of rss) checks.push({ name: `${r.target} peak RSS`, goal: `<= ${TARGETS.rssMb} MB`, value: `${r.peakMb.toFixed(1)} MB`, met: r.peakMb > 0 ? r.peakMb <= TARGETS.rssMb : undefined });
  for (const r of rowChecks) checks.push({ name: `${r.target} lost rows`, goal: '0', value: `${r.lost} (rows ${r.rows}, responses ${r.responses}, sent ${r.sent})`, met: r.lost === 0 });

  const out: string[] = [];
  out.push('', `Bulwark bench — Node ${process.version}, ${cpus().length} CPUs, loopback, ${SETTINGS.rounds} rounds of ${SETTINGS.durationSeconds} s per target after ${SETTINGS.warmupSeconds} s warm-up (cap ${SETTINGS.maxRequests} requests a run)`, '');
  out.push(formatLoadTable(measurements, comparisons));
  out.push(
    '',
    'p50/p99 are from per-response timings (sub-millisecond). "vs bare" is the median over the rounds of req/s over the bare proxy\'s in the same round;',
    '"rounds" is the lowest and highest of those ratios. cpu µs/req is the serving process\'s CPU (all threads) per response, main µs/req its event loop\'s.',
  );
  if (storageNote) out.push(storageNote);
  if (postgresNote) out.push(postgresNote);
  out.push('', formatFirstByteTable(firstByte.results, 'bare proxy'));
  out.push('', ...rss.map((r) => `${r.target} RSS: ${r.idleMb.toFixed(1)} MB idle after start, ${r.peakMb.toFixed(1)} MB peak`));
  for (const endpoint of endpoints) {
    const logged = endpoint.bulwark?.instance.stderr;
    if (!logged || logged.lines === 0) continue;
    out.push(`${endpoint.target} logged ${logged.lines} record(s) at level warn or above; the last:`, ...logged.tail.map((line) => `  ${line}`));
  }
  out.push('');
  for (const r of rowChecks) {
    const inFlight = r.sent - r.responses - r.clientErrors;
    out.push(
      `${r.target} rows: ${r.rows} in the store (+${r.spooledRows} left in the spool)`,
      `  vs responses received (2xx + non-2xx): ${r.responses} -> ${r.matchesResponses ? 'match' : `no match (rows - responses = ${r.rows - r.responses})`}`,
      `  vs requests sent: ${r.sent} -> ${r.matchesSent ? 'match' : `no match (rows - sent = ${r.rows - r.sent})`}` +
        (inFlight > 0 ? `; ${inFlight} request(s) were still in flight when a load run ended (sent, never answered to the client)` : '') +
        // Rows short of sent, within the in-flight count: requests autocannon wrote but whose
        // connection it closed before Bulwark read them. Every answered request has its row.
        (inFlight > 0 && r.rows < r.sent && r.sent - r.rows <= inFlight && r.lost === 0
          ? `, of which ${r.sent - r.rows} never reached Bulwark before their connection closed and ${inFlight - (r.sent - r.rows)} got a row`
          : '') +
        (r.clientErrors > 0 ? `; ${r.clientErrors} client-side error(s)` : ''),
      `  shutdown: ${r.shutdown.killed ? 'had to be killed' : `exit ${r.shutdown.code ?? r.shutdown.signal}`} after ${r.shutdown.ms} ms`,
    );
  }
  out.push('', formatTargets(checks), '');
  process.stdout.write(`${out.join('\n')}\n`);

  const resultsFile = path.join(REPO_ROOT, 'bench', 'results.json');
  const results = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    environment: { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model, loadavgAtEnd: loadavg() },
    settings: SETTINGS,
    targets: TARGETS,
    storage: storageNote ?? 'measured',
    measurements,
    comparisons,
    firstByte: { ...firstByte, overheadMs: firstByteOverheadMs },
    rss,
    bulwarkStderr: endpoints.filter((e) => e.bulwark).map((e) => ({ target: e.target, ...e.bulwark!.instance.stderr })),
    rows: rowChecks,
    checks,
  };
  writeFileSync(resultsFile, `${JSON.stringify(results, null, 2)}\n`);
  log(`wrote ${path.relative(process.cwd(), resultsFile)}`);
  clearTimeout(watchdog);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    log(`bench failed: ${(err as Error)?.stack ?? String(err)}`);
    process.exit(1);
  },
);
