// Runs a docker credential helper ("docker-credential-<name> get", the server URL on stdin, JSON on
// stdout), the way docker does for `credsStore` and `credHelpers`. A deadline kills a helper that hangs
// (a keychain prompt nobody answers), so a pull fails with a reason instead of waiting forever.
import { spawn } from 'node:child_process';
import { RegistryError } from './errors.ts';
import type { Credentials } from './docker-config.ts';

export interface HelperOptions {
  timeoutMs: number;
  /** The helper's environment (its PATH is where it is looked up). */
  env?: NodeJS.ProcessEnv;
}

// What docker-credential-helpers print (and exit non-zero with) when they hold nothing for the server.
const NOT_FOUND = /credentials not found/i;

/** The helper's credentials for serverUrl; undefined when it has none. */
export async function runCredentialHelper(name: string, serverUrl: string, opts: HelperOptions): Promise<Credentials | undefined> {
  const command = `docker-credential-${name}`;
  const fail = (why: string, error?: unknown): RegistryError =>
    new RegistryError({
      reason: 'CredentialHelperFailed',
      detail: `credential helper ${command} for ${serverUrl}: ${why}`,
      error,
    });
  const result = await new Promise<{ code: number | null; stdout: string; stderr: string; timedOut: boolean }>(
    (resolve, reject) => {
      // Its own process group, so that a deadline also kills what a helper script started (a
      // grandchild holding our pipes open would otherwise delay 'close' until it exits).
      const child = spawn(command, ['get'], { env: opts.env ?? process.env, stdio: 'pipe', detached: true });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      const timer = setTimeout(() => {
        try {
          if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
        } catch {
          child.kill('SIGKILL');
        }
        child.stdout.destroy();
        child.stderr.destroy();
        resolve({ code: null, stdout: '', stderr: '', timedOut: true });
      }, opts.timeoutMs);
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      child.on('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(
          e.code === 'ENOENT'
            ? fail(`not found on PATH (it is named in the docker config's credsStore/credHelpers)`, e)
            : fail(`cannot run: ${e.message}`, e),
        );
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), timedOut: false });
      });
      child.stdin.on('error', () => {}); // A helper that exits without reading stdin: its exit code says more.
      child.stdin.end(serverUrl);
    },
  );
  if (result.timedOut) throw fail(`no answer within ${opts.timeoutMs} ms`);
  if (result.code !== 0) {
    const said = (result.stdout.trim() || result.stderr.trim()).slice(0, 200);
    if (NOT_FOUND.test(said)) return undefined;
    throw fail(`exited with ${result.code}${said ? `: ${said}` : ''}`);
  }
  let parsed: { Username?: unknown; Secret?: unknown };
  try {
    parsed = JSON.parse(result.stdout) as typeof parsed;
  } catch {
    throw fail('printed something other than JSON');
  }
  const username = typeof parsed.Username === 'string' ? parsed.Username : '';
  const secret = typeof parsed.Secret === 'string' ? parsed.Secret : '';
  if (!secret) return undefined;
  // docker's convention: the user "<token>" means the secret is an identity (refresh) token.
  return username === '<token>' ? { identityToken: secret } : { username, password: secret };
}
