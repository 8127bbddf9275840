/**
 * The data dir's local state: the embedded database's exclusive lock, private files, and how
 * the CLI finds a running server.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openDatabase } from '../src/store/database.js';
import { DatabaseInUseError, lockEmbeddedDatabase, prepareDataDir, runningServer, writePrivateFile } from '../src/store/data-dir.js';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});
function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-dd-'));
  dirs.push(dir);
  return dir;
}

describe('the embedded database lock', () => {
  it('refuses a second open of the same embedded database while the first holds it', async () => {
    const dir = tempDir();
    const first = await openDatabase({ dataDir: dir });
    try {
      await expect(openDatabase({ dataDir: dir })).rejects.toBeInstanceOf(DatabaseInUseError);
    } finally {
      await first.close();
    }
    const again = await openDatabase({ dataDir: dir });
    await again.close();
  });

  it('takes over a lock left by a process that is gone', () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'db.lock'), '99999999\n');
    const release = lockEmbeddedDatabase(dir);
    expect(readFileSync(path.join(dir, 'db.lock'), 'utf8').trim()).toBe(String(process.pid));
    release();
    expect(() => readFileSync(path.join(dir, 'db.lock'))).toThrow();
  });
});

describe('data dir files', () => {
  it('makes the data dir private even when it already existed open', () => {
    const dir = path.join(tempDir(), 'data');
    mkdirSync(dir, { mode: 0o755 });
    chmodSync(dir, 0o755);
    prepareDataDir(dir);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
  });

  it('writes private files with mode 600', () => {
    const file = path.join(tempDir(), 'token');
    writePrivateFile(file, 'x');
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('ignores a server.json whose process is gone', () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'server.json'), JSON.stringify({ pid: 99999999, adminUrl: 'http://127.0.0.1:1' }));
    expect(runningServer(dir)).toBeUndefined();
  });
});
