/**
 * The scope vocabulary. Scopes are strings stored as data, so later features add new ones
 * without a migration:
 *
 *   read            list and view
 *   write           act: send messages, call tools, use the LLM (implies read)
 *   admin           everything, including key management
 *   <family>        a route family, e.g. `llm`, `mcp`, `agent`
 *   <family>:<name> one thing in a family, e.g. `tool:deploy`; `tool:*` grants the whole family
 */
import { SCOPE_PATTERN } from '../config/schema.js';

/** Whether the granted scopes satisfy one required scope. */
export function hasScope(granted: readonly string[], required: string): boolean {
  if (granted.includes('admin') || granted.includes(required)) return true;
  if (required === 'read' && granted.includes('write')) return true;
  const colon = required.indexOf(':');
  if (colon > 0 && granted.includes(`${required.slice(0, colon)}:*`)) return true;
  return false;
}

export function isValidScope(scope: string): boolean {
  return SCOPE_PATTERN.test(scope);
}

/** Parses a comma list of scopes; returns the invalid ones separately so callers can name them. */
export function parseScopes(list: string): { scopes: string[]; invalid: string[] } {
  const items = [...new Set(list.split(',').map((s) => s.trim()).filter(Boolean))];
  return { scopes: items.filter(isValidScope), invalid: items.filter((s) => !isValidScope(s)) };
}
