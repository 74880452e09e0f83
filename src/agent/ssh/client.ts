// vmlet's SSH fallback: exec in a VM that has no vmlet agent but runs an SSH server (stock macOS images
// such as Cirrus Labs' Tart ones). One SshConnection per VM carries many execs, each a channel of its
// own. Its exec has the agent exec's shape — stdin/stdout/stderr streams, resize(), signal(), an exit
// promise — so callers (kubectl exec, probes) need not care which path reached the guest.
//
// Names follow the agent's host client (src/agent/host/client.ts): SshExec is its ExecProcess without
// the pid. What SSH cannot carry exactly, and what is done instead:
// - argv: SSH carries one command string for the login shell; quote.ts writes argv so that nothing in it
//   can escape its word.
// - env: most servers refuse env requests (OpenSSH's AcceptEnv is nearly empty), so env goes through
//   `env NAME=value` in that same quoted line.
// - signals: RFC 4254's "signal" request has no reply, so a server that ignores it cannot be detected;
//   dropbear and current OpenSSH deliver it. signal() says so in its doc, and `exited` shows whether the
//   program died of it.
// - user: none; SSH runs as the user it logged in as.
// - pid: SSH does not tell it.
import { constants as osConstants } from 'node:os';
import { PassThrough } from 'node:stream';
import { Client, type AnyAuthMethod, type AuthHandlerMiddleware, type ClientChannel, type SFTPWrapper } from 'ssh2';
import type { ExecProcess, ExitInfo } from '../host/client.ts';
import { authMethods, type SshCredentials } from './credentials.ts';
import { checkHostKey, type HostKeyCheck } from './host-key.ts';
import { commandLine, type CommandLineSpec, type ShellWord } from './quote.ts';

export interface SshConnectOptions {
  host: string;
  port?: number;
  credentials: SshCredentials;
  /** The VM's host key pin file (host-key.ts): written on first use, enforced afterwards. */
  hostKeyFile: string;
  /** Bound on TCP connect + SSH handshake + authentication together. Default 10 s. */
  timeoutMs?: number;
  /** SSH keepalives on an idle connection, so a dead VM is noticed. Default 15 s; 0 turns them off. */
  keepaliveIntervalMs?: number;
}

/**
 * Why a connection failed, for callers that retry (a booting VM refuses, closes or times out) or give up
 * (wrong credentials, a changed host key).
 */
export type SshErrorReason = 'auth' | 'host-key-changed' | 'refused' | 'closed' | 'timeout' | 'unreachable' | 'other';

export class SshError extends Error {
  constructor(
    readonly reason: SshErrorReason,
    /** host:port */
    readonly address: string,
    message: string,
  ) {
    super(message);
    this.name = 'SshError';
  }

  /** True for failures a VM that is still booting shows; false where trying again cannot help. */
  get retryable(): boolean {
    return this.reason === 'refused' || this.reason === 'closed' || this.reason === 'timeout';
  }
}

/**
 * What to run: the agent's ExecOptions (src/agent/host/client.ts) minus `user` (SSH runs as the user
 * it logged in as), with argv words that may be bytes.
 */
export interface SshExecOptions {
  /** The program and its arguments. Exactly one of argv and shell. */
  argv?: readonly ShellWord[];
  /** A shell line, run as /bin/sh -c LINE (not by the login shell, which may be zsh). */
  shell?: string;
  env?: CommandLineSpec['env'];
  cwd?: ShellWord;
  /** Keep stdin open (a Writable); else the program's stdin sees end-of-file at once. */
  stdin?: boolean;
  /** A pseudo-terminal of this size ($TERM defaults to xterm-256color); stderr then arrives on stdout. */
  tty?: { rows: number; cols: number; term?: string };
}

/**
 * One program running over SSH: the agent's ExecProcess without `pid` (SSH does not say it). exitCode
 * follows the agent's convention: 128 + the signal's number (this host's numbering) when killed.
 */
export type SshExec = Omit<ExecProcess, 'pid'>;

export interface SshRunResult extends ExitInfo {
  stdout: Buffer;
  stderr: Buffer;
}

const DEFAULT_TIMEOUT_MS = 10_000;
// The signal names RFC 4254 section 6.10 defines; ssh2 refuses others.
const SIGNALS = new Set(['ABRT', 'ALRM', 'FPE', 'HUP', 'ILL', 'INT', 'KILL', 'PIPE', 'QUIT', 'SEGV', 'TERM', 'USR1', 'USR2']);

export class SshConnection {
  private closedFlag = false;
  private readonly closedPromise: Promise<void>;

  private constructor(
    private readonly client: Client,
    /** host:port */
    readonly address: string,
    readonly username: string,
    /** The server's key as checked against the pin file. */
    readonly hostKey: Extract<HostKeyCheck, { ok: true }>,
    /** The server's software version from its greeting, e.g. "dropbear_2022.83". */
    readonly serverSoftware: string,
  ) {
    this.closedPromise = new Promise((resolve) => client.once('close', () => {
      this.closedFlag = true;
      resolve();
    }));
  }

  /** Connects, checks the host key against its pin, and logs in. Fails with an SshError in one line. */
  static async connect(opts: SshConnectOptions): Promise<SshConnection> {
    const port = opts.port ?? 22;
    const address = `${opts.host}:${port}`;
    const creds = opts.credentials;
    const who = `ssh to ${address} as ${creds.username}`;
    const client = new Client();
    const methods = authMethods(creds);
    const tried: string[] = [];
    let serverOffers: string[] | undefined;
    let hostKey: HostKeyCheck | undefined;
    let hostKeyError: Error | undefined;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;

    return new Promise<SshConnection>((resolve, reject) => {
      let settled = false;
      const fail = (err: SshError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        client.removeAllListeners('ready');
        client.on('error', () => {}); // late errors from a connection being torn down
        // ssh2's end() only half-closes, and its destroy() skips a socket that is no longer writable:
        // against a server that never answers, the socket would stay open. Destroy it outright.
        const sock = (client as unknown as { _sock?: { destroy(): void } })._sock;
        client.end();
        sock?.destroy();
        reject(err);
      };
      const timer = setTimeout(() => {
        fail(new SshError('timeout', address, `${who}: no SSH session within ${seconds(timeoutMs)} (connect, handshake and login)`));
      }, timeoutMs);

      client.on('ready', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        const software = (client as unknown as { _remoteVer?: string })._remoteVer ?? 'unknown';
        resolve(new SshConnection(client, address, creds.username, hostKey as Extract<HostKeyCheck, { ok: true }>, software));
      });
      client.on('error', (err: Error & { level?: string; code?: string }) => {
        if (hostKey && !hostKey.ok) {
          const msg = `${who}: host key changed: ${opts.hostKeyFile} pins ${hostKey.pinned.fingerprint} (${hostKey.pinned.keyType}) ` +
            `but the server offers ${hostKey.fingerprint} (${hostKey.keyType}); if the VM was re-created on purpose, delete ${opts.hostKeyFile}`;
          fail(new SshError('host-key-changed', address, msg));
        } else if (hostKeyError) {
          fail(new SshError('other', address, `${who}: cannot check the host key: ${hostKeyError.message}`));
        } else if (err.level === 'client-authentication') {
          const offered = serverOffers ? `; the server offers ${serverOffers.join(', ')}` : '';
          const why = tried.length ? `tried ${tried.join(', ')}` : `have ${methods.join(', ')}`;
          fail(new SshError('auth', address, `${who}: authentication failed (${why}${offered})`));
        } else if (err.code === 'ECONNREFUSED') {
          fail(new SshError('refused', address, `${who}: connection refused (is the SSH server running?)`));
        } else if (err.code === 'ETIMEDOUT') {
          fail(new SshError('timeout', address, `${who}: TCP connect timed out`));
        } else if (err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH' || err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') {
          fail(new SshError('unreachable', address, `${who}: ${err.code === 'ENOTFOUND' ? 'no such host' : 'host unreachable'} (${err.code})`));
        } else if (/before handshake|ECONNRESET/.test(`${err.message} ${err.code ?? ''}`)) {
          // A port forward (QEMU's user network) accepts before the guest listens, then hangs up.
          fail(new SshError('closed', address, `${who}: the connection closed before the SSH handshake (server not ready?)`));
        } else {
          fail(new SshError('other', address, `${who}: ${err.message}`));
        }
      });
      client.on('close', () => {
        fail(new SshError('closed', address, `${who}: the connection closed before login`));
      });

      client.connect({
        host: opts.host,
        port,
        username: creds.username,
        readyTimeout: 0, // the timer above bounds connect, handshake and login together
        keepaliveInterval: opts.keepaliveIntervalMs ?? 15_000,
        keepaliveCountMax: 3,
        hostVerifier: (key: Buffer, verify: (ok: boolean) => void) => {
          checkHostKey(opts.hostKeyFile, key, address).then(
            (check) => {
              hostKey = check;
              verify(check.ok);
            },
            (err: Error) => {
              hostKeyError = err;
              verify(false);
            },
          );
        },
        authHandler: ((methodsLeft: string[] | null, _partial: boolean | null, next: (m: AnyAuthMethod | false) => void) => {
          // methodsLeft is null on the first call, then the server's list after each failure.
          if (methodsLeft) serverOffers = methodsLeft;
          const method = methods.find((m) => !tried.includes(m) && (!methodsLeft || methodsLeft.includes(m)));
          if (!method) return next(false);
          tried.push(method);
          const username = creds.username;
          if (method === 'publickey') {
            const m: AnyAuthMethod = { type: 'publickey', username, key: creds.privateKey! };
            if (creds.passphrase !== undefined) m.passphrase = creds.passphrase;
            return next(m);
          }
          if (method === 'password') return next({ type: 'password', username, password: creds.password ?? '' });
          return next({
            type: 'keyboard-interactive',
            username,
            // Every prompt gets the password: PAM asks "Password:" (in the user's language).
            prompt: (_n: string, _i: string, _l: string, prompts: unknown[], finish: (answers: string[]) => void) =>
              finish(prompts.map(() => creds.password ?? '')),
          });
        }) as unknown as AuthHandlerMiddleware,
      });
    });
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** Resolves when the connection is gone, closed by either side. */
  whenClosed(): Promise<void> {
    return this.closedPromise;
  }

  /** Starts a program on the server; see SshExec. Rejects (SshError) if the server refuses the channel. */
  async exec(opts: SshExecOptions): Promise<SshExec> {
    if ((opts.argv === undefined) === (opts.shell === undefined)) throw new Error('exec: give exactly one of argv and shell');
    const spec: CommandLineSpec = { argv: opts.argv ?? ['/bin/sh', '-c', opts.shell!] };
    if (opts.env !== undefined) spec.env = opts.env;
    if (opts.cwd !== undefined) spec.cwd = opts.cwd;
    return this.execLine(commandLine(spec), opts);
  }

  /**
   * Runs a script as the user's login shell reads it (`$SHELL -c script`): for vmlet's own
   * multi-command steps (installing the agent), never for a user's argv.
   */
  async execScript(script: string, opts: Pick<SshExecOptions, 'stdin' | 'tty'> = {}): Promise<SshExec> {
    return this.execLine(Buffer.from(script), opts);
  }

  /** exec() to the end with `input` as stdin (else none), collecting stdout and stderr as bytes. */
  async run(opts: Omit<SshExecOptions, 'stdin' | 'tty'> & { input?: Buffer | string }): Promise<SshRunResult> {
    const { input, ...rest } = opts;
    return collect(await this.exec({ ...rest, stdin: input !== undefined }), input);
  }

  /** execScript() to the end, like run(). */
  async runScript(script: string, input?: Buffer | string): Promise<SshRunResult> {
    return collect(await this.execScript(script, { stdin: input !== undefined }), input);
  }

  /** An SFTP session, or undefined if the server has no SFTP subsystem (dropbear without sftp-server). */
  async sftp(): Promise<SFTPWrapper | undefined> {
    return new Promise((resolve) => {
      this.client.sftp((err, sftp) => resolve(err ? undefined : sftp));
    });
  }

  close(): void {
    this.client.end();
  }

  private async execLine(line: Buffer, opts: Pick<SshExecOptions, 'stdin' | 'tty'>): Promise<SshExec> {
    try {
      return await this.execOnce(line, opts);
    } catch (err) {
      // A server may refuse a session channel for a moment (OpenSSH's MaxSessions while earlier channels
      // close): once more, shortly after, before the refusal is the answer. Only a refused channel: an
      // exec request answered with a failure may still have run the command (dropbear did, for an exec
      // opened while an SFTP channel closed), and a script must not run twice.
      if (!(err instanceof SshError) || err.reason !== 'other' || this.closedFlag || !/Channel open failure/.test(err.message)) throw err;
      await new Promise((r) => setTimeout(r, 250));
      return this.execOnce(line, opts);
    }
  }

  private execOnce(line: Buffer, opts: Pick<SshExecOptions, 'stdin' | 'tty'>): Promise<SshExec> {
    const tty = opts.tty;
    const what = `ssh to ${this.address} as ${this.username}`;
    if (this.closedFlag) return Promise.reject(new SshError('closed', this.address, `${what}: the connection is closed`));
    const pty = tty ? { rows: tty.rows, cols: tty.cols, term: tty.term ?? 'xterm-256color' } : false;
    return new Promise((resolve, reject) => {
      // ssh2 types exec's command as a string, but sends a Buffer as-is: argv bytes need not be UTF-8.
      this.client.exec(line as unknown as string, { pty }, (err, channel) => {
        if (err) {
          reject(new SshError('other', this.address, `${what}: exec refused: ${err.message}`));
          return;
        }
        resolve(wrapChannel(channel, what, opts));
      });
    });
  }
}

function wrapChannel(channel: ClientChannel, what: string, opts: Pick<SshExecOptions, 'stdin' | 'tty'>): SshExec {
  // Separate stream objects, so that a caller destroying stdout does not also cut stdin (the channel is
  // one Duplex for both).
  const stdout = new PassThrough();
  channel.pipe(stdout);
  // With a pty the server sends no extended data; the agent's shape has no stderr then either.
  const stderr = opts.tty ? null : new PassThrough();
  if (stderr) channel.stderr.pipe(stderr);
  else channel.stderr.resume();
  if (!opts.stdin) channel.end(); // EOF at once, as the agent gives /dev/null
  let exit: ExitInfo | undefined;
  channel.on('exit', (code: number | null, signal?: string) => {
    if (signal) {
      const name = `SIG${signal.replace(/^SIG/, '')}`;
      exit = { exitCode: 128 + (osConstants.signals[name as NodeJS.Signals] ?? 0), signal: name };
    } else {
      exit = { exitCode: code ?? 255, signal: null };
    }
  });
  const exited = new Promise<ExitInfo>((resolve, reject) => {
    channel.on('close', () => {
      if (exit) resolve(exit);
      else reject(new Error(`${what}: the channel closed without an exit status (connection lost?)`));
    });
  });
  exited.catch(() => {}); // a caller that only reads output must not crash the process
  channel.on('error', () => {}); // reported through exited
  return {
    stdin: opts.stdin ? channel : null,
    stdout,
    stderr,
    exited,
    async resize(rows: number, cols: number) {
      channel.setWindow(rows, cols, 0, 0);
    },
    /**
     * The SSH signal request has no reply: a server that does not implement it (older OpenSSH
     * releases did not) ignores it silently, and `exited` then shows no signal. dropbear and current OpenSSH deliver it.
     */
    async signal(name: string) {
      const sig = name.toUpperCase().replace(/^SIG/, '');
      if (!SIGNALS.has(sig)) throw new Error(`${what}: unknown signal ${name} (SSH carries ${[...SIGNALS].join(', ')})`);
      // ssh2's channel.signal() drops the request once stdin has been ended (outgoing state 'eof'); the
      // protocol allows requests until the channel closes, so send it on the protocol directly then.
      const c = channel as unknown as { outgoing?: { id: number; state: string }; _client?: { _protocol?: { signal(id: number, s: string): void } } };
      const state = c.outgoing?.state;
      if ((state === 'open' || state === 'eof') && c._client?._protocol) c._client._protocol.signal(c.outgoing!.id, sig);
      else if (state === 'open') channel.signal(sig);
      else throw new Error(`${what}: cannot signal ${name}: the program's channel is closed`);
    },
    close() {
      // Hangs the channel up: the server closes the program's pipes or terminal (SIGHUP with a tty).
      channel.close();
    },
  };
}

async function collect(exec: SshExec, input?: Buffer | string): Promise<SshRunResult> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  exec.stdout.on('data', (b: Buffer) => out.push(b));
  exec.stderr?.on('data', (b: Buffer) => err.push(b));
  exec.stdin?.end(input ?? '');
  const status = await exec.exited;
  return { ...status, stdout: Buffer.concat(out), stderr: Buffer.concat(err) };
}

/**
 * Connects, retrying while the server is not up yet (refused, closed, timed out) until timeoutMs has
 * passed; errors that retrying cannot fix (authentication, a changed host key) end it at once.
 */
export async function waitForSsh(opts: SshConnectOptions & { totalTimeoutMs: number; intervalMs?: number }): Promise<SshConnection> {
  const deadline = Date.now() + opts.totalTimeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    try {
      return await SshConnection.connect({ ...opts, timeoutMs: Math.max(1000, Math.min(opts.timeoutMs ?? DEFAULT_TIMEOUT_MS, left)) });
    } catch (err) {
      if (!(err instanceof SshError) || !err.retryable) throw err;
      if (Date.now() + (opts.intervalMs ?? 500) >= deadline) {
        throw new SshError(err.reason, err.address, `${err.message} (still, after ${seconds(opts.totalTimeoutMs)})`);
      }
      await new Promise((r) => setTimeout(r, opts.intervalMs ?? 500));
    }
  }
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(ms % 1000 ? 1 : 0)} s`;
}
