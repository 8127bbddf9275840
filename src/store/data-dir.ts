/**
 * The data dir's local state besides the database: created with mode 700; while a server runs
 * it holds `server.json` (pid and admin URL) and `admin.token` (mode 600), which is how the CLI
 * finds the server that owns the embedded database and authenticates to its admin API instead
 * of opening that database a second time (PGlite is one process's database).
 */
import { chmodSync, closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';

export interface ServerInfo {
  pid: number;
  adminUrl: string;
  publicUrl: string;
  database: 'pglite' | 'postgres';
  startedAt: string;
}

const INFO_FILE = 'server.json';
const TOKEN_FILE = 'admin.token';

export function prepareDataDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // mkdir's mode is masked by umask and ignored for an existing dir: set it explicitly.
  if ((statSync(dir).mode & 0o077) !== 0) chmodSync(dir, 0o700);
}

/** Writes a file readable by its owner only, atomically (write to a temp name, then rename). */
export function writePrivateFile(file: string, content: string): void {
  const temp = `${file}.${process.pid}.tmp`;
  const fd = openSync(temp, 'w', 0o600);
  try {
    writeSync(fd, content);
    // On disk before the rename: after a crash the file holds the old content or the new, whole.
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  chmodSync(temp, 0o600);
  renameSync(temp, file);
  try {
    const dir = openSync(path.dirname(file), 'r');
    fsyncSync(dir);
    closeSync(dir);
  } catch {
    // some file systems cannot fsync a directory; the rename itself is still atomic
  }
}

/** Whether `pid` names a live process; anything that is not a positive integer does not. */
export function isProcessAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The server currently running on this data dir, or undefined (stale files are ignored). */
export function runningServer(dir: string): ServerInfo | undefined {
  let info: ServerInfo;
  try {
    info = JSON.parse(readFileSync(path.join(dir, INFO_FILE), 'utf8')) as ServerInfo;
  } catch {
    return undefined;
  }
  if (info.pid === process.pid || !isProcessAlive(info.pid)) return undefined;
  return info;
}

export function readAdminToken(dir: string): string | undefined {
  try {
    return readFileSync(path.join(dir, TOKEN_FILE), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

export function publishServer(dir: string, info: ServerInfo, adminToken: string): void {
  writePrivateFile(path.join(dir, TOKEN_FILE), `${adminToken}\n`);
  writePrivateFile(path.join(dir, INFO_FILE), `${JSON.stringify(info, null, 2)}\n`);
}

/** Removes the files if they still describe this process. */
export function unpublishServer(dir: string): void {
  try {
    const info = JSON.parse(readFileSync(path.join(dir, INFO_FILE), 'utf8')) as ServerInfo;
    if (info.pid !== process.pid) return;
  } catch {
    return;
  }
  rmSync(path.join(dir, INFO_FILE), { force: true });
  rmSync(path.join(dir, TOKEN_FILE), { force: true });
}

/** The embedded database is held by another live process. */
export class DatabaseInUseError extends Error {
  readonly pid: number;
  constructor(pid: number, dir: string) {
    super(`the embedded database in ${dir} is in use by process ${pid} (a server, or another bulwark command); try again when it has finished`);
    this.name = 'DatabaseInUseError';
    this.pid = pid;
  }
}

/**
 * Takes the embedded database's exclusive lock (`<dir>/db.lock`, holding our pid), taking over
 * a lock whose process is gone. PGlite is one process's database: two processes on one data
 * dir would corrupt it. Returns the release function.
 */
export function lockEmbeddedDatabase(dir: string): () => void {
  const file = path.join(dir, 'db.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(file, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      return () => {
        try {
          if (readFileSync(file, 'utf8').trim() === String(process.pid)) rmSync(file, { force: true });
        } catch {
          // already gone
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(readFileSync(file, 'utf8').trim());
      if (isProcessAlive(holder)) {
        throw new DatabaseInUseError(holder, dir);
      }
      rmSync(file, { force: true }); // stale: its process is gone
    }
  }
  throw new Error(`could not take the lock ${file}`);
}
