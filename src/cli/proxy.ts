/**
 * `bulwark credentials …` and `bulwark usage`: upstream credentials per tenant (the secret is
 * read from standard input, never from the command line, where it would land in shell history
 * and the process list) and the usage summary.
 */
import type { Command } from 'commander';
import { parseDuration } from '../auth/key-service.js';
import { CliError, EXIT, unwrap } from './exit.js';
import type { WithOperations } from './keys.js';
import { printJson, printLines, printTable, shortTime } from './output.js';

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) process.stderr.write('Paste the credential (an API key, or its JSON), then press Ctrl-D:\n');
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8').trim();
}

/** A bare API key, or the documented JSON; never echoed back in an error. */
function credentialInput(text: string): unknown {
  if (!text) throw new CliError('stdin: no credential given (pipe an API key or the credential JSON into the command)', EXIT.usage);
  if (!text.startsWith('{')) return text;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new CliError('stdin: starts like JSON but is not valid JSON', EXIT.usage);
  }
}

/** `24h`, `7d` … back from now, or an ISO date. */
function sinceOption(text: string): Date {
  const ms = parseDuration(text);
  if (ms !== undefined) return new Date(Date.now() - ms);
  const at = Date.parse(text);
  if (Number.isFinite(at)) return new Date(at);
  throw new CliError(`--since: '${text}' is neither a duration like 24h or 7d nor a date`, EXIT.usage);
}

export function registerProxyCommands(program: Command, withOperations: WithOperations): void {
  const credentials = program.command('credentials').description('upstream credentials per tenant (Anthropic API key or OAuth)');

  credentials
    .command('set <tenant>')
    .description('store a tenant credential, encrypted; reads an API key or the credential JSON from stdin')
    .option('--json', 'print JSON')
    .action(async (tenant: string, opts: { json?: boolean }) => {
      const input = credentialInput(await readStdin());
      const view = unwrap(await withOperations((ops) => ops.setCredential(tenant, input)));
      if (opts.json) return printJson(view);
      printLines([`Stored a ${view.type} credential for tenant ${view.tenant}${view.active ? '' : ' (a credential file for this tenant takes precedence)'}.`]);
    });

  credentials
    .command('list')
    .description('list credentials: tenant, type, source and expiry, never the secret')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const list = await withOperations((ops) => ops.listCredentials());
      if (opts.json) return printJson(list);
      if (list.length === 0) return printLines(['No upstream credentials.']);
      printTable(
        list.map((c) => ({ tenant: c.tenant, type: c.type, source: c.source, active: c.active ? 'yes' : 'no', updated: shortTime(c.updatedAt), expires: shortTime(c.expiresAt) })),
        ['tenant', 'type', 'source', 'active', 'updated', 'expires'],
      );
    });

  credentials
    .command('remove <tenant>')
    .description('delete a stored credential (files are removed by deleting the file)')
    .option('--json', 'print JSON')
    .action(async (tenant: string, opts: { json?: boolean }) => {
      const result = unwrap(await withOperations((ops) => ops.removeCredential(tenant)));
      if (opts.json) return printJson(result);
      printLines([`Removed the stored credential of tenant ${tenant}.`]);
    });

  program
    .command('purge')
    .description('clear bodies and delete usage rows past their retention, now (the server also does it hourly)')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const result = unwrap(await withOperations((ops) => ops.purge()));
      if (opts.json) return printJson(result);
      printLines([
        `Cleared ${result.bodiesCleared} stored bodies older than ${result.bodiesBefore}, deleted ${result.rowsDeleted} usage rows older than ${result.rowsBefore} and ${result.conversationsDeleted} agent conversations untouched since ${result.bodiesBefore}.`,
      ]);
    });

  program
    .command('encryption')
    .description('field encryption')
    .command('rotate')
    .description('re-encrypt stored bodies and credentials under the first key of BULWARK_ENCRYPTION_KEYS, in batches')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const result = unwrap(await withOperations((ops) => ops.rotateEncryption()));
      if (opts.json) return printJson(result);
      printLines([`Re-encrypted ${result.bodies} request rows, ${result.credentials} credentials and ${result.agentSessions} agent conversations under key ${result.keyId}.`]);
    });

  program
    .command('usage')
    .description('requests, tokens and cost per tenant and model')
    .option('--tenant <id>', 'only this tenant')
    .option('--since <when>', 'a duration back from now (24h, 7d) or a date', '24h')
    .option('--json', 'print JSON')
    .action(async (opts: { tenant?: string; since: string; json?: boolean }) => {
      const since = sinceOption(opts.since);
      const rows = await withOperations((ops) => ops.usage({ tenant: opts.tenant, since }));
      if (opts.json) return printJson({ since: since.toISOString(), usage: rows });
      if (rows.length === 0) return printLines([`No requests since ${since.toISOString()}.`]);
      printTable(
        rows.map((r) => ({
          tenant: r.tenant,
          model: r.model ?? '-',
          requests: String(r.requests),
          errors: String(r.errors),
          'input tokens': String(r.inputTokens),
          'output tokens': String(r.outputTokens),
          'cache write': String(r.cacheCreationInputTokens),
          'cache read': String(r.cacheReadInputTokens),
          'cost usd': r.costUsd.toFixed(4),
        })),
        ['tenant', 'model', 'requests', 'errors', 'input tokens', 'output tokens', 'cache write', 'cache read', 'cost usd'],
      );
    });
}
