/**
 * The table types the query layer checks every query against. One definition for PGlite and
 * PostgreSQL; `migrations.ts` creates exactly these columns.
 */
import type { ColumnType } from 'kysely';

type Timestamp = ColumnType<Date, Date | string, Date | string>;
/** A timestamp the database fills in when the insert leaves it out. */
type DefaultedTimestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type NullableTimestamp = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
/** jsonb: written as JSON text, read back parsed; defaulted by the database. */
type Json<T> = ColumnType<T, string | undefined, string>;

export interface TenantsTable {
  id: string;
  name: string;
  created_at: DefaultedTimestamp;
}

export interface ApiKeysTable {
  id: string;
  tenant_id: string;
  name: string;
  prefix: string;
  hash_alg: string;
  key_hash: string;
  scopes: string[];
  allowed_cidrs: ColumnType<string[], string[] | undefined, string[]>;
  limits: Json<Record<string, unknown>>;
  created_at: DefaultedTimestamp;
  expires_at: NullableTimestamp;
  revoked_at: NullableTimestamp;
  last_used_at: NullableTimestamp;
  rotated_from: string | null;
}

export interface AuditEventsTable {
  seq: ColumnType<string | number, never, never>;
  id: string;
  time: Timestamp;
  type: string;
  outcome: string;
  tenant_id: string | null;
  key_id: string | null;
  ip: string | null;
  user_agent: string | null;
  method: string | null;
  path: string | null;
  request_id: string | null;
  details: Json<Record<string, unknown>>;
  prev_hash: string;
  hash: string;
}

export interface RequestsTable {
  id: string;
  time: Timestamp;
  tenant_id: string;
  key_id: string;
  method: string;
  path: string;
  model: string | null;
  stream: boolean;
  status: number;
  error_type: string | null;
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
  cost_usd: number;
  latency_ms: number;
  first_token_ms: number | null;
  ip: string | null;
  user_agent: string | null;
  request_id: string | null;
  upstream_request_id: string | null;
  /** Encrypted (AES-256-GCM, row-bound) when body storage is on; otherwise null. */
  request_body: string | null;
  response_body: string | null;
}

export interface UpstreamCredentialsTable {
  tenant_id: string;
  type: string;
  /** The credential JSON, encrypted with the key ring, bound to the tenant. */
  secret: string;
  updated_at: DefaultedTimestamp;
}

/** A browser session on the admin listener. Only a hash of its id is kept; see migration 0003. */
export interface AdminSessionsTable {
  /** SHA-256 (hex) of the session id; the id is never stored. */
  id_hash: string;
  key_id: string;
  tenant_id: string;
  principal_kind: string;
  key_name: string;
  scopes: string[];
  /** The key's own expiry at login (the principal's `expiresAt`). */
  key_expires_at: NullableTimestamp;
  created_at: Timestamp;
  last_seen_at: Timestamp;
  /** Absolute end of the session, whatever its activity. */
  expires_at: Timestamp;
  ip: string | null;
  user_agent: string | null;
}

/** An MCP session on the public listener; see migration 0004. */
export interface McpSessionsTable {
  /** SHA-256 (hex) of the Mcp-Session-Id; the id is never stored. */
  id_hash: string;
  /** The first 16 hex characters of `id_hash`: what operators see and end sessions by. */
  ref: string;
  tenant_id: string;
  key_id: string;
  principal_kind: string;
  client_name: string | null;
  client_version: string | null;
  protocol_version: string;
  /** The client's `initialize` params (capabilities, client info), to rebuild the session after a restart. */
  init_params: Json<Record<string, unknown>>;
  created_at: Timestamp;
  last_seen_at: Timestamp;
  /** Absolute end of the session, whatever its activity. */
  expires_at: Timestamp;
}

/** One stored SSE event of an MCP session, encrypted; see migration 0004. */
export interface McpEventsTable {
  id: string;
  seq: ColumnType<string | number, never, never>;
  session_hash: string;
  stream_id: string;
  payload: string;
  created_at: DefaultedTimestamp;
}

/** A conversation with Bulwark's agent; see migration 0005. */
export interface AgentSessionsTable {
  id: string;
  tenant_id: string;
  /** The key that started it. */
  key_id: string;
  turns: ColumnType<number, number | undefined, number>;
  /** The Messages API history, encrypted with the key ring, bound to tenant and id. */
  history: string;
  created_at: Timestamp;
  updated_at: Timestamp;
}

/** A single-use ticket for `GET /api/events?ticket=`; see migration 0005. */
export interface EventTicketsTable {
  id_hash: string;
  /** The principal the ticket stands for (kind, tenant, key, scopes). */
  principal: Json<Record<string, unknown>>;
  /** The Origin it was issued to; redeeming needs the same. */
  origin: string | null;
  expires_at: Timestamp;
}

export interface Tables {
  tenants: TenantsTable;
  api_keys: ApiKeysTable;
  audit_events: AuditEventsTable;
  requests: RequestsTable;
  upstream_credentials: UpstreamCredentialsTable;
  admin_sessions: AdminSessionsTable;
  mcp_sessions: McpSessionsTable;
  mcp_events: McpEventsTable;
  agent_sessions: AgentSessionsTable;
  event_tickets: EventTicketsTable;
}
