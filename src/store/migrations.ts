/**
 * The one migration set for PGlite and PostgreSQL, applied in order and recorded in
 * `schema_migrations`. Kysely's migrator takes an advisory lock, so several instances starting
 * together against one PostgreSQL apply each migration once.
 */
import { type Kysely, type Migration, type MigrationProvider, Migrator, sql } from 'kysely';
import type { Database } from './database.js';
import type { Tables } from './tables.js';

const MIGRATIONS: Record<string, Migration> = {
  '0001_foundation': {
    async up(db) {
      await sql`
        create table tenants (
          id text primary key,
          name text not null,
          created_at timestamptz not null default now()
        )`.execute(db);
      await sql`
        create table api_keys (
          id text primary key,
          tenant_id text not null references tenants(id),
          name text not null,
          prefix text not null,
          hash_alg text not null,
          key_hash text not null,
          scopes text[] not null,
          allowed_cidrs text[] not null default '{}',
          limits jsonb not null default '{}',
          created_at timestamptz not null default now(),
          expires_at timestamptz,
          revoked_at timestamptz,
          last_used_at timestamptz,
          rotated_from text
        )`.execute(db);
      await sql`create index api_keys_tenant_idx on api_keys (tenant_id, created_at)`.execute(db);
      await sql`
        create table audit_events (
          seq bigserial primary key,
          id text not null unique,
          time timestamptz not null,
          type text not null,
          outcome text not null,
          tenant_id text,
          key_id text,
          ip text,
          user_agent text,
          method text,
          path text,
          request_id text,
          details jsonb not null default '{}',
          prev_hash text not null,
          hash text not null
        )`.execute(db);
      await sql`create index audit_events_type_idx on audit_events (type, seq)`.execute(db);
      await sql`create index audit_events_time_idx on audit_events (time)`.execute(db);
    },
  },
  '0002_proxy': {
    async up(db) {
      // One row per proxied call. `id` is ours (random); the client-influenced request id is a
      // plain column, so a client cannot collide rows.
      await sql`
        create table requests (
          id text primary key,
          time timestamptz not null,
          tenant_id text not null,
          key_id text not null,
          method text not null,
          path text not null,
          model text,
          stream boolean not null default false,
          status integer not null,
          error_type text,
          input_tokens integer not null default 0,
          output_tokens integer not null default 0,
          cache_creation_input_tokens integer not null default 0,
          cache_read_input_tokens integer not null default 0,
          cost_usd double precision not null default 0,
          latency_ms integer not null,
          first_token_ms integer,
          ip text,
          user_agent text,
          request_id text,
          upstream_request_id text,
          request_body text,
          response_body text
        )`.execute(db);
      await sql`create index requests_tenant_time_idx on requests (tenant_id, time)`.execute(db);
      await sql`create index requests_time_idx on requests (time)`.execute(db);
      await sql`create index requests_key_time_idx on requests (key_id, time)`.execute(db);
      // Upstream credentials kept in the store: the whole credential JSON, encrypted.
      await sql`
        create table upstream_credentials (
          tenant_id text primary key references tenants(id),
          type text not null,
          secret text not null,
          updated_at timestamptz not null default now()
        )`.execute(db);
    },
  },
  '0003_admin_sessions': {
    async up(db) {
      // Browser sessions on the admin listener. The row is keyed by SHA-256 of the session id;
      // the id itself lives only in the browser's HttpOnly cookie, so a copy of this table
      // cannot be replayed as a cookie. No CSRF token is stored either: it is an HMAC of the
      // session id (src/auth/sessions.ts), so the server recomputes it from the cookie and a
      // leaked table holds nothing an attacker can send. The principal is copied in so a
      // request costs one lookup; the key's validity is re-checked on every request anyway.
      await sql`
        create table admin_sessions (
          id_hash text primary key,
          key_id text not null,
          tenant_id text not null,
          principal_kind text not null,
          key_name text not null,
          scopes text[] not null,
          key_expires_at timestamptz,
          created_at timestamptz not null,
          last_seen_at timestamptz not null,
          expires_at timestamptz not null,
          ip text,
          user_agent text
        )`.execute(db);
      // purgeExpired deletes by absolute expiry or by idleness; destroyForKey by key.
      await sql`create index admin_sessions_expires_idx on admin_sessions (expires_at)`.execute(db);
      await sql`create index admin_sessions_last_seen_idx on admin_sessions (last_seen_at)`.execute(db);
      await sql`create index admin_sessions_key_idx on admin_sessions (key_id)`.execute(db);
    },
  },
  '0004_mcp': {
    async up(db) {
      // MCP sessions (src/mcp/sessions.ts). Keyed, like admin sessions, by SHA-256 of the
      // Mcp-Session-Id: the id travels only in the client's header. `ref` is a short public
      // handle (a prefix of that hash) for operators listing and ending sessions. A session
      // belongs to the key that opened it (`key_id`); `init_params` is the client's initialize
      // request, kept so a restarted server can rebuild the session's protocol state.
      await sql`
        create table mcp_sessions (
          id_hash text primary key,
          ref text not null unique,
          tenant_id text not null,
          key_id text not null,
          principal_kind text not null,
          client_name text,
          client_version text,
          protocol_version text not null,
          init_params jsonb not null,
          created_at timestamptz not null,
          last_seen_at timestamptz not null,
          expires_at timestamptz not null
        )`.execute(db);
      await sql`create index mcp_sessions_key_idx on mcp_sessions (key_id)`.execute(db);
      await sql`create index mcp_sessions_expires_idx on mcp_sessions (expires_at)`.execute(db);
      // The resumable SSE history (src/mcp/event-store.ts). `payload` is AES-256-GCM ciphertext
      // bound to session, stream and event id; `seq` orders a stream's events for replay.
      await sql`
        create table mcp_events (
          id text primary key,
          seq bigserial not null,
          session_hash text not null,
          stream_id text not null,
          payload text not null,
          created_at timestamptz not null default now()
        )`.execute(db);
      await sql`create index mcp_events_stream_idx on mcp_events (session_hash, stream_id, seq)`.execute(db);
      // Trimming a session to its newest events orders the whole session by seq.
      await sql`create index mcp_events_session_idx on mcp_events (session_hash, seq)`.execute(db);
      await sql`create index mcp_events_created_idx on mcp_events (created_at)`.execute(db);
    },
  },
  '0005_agent_sessions': {
    async up(db) {
      // Conversations with Bulwark's own agent (src/agent/). A session belongs to a tenant; its
      // history (the Messages API turns, tool calls included) is AES-256-GCM ciphertext bound to
      // the tenant and the session id, like request bodies.
      await sql`
        create table agent_sessions (
          id text primary key,
          tenant_id text not null,
          key_id text not null,
          turns integer not null default 0,
          history text not null,
          created_at timestamptz not null,
          updated_at timestamptz not null
        )`.execute(db);
      await sql`create index agent_sessions_tenant_idx on agent_sessions (tenant_id, updated_at)`.execute(db);
      // Single-use tickets for browsers' EventSource on /api/events (src/agent/tickets.ts): kept
      // as SHA-256 of the ticket, deleted when redeemed, so a ticket works once on any instance.
      await sql`
        create table event_tickets (
          id_hash text primary key,
          principal jsonb not null,
          origin text,
          expires_at timestamptz not null
        )`.execute(db);
      await sql`create index event_tickets_expires_idx on event_tickets (expires_at)`.execute(db);
    },
  },
};

/** Every migration, in the order they apply. */
export const MIGRATION_NAMES: readonly string[] = Object.keys(MIGRATIONS).sort();

class InCodeProvider implements MigrationProvider {
  async getMigrations(): Promise<Record<string, Migration>> {
    return MIGRATIONS;
  }
}

function migrator(db: Kysely<Tables>, schema: string): Migrator {
  return new Migrator({
    db,
    provider: new InCodeProvider(),
    // Named explicitly: Kysely looks for its tables across all schemas otherwise, and would
    // mistake another deployment's tables on the same PostgreSQL for ours.
    migrationTableSchema: schema,
    migrationTableName: 'schema_migrations',
    migrationLockTableName: 'schema_migrations_lock',
  });
}

export interface MigrationReport {
  applied: string[];
  pending: string[];
}

/** Applies every pending migration. Throws with the failing migration's name. */
export async function migrateToLatest(database: Database): Promise<MigrationReport> {
  const { error, results = [] } = await migrator(database.db, database.schema).migrateToLatest();
  if (error) {
    const failed = results.find((r) => r.status === 'Error')?.migrationName ?? 'unknown';
    throw new Error(`migration ${failed} failed: ${(error as Error).message ?? String(error)}`);
  }
  return { applied: results.filter((r) => r.status === 'Success').map((r) => r.migrationName), pending: [] };
}

/** Names of migrations not yet applied, without applying them. */
export async function pendingMigrations(database: Database): Promise<string[]> {
  const all = await migrator(database.db, database.schema).getMigrations();
  return all.filter((m) => !m.executedAt).map((m) => m.name);
}
