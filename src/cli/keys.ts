/**
 * `bulwark keys …` and `bulwark tenants …`: key and tenant management from the shell.
 */
import type { Command } from 'commander';
import type { KeyView } from '../auth/key-service.js';
import { parseScopes } from '../auth/scopes.js';
import { CliError, EXIT, unwrap } from './exit.js';
import type { Operations } from './operations.js';
import { printJson, printLines, printTable, shortTime } from './output.js';

export type WithOperations = <T>(work: (ops: Operations) => Promise<T>) => Promise<T>;


function keyRow(key: KeyView): Record<string, string> {
  return {
    id: key.id,
    name: key.name,
    tenant: key.tenant,
    scopes: key.scopes.join(','),
    status: key.status,
    expires: shortTime(key.expiresAt),
    'last used': shortTime(key.lastUsedAt),
  };
}

function keyDetails(key: KeyView): string[] {
  return [
    `id:          ${key.id}`,
    `name:        ${key.name}`,
    `tenant:      ${key.tenant}`,
    `scopes:      ${key.scopes.join(', ')}`,
    `status:      ${key.status}`,
    `created:     ${key.createdAt}`,
    `expires:     ${key.expiresAt ?? 'never'}`,
    `revoked:     ${key.revokedAt ?? '-'}`,
    `last used:   ${key.lastUsedAt ?? 'never'}`,
    ...(key.rotatedFrom ? [`rotated from: ${key.rotatedFrom}`] : []),
    ...(Object.keys(key.limits).length ? [`limits:      ${JSON.stringify(key.limits)}`] : []),
    ...(key.allowedIps.length ? [`allowed IPs: ${key.allowedIps.join(', ')}`] : []),
  ];
}

function scopesOption(list: string): string[] {
  const { scopes, invalid } = parseScopes(list);
  if (invalid.length) throw new CliError(`--scopes: not valid: ${invalid.join(', ')} (use read, write, admin, or family:name)`, EXIT.usage);
  if (scopes.length === 0) throw new CliError('--scopes: give at least one scope', EXIT.usage);
  return scopes;
}

interface CreateOptions {
  scopes: string;
  name: string;
  tenant?: string;
  expires?: string;
  rpm?: string;
  tpm?: string;
  tokensPerDay?: string;
  tokensPerMonth?: string;
  usdPerDay?: string;
  usdPerMonth?: string;
  models?: string;
  allowIp?: string;
  json?: boolean;
}

/** The limit flags as a limit set; the service validates the values and names a bad one. */
function limitsOptions(opts: CreateOptions): Record<string, unknown> | undefined {
  const limits: Record<string, unknown> = {};
  const numbers: [keyof CreateOptions, string][] = [
    ['rpm', 'requestsPerMinute'],
    ['tpm', 'tokensPerMinute'],
    ['tokensPerDay', 'tokensPerDay'],
    ['tokensPerMonth', 'tokensPerMonth'],
    ['usdPerDay', 'usdPerDay'],
    ['usdPerMonth', 'usdPerMonth'],
  ];
  for (const [flag, name] of numbers) {
    const value = opts[flag];
    if (typeof value !== 'string') continue;
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0) throw new CliError(`--${flag.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}: give a positive number`, EXIT.usage);
    limits[name] = n;
  }
  if (opts.models) limits.models = opts.models.split(',').map((m) => m.trim()).filter(Boolean);
  return Object.keys(limits).length ? limits : undefined;
}

export function registerKeyCommands(program: Command, withOperations: WithOperations): void {
  const keys = program.command('keys').description('create, list, show, rename, revoke and rotate API keys');

  keys
    .command('create')
    .description('create a key; the key is printed once and only its hash is stored')
    .requiredOption('--scopes <list>', 'comma list of scopes: read, write, admin, or family:name')
    .option('--name <name>', 'a name to recognise the key by', 'unnamed key')
    .option('--tenant <id>', 'tenant the key belongs to (default: default)')
    .option('--expires <duration>', 'lifetime such as 30d, 12h or 90m (default: never)')
    .option('--rpm <n>', 'limit: requests per minute')
    .option('--tpm <n>', 'limit: tokens per minute')
    .option('--tokens-per-day <n>', 'limit: tokens per UTC day')
    .option('--tokens-per-month <n>', 'limit: tokens per UTC month')
    .option('--usd-per-day <n>', 'budget: US dollars per UTC day (needs prices in the config)')
    .option('--usd-per-month <n>', 'budget: US dollars per UTC month (needs prices in the config)')
    .option('--models <list>', 'allow only these models (comma list; * is a wildcard)')
    .option('--allow-ip <list>', 'use only from these addresses or CIDRs (comma list, IPv4 and IPv6)')
    .option('--json', 'print JSON')
    .action(async (opts: CreateOptions) => {
      const scopes = scopesOption(opts.scopes);
      const limits = limitsOptions(opts);
      const allowedIps = opts.allowIp?.split(',').map((ip) => ip.trim()).filter(Boolean);
      const created = unwrap(
        await withOperations((ops) => ops.createKey({ name: opts.name, scopes, tenant: opts.tenant, expiresIn: opts.expires, limits, allowedIps })),
      );
      if (opts.json) return printJson(created);
      printLines([
        `Created key ${created.id} (${created.name}) for tenant ${created.tenant} with scopes ${created.scopes.join(', ')}.`,
        '',
        `  ${created.key}`,
        '',
        'This is the only time the key is shown. Store it in a secret manager now.',
      ]);
    });

  keys
    .command('list')
    .description('list keys (active and expired; add --all for revoked ones)')
    .option('--tenant <id>', 'only this tenant')
    .option('--all', 'include revoked keys')
    .option('--json', 'print JSON')
    .action(async (opts: { tenant?: string; all?: boolean; json?: boolean }) => {
      const list = unwrap(await withOperations((ops) => ops.listKeys({ tenant: opts.tenant, includeRevoked: opts.all ?? false })));
      if (opts.json) return printJson(list);
      if (list.length === 0) return printLines(['No keys.']);
      printTable(list.map(keyRow), ['id', 'name', 'tenant', 'scopes', 'status', 'expires', 'last used']);
    });

  keys
    .command('show <id>')
    .description('show one key (never its secret)')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { json?: boolean }) => {
      const key = unwrap(await withOperations((ops) => ops.getKey(id)));
      if (opts.json) return printJson(key);
      printLines(keyDetails(key));
    });

  keys
    .command('rename <id> <name>')
    .description('rename a key')
    .option('--json', 'print JSON')
    .action(async (id: string, name: string, opts: { json?: boolean }) => {
      const key = unwrap(await withOperations((ops) => ops.renameKey(id, name)));
      if (opts.json) return printJson(key);
      printLines([`Renamed key ${key.id} to "${key.name}".`]);
    });

  keys
    .command('revoke <id>')
    .description('revoke a key; running servers refuse it within a second')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { json?: boolean }) => {
      const key = unwrap(await withOperations((ops) => ops.revokeKey(id)));
      if (opts.json) return printJson(key);
      printLines([`Revoked key ${key.id} (${key.name}) at ${key.revokedAt}.`]);
    });

  keys
    .command('rotate <id>')
    .description('issue a new secret for a key; the old one is revoked, or expires after --grace')
    .option('--grace <duration>', 'keep the old key working this long, e.g. 1h')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { grace?: string; json?: boolean }) => {
      const rotated = unwrap(await withOperations((ops) => ops.rotateKey(id, { grace: opts.grace })));
      if (opts.json) return printJson(rotated);
      const old = rotated.previous.status === 'revoked' ? 'revoked now' : `valid until ${rotated.previous.expiresAt}`;
      printLines([
        `Rotated key ${id}: the new key is ${rotated.id}; the old one is ${old}.`,
        '',
        `  ${rotated.key}`,
        '',
        'This is the only time the key is shown. Store it in a secret manager now.',
      ]);
    });

  const tenants = program.command('tenants').description('create and list tenants');
  tenants
    .command('create <id>')
    .description('create a tenant (lower-case letters, digits, - and _)')
    .option('--name <name>', 'display name')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { name?: string; json?: boolean }) => {
      const tenant = unwrap(await withOperations((ops) => ops.createTenant(id, opts.name)));
      if (opts.json) return printJson(tenant);
      printLines([`Created tenant ${tenant.id} (${tenant.name}).`]);
    });
  tenants
    .command('list')
    .description('list tenants')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const list = unwrap(await withOperations((ops) => ops.listTenants()));
      if (opts.json) return printJson(list);
      if (list.length === 0) return printLines(['No tenants.']);
      printTable(list.map((t) => ({ id: t.id, name: t.name, created: shortTime(t.createdAt) })), ['id', 'name', 'created']);
    });
}
