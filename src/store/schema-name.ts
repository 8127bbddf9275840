/**
 * The one rule for a PostgreSQL schema name Bulwark writes into SQL (`create schema`,
 * `search_path`): a plain lower-case identifier, so it never needs quoting and cannot carry SQL.
 */
export const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/** Throws, naming the value, when `schema` is not such a name. */
export function assertSchemaName(schema: string): void {
  if (!SCHEMA_NAME.test(schema)) throw new Error(`schema: '${schema}' is not a lower-case SQL identifier`);
}
