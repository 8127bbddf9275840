/**
 * Input checking at the HTTP edge: a JSON body or a query parsed by a zod schema, with a 400
 * that names the field. Bodies that are not JSON get `invalid_json`.
 */
import type { Context } from 'hono';
import type { z } from 'zod';
import { parseJsonBody } from '../security/json.js';
import { ApiError } from './errors.js';

function describe(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((issue) => `${issue.path.map(String).join('.') || 'body'}: ${issue.message}`)
    .join('; ');
}

export async function readJson<S extends z.ZodType>(c: Context, schema: S): Promise<z.infer<S>> {
  const type = c.req.header('content-type') ?? '';
  if (!/^application\/(.+\+)?json\b/i.test(type)) {
    throw new ApiError('bad_request', 'Send the body as JSON with Content-Type: application/json.');
  }
  // Counted against the route's body limit while read; depth checked before parsing.
  const body = parseJsonBody(await c.req.text());
  const result = schema.safeParse(body);
  if (!result.success) throw new ApiError('validation_failed', describe(result.error));
  return result.data;
}

export function readQuery<S extends z.ZodType>(c: Context, schema: S): z.infer<S> {
  const result = schema.safeParse(c.req.query());
  if (!result.success) throw new ApiError('validation_failed', describe(result.error));
  return result.data;
}
