#!/usr/bin/env node
/**
 * The `bulwark` command. Every subcommand loads the one config (refusing a bad one with exit
 * 78), prints data as text or `--json`, and exits with a documented code (see exit.ts).
 */
import { Command, CommanderError } from 'commander';
import { maskSecrets } from '../audit/mask.js';
import { ConfigError, type Config, loadConfig } from '../config/load.js';
import { formatConfigText, maskedConfig } from '../config/print.js';
import { safetyProblems } from '../config/safety.js';
import { createLogger, type Logger } from '../http/logger.js';
import { type RunningServer, StartupError, startServer } from '../http/server.js';
import { openDatabase } from '../store/database.js';
import { prepareDataDir, runningServer } from '../store/data-dir.js';
import { migrateToLatest } from '../store/migrations.js';
import { VERSION } from '../version.js';
import { doctorExitCode, formatFindings, localFindings, probeDeployment } from './doctor.js';
import { CliError, EXIT } from './exit.js';
import { registerKeyCommands } from './keys.js';
import { registerProxyCommands } from './proxy.js';
import { registerMcpCommands } from './mcp.js';
import { type Operations, openOperations } from './operations.js';
import { printJson, printLines, printTable, shortTime } from './output.js';

/** Human-readable lines go to stderr, masked: an error message may quote a URL or a header. */
function say(line: string): void {
  process.stderr.write(`${maskSecrets(line)}\n`);
}

function config(): Config {
  return loadConfig();
}

/** The CLI's own logger: warnings and errors only, on stderr, masked like the server's. */
function cliLogger(cfg: Config): Logger {
  return createLogger({ level: cfg.log.level === 'info' ? 'warn' : cfg.log.level, destination: process.stderr });
}

async function withOperations<T>(work: (ops: Operations) => Promise<T>): Promise<T> {
  const cfg = config();
  const problems = safetyProblems(cfg);
  if (problems.length) throw new ConfigError(problems);
  const ops = await openOperations(cfg, cliLogger(cfg));
  try {
    return await work(ops);
  } finally {
    await ops.close();
  }
}

export function buildProgram(): Command {
  const program = new Command('bulwark')
    .description('Bulwark: a secure-by-default security gateway for AI agents')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();

  program
    .command('serve')
    .description('run the gateway: public listener and admin listener')
    .action(async () => {
      const cfg = config();
      const problems = safetyProblems(cfg);
      if (problems.length) throw new ConfigError(problems);
      const logger = createLogger({ level: cfg.log.level });
      // Signals are handled from the first moment: one during start-up waits for it to finish
      // (migrations, spool replay) and then shuts down cleanly.
      let server: RunningServer | undefined;
      let starting: Promise<RunningServer> | undefined;
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) {
          // A second signal means "now": what is still queued goes to the spool, not the database.
          const spooled = server?.runtime.abandon() ?? 0;
          logger.warn({ signal, spooled }, 'second signal; exiting without draining (queued writes spooled for the next start)');
          process.exit(EXIT.internal);
        }
        stopping = true;
        logger.info({ signal }, 'shutting down');
        // A start that failed reports itself (and its exit code) through the action's error path.
        starting?.then(
          (running) =>
            running.close().then(
              () => process.exit(0),
              (err: unknown) => {
                logger.error({ err }, 'shutdown failed');
                process.exit(EXIT.internal);
              },
            ),
          () => {},
        );
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
      starting = startServer(cfg, { logger, say });
      server = await starting;
      await new Promise<never>(() => {});
    });

  registerKeyCommands(program, withOperations);
  registerProxyCommands(program, withOperations);
  registerMcpCommands(program, withOperations);

  program
    .command('migrate')
    .description('apply pending database migrations (production runs them only this way)')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const cfg = config();
      if (!cfg.database.url && runningServer(cfg.dataDir)) {
        throw new CliError('A server is running on this data dir; stop it before migrating the embedded database.', EXIT.conflict);
      }
      if (!cfg.database.url) prepareDataDir(cfg.dataDir);
      const database = await openDatabase({ url: cfg.database.url, dataDir: cfg.dataDir, schema: cfg.database.schema }).catch((err: Error) => {
        throw new CliError(`Cannot open the database: ${err.message}`, EXIT.unavailable);
      });
      try {
        const { applied } = await migrateToLatest(database);
        if (opts.json) return printJson({ applied, database: database.location });
        printLines([applied.length ? `Applied ${applied.join(', ')} to ${database.location}.` : `${database.location} is up to date.`]);
      } finally {
        await database.close();
      }
    });

  const configCommand = program.command('config').description('inspect the configuration');
  configCommand
    .command('print')
    .description('print the effective configuration, secrets masked, and any reason it would be refused')
    .option('--json', 'print JSON')
    .action((opts: { json?: boolean }) => {
      const cfg = config();
      const masked = maskedConfig(cfg);
      const problems = safetyProblems(cfg);
      if (opts.json) return printJson({ config: masked, problems });
      process.stdout.write(formatConfigText(masked));
      if (!formatConfigText(masked).endsWith('\n')) process.stdout.write('\n');
      if (problems.length) printLines(['', 'Refused at start:', ...problems.map((p) => `  - ${p}`)]);
    });

  const audit = program.command('audit').description('read and verify the audit trail');
  audit
    .command('verify')
    .description('check the hash chain; exits 1 and names the first bad row if it was tampered with')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const result = await withOperations((ops) => ops.auditVerify());
      if (opts.json) printJson(result);
      else if (result.ok) printLines([`Audit chain intact: ${result.checked} events, head ${result.head.slice(0, 16)}…`]);
      else printLines([`Audit chain BROKEN at event #${result.badSeq} (${result.badId}): ${result.reason}.`, `${result.checked} events before it verified.`]);
      if (!result.ok) process.exitCode = EXIT.checkFailed;
    });
  audit
    .command('tail')
    .description('show recent audit events, oldest first')
    .option('-n, --limit <n>', 'how many (1-1000)', '50')
    .option('--type <type>', 'only this type, or a family such as "key." or "auth.*"')
    .option('--tenant <id>', 'only this tenant')
    .option('--payloads', 'open the encrypted arguments and results of MCP tool calls (with body storage on); implies --json')
    .option('--json', 'print JSON')
    .action(async (opts: { limit: string; type?: string; tenant?: string; payloads?: boolean; json?: boolean }) => {
      const limit = Number(opts.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new CliError('--limit: give a whole number from 1 to 1000', EXIT.usage);
      const events = await withOperations((ops) => ops.auditTail({ limit, type: opts.type, tenantId: opts.tenant, payloads: opts.payloads }));
      if (opts.json || opts.payloads) return printJson(events);
      if (events.length === 0) return printLines(['No audit events.']);
      printTable(
        events.map((e) => ({
          seq: String(e.seq),
          time: shortTime(e.time),
          type: e.type,
          outcome: e.outcome,
          tenant: e.tenantId ?? '-',
          key: e.keyId ?? '-',
          ip: e.ip ?? '-',
          path: e.path ? `${e.method ?? ''} ${e.path}`.trim() : '-',
        })),
        ['seq', 'time', 'type', 'outcome', 'tenant', 'key', 'ip', 'path'],
      );
    });

  program
    .command('doctor')
    .description('check this installation for unsafe settings, or probe a running deployment with --url')
    .option('--url <url>', 'probe the public listener of a running deployment from outside')
    .option('--admin-url <url>', 'also probe the admin listener')
    .option('--json', 'print JSON')
    .action(async (opts: { url?: string; adminUrl?: string; json?: boolean }) => {
      if (opts.adminUrl && !opts.url) throw new CliError('--admin-url needs --url (the public listener to probe as well)', EXIT.usage);
      const findings = opts.url
        ? await probeDeployment({ url: opts.url, ...(opts.adminUrl ? { adminUrl: opts.adminUrl } : {}) })
        : localFindings(config());
      if (opts.json) printJson({ findings, ok: doctorExitCode(findings) === 0 });
      else process.stdout.write(`${formatFindings(findings).replace(/\n?$/, '\n')}`);
      process.exitCode = doctorExitCode(findings);
    });

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return EXIT.ok;
      return EXIT.usage;
    }
    if (err instanceof ConfigError) {
      // Built to name settings, never their values; masking would garble "X_SECRET: is …".
      process.stderr.write(`${err.message}\n`);
      return ConfigError.EXIT_CODE;
    }
    if (err instanceof CliError || err instanceof StartupError) {
      say(`bulwark: ${err.message}`);
      return err instanceof CliError ? err.exitCode : err.exitCode;
    }
    say(`bulwark: unexpected error: ${(err as Error)?.message ?? String(err)}`);
    return EXIT.internal;
  }
}

const code = await main(process.argv);
// `serve` never resolves; every other command ends here with its code.
process.exit(code);
