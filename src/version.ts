/** Bulwark's version, from package.json (one source of truth for /health, the CLI and audit). */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
export const VERSION: string = (require('../package.json') as { version: string }).version;
