// Installing vmlet-agent over SSH at first boot, for images that have an SSH server but no agent: look
// at the guest (uname, node, setsid, root or sudo), pick what to install — the JavaScript bundle when
// the guest has Node 20+, else the self-contained binary (src/agent/sea.ts) for its uname -s/-m when
// the caller offers one — refuse clearly when neither fits, upload it (SFTP, or `cat >` over exec when the server has no SFTP subsystem, as dropbear without sftp-server),
// check its SHA-256 on the guest, and start it so that it outlives the SSH session.
//
// Linux is implemented and tested against a real guest (test/e2e/ssh.test.ts): the agent is started with
// setsid (its own session, no controlling terminal, stdio on a log file), or as a systemd unit where the
// guest runs systemd (the unit text is unit-tested; the test guest has no systemd). macOS (launchd) is
// written as data — the plist and the commands — and unit-tested only, since no Mac is available here;
// it has not run on a real Mac yet. On macOS the binary is ad-hoc signed on the guest after the upload
// (`codesign --force --sign -`): postject, which made it, dropped Node's signature, and macOS runs no
// unsigned arm64 code.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { SIGN_COMMAND, seaTargetOfUname, targetName, type SeaTarget } from '../sea.ts';
import type { SFTPWrapper } from 'ssh2';
import type { SshConnection } from './client.ts';
import { shellQuote } from './quote.ts';

export interface GuestFacts {
  /** `uname -s`: Linux, Darwin... */
  os: string;
  /** `uname -m`: x86_64, aarch64, arm64... */
  arch: string;
  /** Path of node in the login shell's PATH, if any. */
  node: string | null;
  /** `node --version` without the v, if node is there. */
  nodeVersion: string | null;
  uid: number;
  /** sudo without a password prompt works (for a login that is not root). */
  sudo: boolean;
  setsid: boolean;
  systemd: boolean;
}

export interface AgentInstallOptions {
  /** The agent bundle on this host (src/agent/bundle.ts: ensureAgentBundle()), for guests with Node 20+. */
  bundlePath?: string;
  /**
   * The self-contained agent for the guest's platform (src/agent/sea.ts), e.g. `(t) => ensureAgentBinary(t)`;
   * asked only when the binary is what gets installed. Undefined (or returning undefined): none for it.
   */
  agentBinary?: (target: SeaTarget) => Promise<string | undefined> | string | undefined;
  /** 'auto' (default): the bundle when the guest can run it and bundlePath is given, else the binary. */
  artifact?: AgentArtifact;
  /** Directory in the guest; default /usr/local/lib/vmlet. */
  remoteDir?: string;
  /** Arguments for the agent (default: none, i.e. the virtio-serial port org.vmlet.agent.0). */
  args?: string[];
  /** 'auto' (default): SFTP when the server has it, else `cat >`. */
  upload?: UploadVia;
  log?: (msg: string) => void;
}

export type UploadVia = 'auto' | 'sftp' | 'cat';
export type AgentArtifact = 'auto' | 'bundle' | 'binary';

export interface AgentInstallResult {
  facts: GuestFacts;
  /** What was installed: the JavaScript bundle (run by the guest's node) or the self-contained binary. */
  artifact: 'bundle' | 'binary';
  remotePath: string;
  upload: 'sftp' | 'cat';
  start: 'setsid' | 'systemd' | 'launchd';
  /** The agent's pid when started with setsid. */
  pid?: number;
  logFile: string;
}

/** The oldest Node the bundle runs on (bundle.ts builds it for node20). */
const MIN_NODE_MAJOR = 20;
export const LAUNCHD_LABEL = 'dev.vmlet.agent';
export const SYSTEMD_UNIT = 'vmlet-agent.service';

// One round trip for everything the installer needs to know. Each line is KEY=VALUE; `command -v`
// goes through the login shell's PATH.
const PROBE = [
  'echo "os=$(uname -s)"',
  'echo "arch=$(uname -m)"',
  'echo "uid=$(id -u)"',
  // A non-login `sh -c` on macOS has only /usr/bin:/bin:/usr/sbin:/sbin in PATH; Homebrew puts node
  // in /opt/homebrew/bin (Apple silicon) or /usr/local/bin.
  'n=$(command -v node 2>/dev/null); for c in /opt/homebrew/bin/node /usr/local/bin/node; do [ -z "$n" ] && [ -x "$c" ] && n=$c; done; echo "node=$n"',
  'if [ -n "$n" ]; then echo "nodeVersion=$("$n" --version 2>/dev/null)"; fi',
  'if command -v setsid >/dev/null 2>&1; then echo setsid=1; fi',
  'if [ -d /run/systemd/system ]; then echo systemd=1; fi',
  'if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then echo sudo=1; fi',
].join('; ');

export async function probeGuest(conn: SshConnection): Promise<GuestFacts> {
  const r = await conn.runScript(PROBE);
  if (r.exitCode !== 0) throw new Error(`${where(conn)}: probing the guest failed (exit ${r.exitCode}): ${oneLine(r.stderr)}`);
  const kv = new Map(r.stdout.toString().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const));
  return {
    os: kv.get('os') ?? '',
    arch: kv.get('arch') ?? '',
    node: kv.get('node') || null,
    nodeVersion: kv.get('nodeVersion')?.replace(/^v/, '') || null,
    uid: Number(kv.get('uid') ?? NaN),
    sudo: kv.get('sudo') === '1',
    setsid: kv.get('setsid') === '1',
    systemd: kv.get('systemd') === '1',
  };
}

/** Throws, in one line, why this guest cannot run the JavaScript agent bundle; returns if it can. */
export function checkGuestForBundle(facts: GuestFacts, whereText: string): void {
  const why = platformProblem(facts) ?? nodeProblem(facts) ?? rootProblem(facts);
  if (why) throw cannotInstall(whereText, why);
}

/**
 * Which artifact to install on this guest (throws, in one line, when none fits). 'auto': the bundle
 * when the guest has Node 20+ and a bundle is offered, else the binary when one is offered.
 */
export function chooseArtifact(facts: GuestFacts, offer: { artifact?: AgentArtifact; bundle: boolean; binary: boolean }, whereText: string): 'bundle' | 'binary' {
  const why = platformProblem(facts) ?? rootProblem(facts);
  if (why) throw cannotInstall(whereText, why);
  const artifact = offer.artifact ?? 'auto';
  const node = nodeProblem(facts);
  if (artifact === 'bundle' || (artifact === 'auto' && !offer.binary)) {
    if (node) throw cannotInstall(whereText, node);
    if (!offer.bundle) throw cannotInstall(whereText, 'no agent bundle was given');
    return 'bundle';
  }
  if (artifact === 'auto' && !node && offer.bundle) return 'bundle';
  if (!offer.binary) throw cannotInstall(whereText, 'no self-contained agent binary was given');
  return 'binary';
}

function platformProblem(facts: GuestFacts): string | undefined {
  if (facts.os !== 'Linux' && facts.os !== 'Darwin') return `unsupported guest OS ${JSON.stringify(facts.os)} (uname -s; Linux and Darwin are)`;
  if (!['x86_64', 'amd64', 'aarch64', 'arm64'].includes(facts.arch)) return `unsupported architecture ${JSON.stringify(facts.arch)} (uname -m)`;
  return undefined;
}

function nodeProblem(facts: GuestFacts): string | undefined {
  if (!facts.node) return `the guest (${facts.os} ${facts.arch}) has no node in PATH, and the agent bundle is JavaScript for Node ${MIN_NODE_MAJOR} or newer`;
  const major = Number(facts.nodeVersion?.split('.')[0]);
  if (!(major >= MIN_NODE_MAJOR)) return `the guest's node is ${facts.nodeVersion ?? 'of unknown version'}; the agent needs Node ${MIN_NODE_MAJOR} or newer`;
  return undefined;
}

function rootProblem(facts: GuestFacts): string | undefined {
  if (facts.uid !== 0 && !facts.sudo) return `the login (uid ${facts.uid}) is not root and cannot sudo without a password; the agent must run as root`;
  return undefined;
}

function cannotInstall(whereText: string, why: string): Error {
  return new Error(`${whereText}: cannot install the vmlet agent: ${why}`);
}

/**
 * Copies `local` to `remote` (via a temporary name, renamed at the end, so a half file is never the
 * agent) and checks its SHA-256 on the guest. Uses SFTP (`via` 'auto' or 'sftp'), else `cat >` on an
 * exec channel.
 */
export async function uploadFile(conn: SshConnection, local: string, remote: string, opts: { mode?: number; via?: UploadVia } = {}): Promise<'sftp' | 'cat'> {
  const mode = opts.mode ?? 0o755;
  const via = opts.via ?? 'auto';
  const tmp = `${remote}.tmp-${process.pid}-${Date.now()}`;
  const q = (s: string): string => shellQuote(s).toString();
  const sftp = via === 'cat' ? undefined : await conn.sftp();
  if (via === 'sftp' && !sftp) throw new Error(`${where(conn)}: the server has no SFTP subsystem`);
  let method: 'sftp' | 'cat';
  if (sftp) {
    await new Promise<void>((resolve, reject) => sftp.fastPut(local, tmp, { mode }, (err) => (err ? reject(err) : resolve()))).catch((err: Error) => {
      throw new Error(`${where(conn)}: SFTP upload to ${tmp} failed: ${err.message}`);
    });
    await closeSftp(sftp);
    method = 'sftp';
  } else {
    const p = await conn.execScript(`umask 077 && cat > ${q(tmp)}`, { stdin: true });
    const err: Buffer[] = [];
    p.stderr?.on('data', (b: Buffer) => err.push(b));
    p.stdout.resume();
    await pipeline(createReadStream(local), p.stdin!);
    const { exitCode } = await p.exited;
    if (exitCode !== 0) throw new Error(`${where(conn)}: writing ${tmp} with cat failed (exit ${exitCode}): ${oneLine(Buffer.concat(err))}`);
    method = 'cat';
  }
  const want = createHash('sha256').update(await readFile(local)).digest('hex');
  const check = await conn.runScript(
    // sha256sum's own error stays on stderr: an empty hash alone does not say why (missing file, no tool).
    `f=${q(tmp)}; if command -v sha256sum >/dev/null 2>&1; then h=$(sha256sum "$f" | cut -d' ' -f1); ` +
    `else h=$(shasum -a 256 "$f" | cut -d' ' -f1); fi; ` +
    `[ "$h" = ${want} ] && chmod ${mode.toString(8)} "$f" && mv -f "$f" ${q(remote)} || ` +
    `{ echo "got sha256 \${h:-none} for $(ls -ln "$f" 2>&1 | tr '\\n' ' ')" >&2; rm -f "$f"; exit 1; }`,
  );
  if (check.exitCode !== 0) {
    throw new Error(`${where(conn)}: the uploaded ${remote} does not match ${local} (want sha256 ${want}; ${check.stderr.toString().trim().split('\n').join(' / ') || 'no sha256sum or shasum?'})`);
  }
  return method;
}

/**
 * Ends an SFTP session and waits until the server has closed its channel. The next exec must not open
 * while it closes: dropbear then answered that exec with a channel failure although it ran the command
 * (seen here under load), and the client's one retry of a refused exec ran the command twice.
 */
function closeSftp(sftp: SFTPWrapper): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, SFTP_CLOSE_WAIT_MS); // a server that never closes it: go on
    sftp.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    sftp.end();
  });
}

const SFTP_CLOSE_WAIT_MS = 5000;

/** The shell script that starts the agent on Linux without systemd, in a session of its own. */
export function linuxStartScript(p: AgentCommand & { logFile: string; pidFile: string }): string {
  const q = (s: string): string => shellQuote(s).toString();
  const cmd = agentArgv(p).map(q).join(' ');
  // setsid: a new session without a controlling terminal, so the end of the SSH session (SIGHUP to
  // its process group) does not reach the agent; stdio on files, so the SSH channel can close.
  return [
    `if [ -s ${q(p.pidFile)} ] && kill -0 "$(cat ${q(p.pidFile)})" 2>/dev/null; then kill "$(cat ${q(p.pidFile)})"; sleep 1; fi`,
    `setsid ${cmd} </dev/null >>${q(p.logFile)} 2>&1 &`,
    `echo $! >${q(p.pidFile)}`,
    'echo "pid=$!"',
  ].join('\n');
}

/** How the agent is started: `node AGENT ARGS` for the bundle, `AGENT ARGS` for the binary (no node). */
export interface AgentCommand {
  node?: string;
  agentPath: string;
  args: string[];
}

function agentArgv(p: AgentCommand): string[] {
  return [...(p.node ? [p.node] : []), p.agentPath, ...p.args];
}

/** A systemd unit for the agent (guests with systemd): restarted on failure, started at every boot. */
export function systemdUnit(p: AgentCommand): string {
  // systemd's ExecStart takes C-style quoted words; paths and args here are vmlet's own.
  const words = agentArgv(p).map((w) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(w) ? w : `"${w.replace(/(["\\])/g, '\\$1')}"`));
  return [
    '[Unit]',
    'Description=vmlet guest agent',
    'After=local-fs.target',
    '',
    '[Service]',
    `ExecStart=${words.join(' ')}`,
    'Restart=always',
    'RestartSec=1',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/**
 * macOS: a LaunchDaemon plist (root, started at boot and kept alive by launchd). Not run on a real Mac
 * yet (none here); checked by unit tests only.
 */
export function launchdPlist(p: AgentCommand & { logFile: string; label?: string }): string {
  const x = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
  const args = agentArgv(p).map((a) => `    <string>${x(a)}</string>`).join('\n');
  return `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>${x(p.label ?? LAUNCHD_LABEL)}</string>
  <key>ProgramArguments</key>
  <array>
${args}
  </array>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <true/>
  <key>StandardOutPath</key>
  <string>${x(p.logFile)}</string>
  <key>StandardErrorPath</key>
  <string>${x(p.logFile)}</string>
</dict>
</plist>
`;
}

/**
 * The commands that install a plist (already uploaded to `uploaded`) as a LaunchDaemon and start it.
 * `sudo` is the prefix for a login that is not root (e.g. Tart's admin): "sudo -n " or "".
 */
export function launchdCommands(p: { uploaded: string; label?: string; sudo: string }): string[] {
  const label = p.label ?? LAUNCHD_LABEL;
  const plist = `/Library/LaunchDaemons/${label}.plist`;
  const q = (s: string): string => shellQuote(s).toString();
  return [
    `${p.sudo}install -m 644 -o root -g wheel ${q(p.uploaded)} ${q(plist)}`,
    // bootout fails when the job is not loaded yet; that is fine.
    `${p.sudo}launchctl bootout system/${label} 2>/dev/null || true`,
    `${p.sudo}launchctl bootstrap system ${q(plist)}`,
    `${p.sudo}launchctl kickstart -k system/${label}`,
  ];
}

/**
 * Installs and starts the agent over `conn`. The login must be root, or able to sudo without a
 * password; the guest must have Node 20+ for the JavaScript bundle, or the caller must offer the
 * self-contained binary (opts.agentBinary). Throws one-line errors.
 */
export async function installAgentOverSsh(conn: SshConnection, opts: AgentInstallOptions): Promise<AgentInstallResult> {
  const log = opts.log ?? (() => {});
  const facts = await probeGuest(conn);
  log(`guest: ${facts.os} ${facts.arch}, node ${facts.node ?? 'missing'} ${facts.nodeVersion ?? ''}, uid ${facts.uid}`);
  const artifact = chooseArtifact(facts, { artifact: opts.artifact, bundle: !!opts.bundlePath, binary: !!opts.agentBinary }, where(conn));
  let localPath = opts.bundlePath!;
  if (artifact === 'binary') {
    const target = seaTargetOfUname(facts.os, facts.arch)!; // chooseArtifact checked os and arch
    const binary = await opts.agentBinary!(target);
    if (!binary) {
      const node = nodeProblem(facts);
      throw cannotInstall(where(conn), `${node ? `${node}; ` : ''}no self-contained agent for ${targetName(target)} is available${node ? ' either' : ''}`);
    }
    localPath = binary;
  }
  const sudo = facts.uid === 0 ? '' : 'sudo -n ';
  const dir = opts.remoteDir ?? '/usr/local/lib/vmlet';
  const remotePath = `${dir}/${artifact === 'binary' ? 'vmlet-agent' : 'vmlet-agent.cjs'}`;
  const logFile = '/var/log/vmlet-agent.log';
  const args = opts.args ?? [];
  const q = (s: string): string => shellQuote(s).toString();
  const step = async (what: string, script: string): Promise<string> => {
    const r = await conn.runScript(script);
    if (r.exitCode !== 0) throw new Error(`${where(conn)}: ${what} failed (exit ${r.exitCode}): ${oneLine(r.stderr) || oneLine(r.stdout)}`);
    return r.stdout.toString();
  };

  // Upload as the login user into a place it can write, then move into place as root.
  const staging = sudo ? `/tmp/vmlet-agent-${process.pid}${artifact === 'binary' ? '' : '.cjs'}` : remotePath;
  await step(`creating ${dir}`, `${sudo}mkdir -p ${q(dir)} && ${sudo}mkdir -p /var/log`);
  const upload = await uploadFile(conn, localPath, staging, { via: opts.upload ?? 'auto' });
  if (sudo) await step(`moving the agent into ${dir}`, `${sudo}install -m 755 ${q(staging)} ${q(remotePath)} && rm -f ${q(staging)}`);
  log(`uploaded ${localPath} to ${remotePath} (${upload})`);
  if (artifact === 'binary' && facts.os === 'Darwin') {
    await step(`ad-hoc signing the agent (${SIGN_COMMAND}; postject dropped Node's signature)`, `${sudo}${SIGN_COMMAND} ${q(remotePath)}`);
  }
  const node = artifact === 'bundle' ? facts.node! : undefined;

  if (facts.os === 'Darwin') {
    const plist = launchdPlist({ node, agentPath: remotePath, args, logFile });
    const tmp = `/tmp/${LAUNCHD_LABEL}.plist`;
    await conn.runScript(`cat > ${q(tmp)}`, plist);
    await step('starting the agent with launchd', launchdCommands({ uploaded: tmp, sudo }).join(' && '));
    return { facts, artifact, remotePath, upload, start: 'launchd', logFile };
  }
  if (facts.systemd) {
    const unit = systemdUnit({ node, agentPath: remotePath, args });
    const tmp = `/tmp/${SYSTEMD_UNIT}`;
    await conn.runScript(`cat > ${q(tmp)}`, unit);
    await step('starting the agent with systemd', [
      `${sudo}install -m 644 ${q(tmp)} /etc/systemd/system/${SYSTEMD_UNIT}`,
      `${sudo}systemctl daemon-reload`,
      `${sudo}systemctl enable ${SYSTEMD_UNIT}`,
      `${sudo}systemctl restart ${SYSTEMD_UNIT}`,
    ].join(' && '));
    return { facts, artifact, remotePath, upload, start: 'systemd', logFile };
  }
  if (!facts.setsid) throw new Error(`${where(conn)}: cannot start the vmlet agent: the guest has neither systemd nor setsid`);
  const script = linuxStartScript({ node, agentPath: remotePath, args, logFile, pidFile: '/run/vmlet-agent.pid' });
  const out = await step('starting the agent', sudo ? `${sudo}sh -c ${q(script)}` : script);
  const pid = Number(/^pid=(\d+)$/m.exec(out)?.[1]);
  log(`started the agent with setsid (pid ${pid}); its log is ${logFile}`);
  return { facts, artifact, remotePath, upload, start: 'setsid', ...(pid ? { pid } : {}), logFile };
}

function where(conn: SshConnection): string {
  return `ssh to ${conn.address} as ${conn.username}`;
}

function oneLine(b: Buffer): string {
  return b.toString().trim().split('\n').pop() ?? '';
}
