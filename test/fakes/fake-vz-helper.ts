// A stand-in for the vz helper (native/vz): it speaks the protocol of docs/VZ-HELPER-PROTOCOL.md on its
// control socket and runs no VM. The vz driver's tests start it exactly as they would start vmlet-vz
// (`serve --dir DIR`, detached), so everything but Virtualization.framework itself is exercised: the
// spawn, the control socket and re-attach, requests and events, the exit file, the vsock proxy socket
// (here a "guest agent" that echoes), the console file, and the error mapping.
//
// Simulated host: FAKE_VZ_HOST_DIR names a directory shared by the fake helpers of one "Mac"; each running
// macOS guest holds a file there, and a third macOS guest fails to start with VZErrorDomain code 6 (the
// two-VM limit), as Virtualization.framework does. Knobs (environment): FAKE_VZ_LIMIT=1 fails every start
// with code 6; FAKE_VZ_IGNORE_STOP=all accepts `stop` but the "guest" never powers off,
// FAKE_VZ_IGNORE_STOP=N misses the first N requests (a guest still booting). Test-only requests:
// {"op":"_guestPowerOff"} makes the "guest" power off on its own; {"op":"_crash"} makes the VM stop with
// an error (Virtualization.framework's didStopWithError), after which the helper exits 1.
import { appendFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import path from 'node:path';
import { LineDecoder, PROTOCOL_VERSION, startConfigSchema, type HelperState, type StopCause } from '../../src/drivers/vz/protocol.ts';

const args = process.argv.slice(2);
const dir = args[0] === 'serve' && args[1] === '--dir' ? args[2] : undefined;
if (!dir) {
  process.stderr.write('usage: fake-vz-helper serve --dir DIR\n');
  process.exit(2);
}
const control = path.join(dir, 'control.sock');
const exitFile = path.join(dir, 'helper-exit.json');
const sessions = new Set<Socket>();
const vsockServers: Server[] = [];
let state: HelperState = 'idle';
let stopRequested = false;
let stopRequests = 0;
let consoleFile: string | undefined;

const send = (s: Socket, msg: object): void => {
  s.write(`${JSON.stringify({ v: PROTOCOL_VERSION, ...msg })}\n`);
};
const broadcast = (msg: object): void => {
  for (const s of sessions) send(s, msg);
};
const setState = (next: HelperState): void => {
  state = next;
  broadcast({ event: 'state', state });
};
const vzError = (code: number, name: string, message: string) => ({ name, message, domain: 'VZErrorDomain', code });

const MACOS_VM_LIMIT = 2;
const hostDir = process.env.FAKE_VZ_HOST_DIR;
const hostSlot = hostDir ? path.join(hostDir, `macos-vm-${process.pid}`) : undefined;
/** macOS guests of other fake helpers on this simulated host that are still running. */
function otherMacOSVms(): number {
  if (!hostDir) return 0;
  mkdirSync(hostDir, { recursive: true });
  return readdirSync(hostDir).filter((f) => {
    const pid = Number(/^macos-vm-(\d+)$/.exec(f)?.[1]);
    if (!pid || pid === process.pid) return false;
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  }).length;
}

function stopped(cause: StopCause, exitCode = 0, error?: { name: string; message: string; domain?: string; code?: number }): void {
  state = 'stopped';
  if (hostSlot) rmSync(hostSlot, { force: true });
  broadcast({ event: 'state', state });
  broadcast({ event: 'stopped', cause, ...(error ? { error } : {}) });
  writeFileSync(exitFile, JSON.stringify({ v: PROTOCOL_VERSION, cause, ...(error ? { error } : {}), at: new Date().toISOString() }));
  if (consoleFile) appendFileSync(consoleFile, `fake-vz: stopped (${cause})\n`);
  for (const v of vsockServers) v.close();
  const quit = (): void => {
    rmSync(control, { force: true });
    process.exit(exitCode);
  };
  let left = sessions.size;
  if (left === 0) quit();
  for (const s of sessions) s.end(() => (--left === 0 ? quit() : undefined));
  setTimeout(quit, 500).unref();
}

type Answer = { result: Record<string, unknown> } | { error: { name: string; message: string; domain?: string; code?: number } };

async function handle(req: Record<string, unknown>): Promise<Answer> {
  switch (req.op) {
    case 'start': {
      if (state !== 'idle') return { error: vzError(3, 'InvalidVirtualMachineState', `cannot start in state ${state}`) };
      const parsed = startConfigSchema.safeParse(req.config);
      if (!parsed.success) return { error: { name: 'BadRequest', message: parsed.error.issues[0]?.message ?? 'bad config' } };
      if (process.env.FAKE_VZ_LIMIT === '1' || (parsed.data.boot.kind === 'macos' && otherMacOSVms() >= MACOS_VM_LIMIT)) {
        setTimeout(() => process.exit(1), 50);
        return { error: vzError(6, 'VirtualMachineLimitExceeded', 'The number of virtual machines exceeds the limit the system can support.') };
      }
      const config = parsed.data;
      if (hostSlot && config.boot.kind === 'macos') writeFileSync(hostSlot, '');
      consoleFile = config.console;
      setState(typeof req.restoreFrom === 'string' ? 'restoring' : 'starting');
      if (typeof req.restoreFrom === 'string' && readFileSync(req.restoreFrom, 'utf8') !== 'fake-vz-state') {
        return { error: vzError(12, 'RestoreFailed', 'not a saved state') };
      }
      for (const v of config.vsock) {
        rmSync(v.socket, { force: true });
        const server = createServer((conn) => conn.pipe(conn)); // the "guest agent" echoes
        await new Promise<void>((resolve) => server.listen(v.socket, resolve));
        vsockServers.push(server);
      }
      if (consoleFile) appendFileSync(consoleFile, `fake-vz: booted ${config.boot.kind} guest, ${config.cpus} CPUs, network ${config.network.mode}\n`);
      setState('running');
      return { result: { state } };
    }
    case 'stop':
      if (state !== 'running') return { error: vzError(3, 'InvalidVirtualMachineState', `cannot request a stop in state ${state}`) };
      stopRequested = true;
      stopRequests++;
      if (process.env.FAKE_VZ_IGNORE_STOP !== 'all' && stopRequests > Number(process.env.FAKE_VZ_IGNORE_STOP ?? 0)) setTimeout(() => stopped('requested'), 50);
      return { result: {} };
    case 'forceStop':
      setTimeout(() => stopped('forced'), 10);
      return { result: {} };
    case '_guestPowerOff':
      setTimeout(() => stopped(stopRequested ? 'requested' : 'guest'), 10);
      return { result: {} };
    case '_crash':
      setTimeout(() => stopped('error', 1, vzError(1, 'InternalError', 'The virtual machine stopped unexpectedly.')), 10);
      return { result: {} };
    case 'pause':
      if (state !== 'running') return { error: vzError(4, 'InvalidVirtualMachineStateTransition', `cannot pause in state ${state}`) };
      setState('paused');
      return { result: { state } };
    case 'resume':
      if (state !== 'paused') return { error: vzError(4, 'InvalidVirtualMachineStateTransition', `cannot resume in state ${state}`) };
      setState('running');
      return { result: { state } };
    case 'save':
      if (state !== 'paused') return { error: vzError(3, 'InvalidVirtualMachineState', 'save needs a paused VM') };
      writeFileSync(String(req.path), 'fake-vz-state');
      return { result: {} };
    case 'status':
      return { result: { state } };
    default:
      return { error: { name: 'BadRequest', message: `unknown op ${String(req.op)}` } };
  }
}

rmSync(control, { force: true });
const server = createServer((s) => {
  sessions.add(s);
  s.on('close', () => sessions.delete(s));
  s.on('error', () => {});
  send(s, { type: 'hello', helper: 'fake-vz-helper', version: '0.0.0-fake', pid: process.pid, state });
  const decoder = new LineDecoder();
  s.on('data', (chunk: Buffer) => {
    for (const line of decoder.push(chunk)) {
      const req = JSON.parse(line) as Record<string, unknown>;
      if (req.v !== PROTOCOL_VERSION) {
        send(s, { id: req.id, ok: false, error: { name: 'UnsupportedVersion', message: `protocol ${String(req.v)}` } });
        continue;
      }
      void handle(req).then((answer) => send(s, 'result' in answer ? { id: req.id, ok: true, result: answer.result } : { id: req.id, ok: false, error: answer.error }));
    }
  });
});
server.listen(control);
process.on('SIGTERM', () => stopped('forced'));
