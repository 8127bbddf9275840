/**
 * `bulwark mcp sessions list|terminate`: the operator's view of live MCP sessions, and the
 * way to end one at once (its client's next request gets 404 and must start over).
 */
import type { Command } from 'commander';
import { SESSION_REF } from '../mcp/sessions.js';
import { CliError, EXIT, unwrap } from './exit.js';
import type { WithOperations } from './keys.js';
import { printJson, printLines, printTable, shortTime } from './output.js';

export function registerMcpCommands(program: Command, withOperations: WithOperations): void {
  const mcp = program.command('mcp').description('the MCP endpoint (/mcp)');
  const sessions = mcp.command('sessions').description('live MCP sessions');

  sessions
    .command('list')
    .description('list live sessions: ref, tenant, key, client, last activity and end')
    .option('--tenant <id>', 'only this tenant')
    .option('--key <id>', 'only sessions of this key')
    .option('--json', 'print JSON')
    .action(async (opts: { tenant?: string; key?: string; json?: boolean }) => {
      const list = await withOperations((ops) => ops.listMcpSessions({ tenant: opts.tenant, keyId: opts.key }));
      if (opts.json) return printJson(list);
      if (list.length === 0) return printLines(['No live MCP sessions.']);
      printTable(
        list.map((s) => ({
          ref: s.ref,
          tenant: s.tenant,
          key: s.keyId,
          client: s.client ?? '-',
          protocol: s.protocolVersion,
          'last seen': shortTime(s.lastSeenAt),
          ends: shortTime(s.expiresAt),
        })),
        ['ref', 'tenant', 'key', 'client', 'protocol', 'last seen', 'ends'],
      );
    });

  sessions
    .command('terminate <ref>')
    .description('end a session now, by the ref `mcp sessions list` shows')
    .option('--json', 'print JSON')
    .action(async (ref: string, opts: { json?: boolean }) => {
      if (!SESSION_REF.test(ref)) throw new CliError(`ref: '${ref.slice(0, 64)}' is not a session ref (16 hex characters, from \`bulwark mcp sessions list\`)`, EXIT.usage);
      const ended = unwrap(await withOperations((ops) => ops.terminateMcpSession(ref)));
      if (opts.json) return printJson(ended);
      printLines([`Ended MCP session ${ended.ref} of key ${ended.keyId} (tenant ${ended.tenant}).`]);
    });
}
