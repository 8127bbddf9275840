/**
 * OAuth 2.0 Protected Resource Metadata (RFC 9728) for `/mcp`, as the MCP authorization spec
 * asks: clients that get a 401 follow `resource_metadata` in the challenge to this document,
 * learn which authorization server issues tokens for this resource, and ask it for a token
 * whose audience is the resource URL (RFC 8707).
 *
 * Served at `/.well-known/oauth-protected-resource/mcp` (RFC 9728 §3.1: the well-known prefix
 * inserted before the resource's path) and at `/.well-known/oauth-protected-resource` for
 * clients that look there first. Both are public: they describe, they grant nothing.
 */
import type { Context } from 'hono';
import { Hono } from 'hono';
import type { BulwarkEnv } from '../http/context.js';

export const MCP_PATH = '/mcp';
const WELL_KNOWN = '/.well-known/oauth-protected-resource';

export interface ResourceMetadataOptions {
  /** `server.publicUrl`; without it, the origin the request came to (its Host was checked). */
  publicUrl: string | undefined;
  /** Issuers whose access tokens `/mcp` accepts (the configured OIDC provider). */
  authorizationServers: readonly string[];
  /** Scopes worth asking for: the base ones and every per-tool scope in use. */
  scopes(): readonly string[];
}

/** The public origin of the listener, without a trailing slash. */
export function publicOrigin(c: Context, publicUrl: string | undefined): string {
  if (publicUrl) return publicUrl.replace(/\/+$/, '');
  return new URL(c.req.url).origin;
}

export function mcpResourceUrl(c: Context, publicUrl: string | undefined): string {
  return `${publicOrigin(c, publicUrl)}${MCP_PATH}`;
}

export function resourceMetadataUrl(c: Context, publicUrl: string | undefined): string {
  return `${publicOrigin(c, publicUrl)}${WELL_KNOWN}${MCP_PATH}`;
}

export function resourceMetadataRoutes(options: ResourceMetadataOptions): Hono<BulwarkEnv> {
  const document = (c: Context<BulwarkEnv>) =>
    c.json(
      {
        resource: mcpResourceUrl(c, options.publicUrl),
        // Optional in RFC 9728; left out rather than empty when no provider's tokens are taken here.
        ...(options.authorizationServers.length > 0 ? { authorization_servers: [...options.authorizationServers] } : {}),
        scopes_supported: [...options.scopes()],
        bearer_methods_supported: ['header'],
        resource_name: 'Bulwark MCP gateway',
      },
      200,
      { 'cache-control': 'public, max-age=300' },
    );
  return new Hono<BulwarkEnv>().get(WELL_KNOWN, document).get(`${WELL_KNOWN}${MCP_PATH}`, document);
}
