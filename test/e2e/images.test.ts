// `vmlet image` against the real registry (Debian's docker-registry, TLS + htpasswd, and plain HTTP),
// through the real command: import → push → pull round trips byte-identical and sparse, chunk reuse
// across images, Agoda's format, and faults (cut, corrupt byte) injected by a TCP proxy.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { mkdir, open, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, before, test } from 'node:test';
import { RegistryClient } from '../../src/images/registry/client.ts';
import { bufferSource } from '../../src/images/registry/sources.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { createFixtureDir, removeFixtureDir, waitFor } from '../harness/processes.ts';
import { startRegistry, type Registry } from '../harness/registry.ts';
import { runCommand } from '../harness/exec.ts';
import { runVmlet, VMLET_BIN } from '../harness/vmlet.ts';

const MiB = 1024 * 1024;
let secure: Registry;
let plain: Registry;
let proxy: FaultProxy;
let dir: string;
let dockerConfig: string;

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A disk like a real one: zeros, random bytes, text-like bytes, and a tail that is not chunk-aligned. */
function syntheticDisk(): Buffer {
  const text = Buffer.from('GET /index.html HTTP/1.1 200 OK vmlet kubernetes virtual machine '.repeat(100_000)).subarray(0, 6 * MiB);
  return Buffer.concat([Buffer.alloc(6 * MiB), randomBytes(3 * MiB), text, Buffer.alloc(4 * MiB), randomBytes(MiB + 12345)]);
}

const vmConfig = { version: 1, os: 'linux', arch: 'amd64', cpuCountMin: 1, cpuCount: 2, memorySizeMin: 512 * MiB, memorySize: 1024 * MiB, macAddress: '52:54:00:12:34:56', display: { width: 1024, height: 768 } };

async function vmlet(store: string, ...args: string[]) {
  const r = await runVmlet(['image', ...args, `--store=${store}`], {}, 180_000);
  return { ...r, stdout: r.stdout.trim(), stderr: r.stderr.trim() };
}

before(async () => {
  [secure, plain] = await Promise.all([startRegistry({ tls: true, auth: { username: 'ci', password: 's3cret' } }), startRegistry({})]);
  proxy = await startFaultProxy(plain.host);
  dir = await createFixtureDir('vmlet-images-');
  dockerConfig = path.join(dir, 'docker-config.json');
  await writeFile(dockerConfig, JSON.stringify({ auths: { [secure.host]: { auth: Buffer.from('ci:s3cret').toString('base64') } } }));
});

after(async () => {
  await proxy?.close();
  await Promise.all([secure?.stop(), plain?.stop()]);
  if (dir) await removeFixtureDir(dir);
});

test('an imported image pushed to a TLS registry with credentials pulls back byte-identical and sparse', async () => {
  const disk = syntheticDisk();
  const src = path.join(dir, 'src');
  await mkdir(src, { recursive: true });
  await writeFile(path.join(src, 'disk.img'), disk);
  await writeFile(path.join(src, 'config.json'), JSON.stringify(vmConfig));
  await writeFile(path.join(src, 'nvram.bin'), randomBytes(64 * 1024));

  const storeA = path.join(dir, 'store-a');
  const imported = await vmlet(storeA, 'import', 'guest:v1', `--dir=${src}`, '--chunk-size=4Mi');
  assert.equal(imported.code, 0, imported.stderr);
  const target = `${secure.host}/vms/guest:v1`;
  const tls = [`--ca-file=${secure.caFile}`, `--docker-config=${dockerConfig}`];
  const pushed = await vmlet(storeA, 'push', 'guest:v1', target, ...tls);
  assert.equal(pushed.code, 0, pushed.stderr);
  assert.match(pushed.stdout, /uploaded/);

  const storeB = path.join(dir, 'store-b');
  const pulled = await vmlet(storeB, 'pull', target, ...tls);
  assert.equal(pulled.code, 0, pulled.stderr);
  assert.match(pulled.stdout, new RegExp(`${target.replace(/[.:/]/g, '\\$&')} sha256:[a-f0-9]{64} \\([\\d.]+ MiB downloaded, 0\\.0 MiB reused`));

  const inspect = JSON.parse((await vmlet(storeB, 'inspect', target)).stdout) as { format: string; chunks: number; diskSize: number; config: unknown; manifest: { layers: Array<{ mediaType: string }> } };
  assert.equal(inspect.format, 'tart');
  assert.equal(inspect.chunks, Math.ceil(disk.length / (4 * MiB)));
  assert.equal(inspect.diskSize, disk.length);
  assert.deepEqual(inspect.config, vmConfig);
  assert.deepEqual([...new Set(inspect.manifest.layers.map((l) => l.mediaType))], [
    'application/vnd.cirruslabs.tart.config.v1',
    'application/vnd.cirruslabs.tart.disk.v2',
    'application/vnd.cirruslabs.tart.nvram.v1',
  ]);

  const out = path.join(dir, 'exported');
  assert.equal((await vmlet(storeB, 'export', target, out)).code, 0);
  assert.equal(sha(await readFile(path.join(out, 'disk.img'))), sha(disk), 'disk is byte-identical');
  assert.equal(sha(await readFile(path.join(out, 'nvram.bin'))), sha(await readFile(path.join(src, 'nvram.bin'))));

  // The pulled disk keeps its holes: allocated blocks stay close to the non-zero data (11 MiB + tail).
  const ls = JSON.parse((await vmlet(storeB, 'ls', '--json')).stdout) as Array<{ digest: string }>;
  const { blocks } = await stat(path.join(storeB, 'images', ls[0]!.digest.slice(7), 'disk.img'));
  const nonZero = 3 * MiB + 6 * MiB + MiB + 12345;
  assert.ok(blocks * 512 <= nonZero * 1.05 + 4 * 64 * 1024, `allocated ${blocks * 512} bytes for ${nonZero} bytes of data`);
});

test('a new version that changes one region re-downloads only the chunks that changed', async () => {
  const src = path.join(dir, 'src');
  const disk = await readFile(path.join(src, 'disk.img'));
  disk.fill(7, 9 * MiB, 9 * MiB + 100_000); // inside the third 4 MiB chunk
  await writeFile(path.join(src, 'disk.img'), disk);
  const storeA = path.join(dir, 'store-a');
  const tls = [`--ca-file=${secure.caFile}`, `--docker-config=${dockerConfig}`];
  assert.equal((await vmlet(storeA, 'import', 'guest:v2', `--dir=${src}`, '--chunk-size=4Mi')).code, 0);
  const pushed = await vmlet(storeA, 'push', 'guest:v2', `${secure.host}/vms/guest:v2`, ...tls);
  assert.equal(pushed.code, 0, pushed.stderr);
  const pulled = await vmlet(path.join(dir, 'store-b'), 'pull', `${secure.host}/vms/guest:v2`, ...tls);
  assert.equal(pulled.code, 0, pulled.stderr);
  const m = /\(([\d.]+) MiB downloaded, ([\d.]+) MiB reused/.exec(pulled.stdout);
  assert.ok(m, pulled.stdout);
  assert.ok(Number(m[1]) <= 4.1, `downloaded ${m[1]} MiB, at most one 4 MiB chunk`);
  assert.ok(Number(m[2]) >= 16, `reused ${m[2]} MiB from v1`);
  const out = path.join(dir, 'exported-v2');
  assert.equal((await vmlet(path.join(dir, 'store-b'), 'export', `${secure.host}/vms/guest:v2`, out)).code, 0);
  assert.equal(sha(await readFile(path.join(out, 'disk.img'))), sha(disk));
});

test("an image in Agoda's macOS-vz-kubelet format is pulled and unpacked", async () => {
  const client = new RegistryClient({});
  try {
    const diskPlain = Buffer.concat([randomBytes(MiB), Buffer.alloc(2 * MiB)]);
    const auxPlain = randomBytes(32 * 1024);
    const cfg = Buffer.from(JSON.stringify({ mediatype: 'application/vnd.agoda.macosvz.config.v1+json', os: 'darwin', hardwareModelData: 'aGFyZHdhcmU=', machineIdData: 'aWQ=', storage: [] }));
    const repo = `${plain.host}/agoda/macos`;
    const layer = async (mediaType: string, bytes: Buffer, title: string, plainBytes?: Buffer) => {
      const r = await client.pushBlob(repo, bufferSource(bytes));
      return {
        mediaType,
        digest: r.digest,
        size: r.size,
        annotations: {
          'org.opencontainers.image.title': title,
          ...(plainBytes ? { 'com.agoda.macosvz.content.uncompressed-size': String(plainBytes.length), 'com.agoda.macosvz.content.uncompressed-digest': sha(plainBytes) } : {}),
        },
      };
    };
    const empty = await client.pushBlob(repo, bufferSource(Buffer.from('{}')));
    const manifest = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      artifactType: 'application/vnd.agoda.macosvz.artifact',
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: empty.digest, size: empty.size },
      layers: [
        await layer('application/vnd.agoda.macosvz.disk.image.v1', gzipSync(diskPlain), 'disk.img', diskPlain),
        await layer('application/vnd.agoda.macosvz.aux.image.v1', gzipSync(auxPlain), 'aux.img', auxPlain),
        await layer('application/vnd.agoda.macosvz.config.v1+json', cfg, 'config.json'),
      ],
    };
    await client.putManifest(`${repo}:15`, Buffer.from(JSON.stringify(manifest)), manifest.mediaType);
    const store = path.join(dir, 'store-agoda');
    const pulled = await vmlet(store, 'pull', `${repo}:15`);
    assert.equal(pulled.code, 0, pulled.stderr);
    const out = path.join(dir, 'exported-agoda');
    assert.equal((await vmlet(store, 'export', `${repo}:15`, out)).code, 0);
    assert.equal(sha(await readFile(path.join(out, 'disk.img'))), sha(diskPlain));
    assert.equal(sha(await readFile(path.join(out, 'nvram.bin'))), sha(auxPlain));
    assert.equal((JSON.parse((await vmlet(store, 'inspect', `${repo}:15`)).stdout) as { format: string }).format, 'agoda');
  } finally {
    await client.close();
  }
});

test('a byte corrupted in transit fails the pull with the layer named, stores nothing, and a retry succeeds', async () => {
  const storeA = path.join(dir, 'store-a');
  assert.equal((await vmlet(storeA, 'push', 'guest:v1', `${plain.host}/vms/guest:v1`)).code, 0);
  const viaProxy = `${proxy.host}/vms/guest:v1`;
  const store = path.join(dir, 'store-fault');
  // Flip a byte well inside the second disk blob's body, on every connection, until cleared.
  proxy.addFault({ action: { kind: 'corrupt' }, at: 200_000, match: 'GET /v2/vms/guest/blobs/sha256:', times: 3 });
  const bad = await vmlet(store, 'pull', viaProxy);
  assert.notEqual(bad.code, 0);
  const lines = bad.stderr.split('\n').filter((l) => l.startsWith('vmlet: '));
  assert.equal(lines.length, 1, bad.stderr);
  assert.match(lines[0]!, /guest/);
  assert.match(lines[0]!, /sha256:[a-f0-9]{12,}/, 'names the layer');
  assert.match(lines[0]!, /digest|Digest/);
  assert.equal((await vmlet(store, 'ls')).stdout.split('\n').length, 1, 'nothing but the header: no half image listed');

  proxy.clearFaults();
  const good = await vmlet(store, 'pull', viaProxy);
  assert.equal(good.code, 0, good.stderr);
});

test('a connection cut in the middle of a blob is resumed and the pull completes', async () => {
  const store = path.join(dir, 'store-cut');
  const handle = proxy.addFault({ action: { kind: 'cut', reset: true }, at: 1_500_000, match: 'GET /v2/vms/guest/blobs/sha256:', times: 2 });
  const pulled = await vmlet(store, 'pull', `${proxy.host}/vms/guest:v1`);
  proxy.clearFaults();
  assert.equal(pulled.code, 0, pulled.stderr);
  assert.ok(handle.fired >= 1, 'the cut happened');
  const out = path.join(dir, 'exported-cut');
  assert.equal((await vmlet(store, 'export', `${proxy.host}/vms/guest:v1`, out)).code, 0);
  const ls = JSON.parse((await vmlet(path.join(dir, 'store-b'), 'ls', '--json')).stdout) as Array<{ names: string[] }>;
  assert.ok(ls.length >= 2);
});

test('a manifest that is not a VM image is refused with its media types named', async () => {
  const client = new RegistryClient({});
  try {
    const repo = `${plain.host}/not/a-vm`;
    const blob = await client.pushBlob(repo, bufferSource(Buffer.from('hello')));
    const cfg = await client.pushBlob(repo, bufferSource(Buffer.from('{}')));
    const manifest = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfg.digest, size: cfg.size },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: blob.digest, size: blob.size }],
    };
    await client.putManifest(`${repo}:1`, Buffer.from(JSON.stringify(manifest)), manifest.mediaType);
    const r = await vmlet(path.join(dir, 'store-x'), 'pull', `${repo}:1`);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /^vmlet: .*not\/a-vm:1 is not a VM image \(layer media types: application\/vnd\.oci\.image\.layer\.v1\.tar\+gzip\)/);
  } finally {
    await client.close();
  }
});

test('rm removes an image and prune empties the store down to its budget', async () => {
  const store = path.join(dir, 'store-b');
  const before = JSON.parse((await vmlet(store, 'ls', '--json')).stdout) as Array<{ names: string[] }>;
  assert.ok(before.length >= 2);
  const rm = await vmlet(store, 'rm', before[0]!.names[0]!);
  assert.equal(rm.code, 0, rm.stderr);
  const pruned = await vmlet(store, 'prune', '--budget=0');
  assert.equal(pruned.code, 0, pruned.stderr);
  assert.equal((JSON.parse((await vmlet(store, 'ls', '--json')).stdout) as unknown[]).length, 0);
  const missing = await vmlet(store, 'rm', 'nope:1');
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /^vmlet: image nope:1 is not in the store/);
});

test('a pull killed with SIGKILL resumes from its verified chunks, and re-checks them after a reboot', async () => {
  const store = path.join(dir, 'store-kill');
  const image = `${proxy.host}/vms/guest:v1`;
  const manifest = JSON.parse((await vmlet(path.join(dir, 'store-a'), 'inspect', 'guest:v1')).stdout) as { manifest: { layers: Array<{ mediaType: string; digest: string; size: number }> } };
  const disks = manifest.manifest.layers.filter((l) => l.mediaType.endsWith('disk.v2'));
  // Hold the last disk chunk's download forever, so the pull is stuck with the others done.
  const last = disks[disks.length - 1]!;
  proxy.addFault({ action: { kind: 'stall' }, at: 0, match: `GET /v2/vms/guest/blobs/${last.digest}`, times: Infinity });
  const child = spawn(process.execPath, [VMLET_BIN, 'image', 'pull', image, `--store=${store}`], { stdio: 'ignore' });
  const partial = await waitFor('chunks recorded as done', async () => {
    const images = await readdir(path.join(store, 'images')).catch(() => [] as string[]);
    const p = images.find((e) => e.startsWith('.partial-'));
    if (!p) return undefined;
    const state = JSON.parse(await readFile(path.join(store, 'images', p, 'state.json'), 'utf8').catch(() => '{"done":[]}')) as { done: number[] };
    return state.done.length >= disks.length - 1 ? path.join(store, 'images', p) : undefined;
  }, { timeoutMs: 60_000 });
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  proxy.clearFaults();

  // As if the host had rebooted with one chunk lost from the page cache: the resumed pull must notice.
  const statePath = path.join(partial, 'state.json');
  const state = JSON.parse(await readFile(statePath, 'utf8')) as { bootId: string; done: number[] };
  state.bootId = 'another-boot';
  await writeFile(statePath, JSON.stringify(state));
  const fd = await open(path.join(partial, 'disk.img'), 'r+');
  await fd.write(Buffer.from('garbage'), 0, 7, 6 * MiB + 100); // inside the second chunk (random bytes)
  await fd.close();

  const resumed = await vmlet(store, 'pull', image);
  assert.equal(resumed.code, 0, resumed.stderr);
  const m = /\(([\d.]+) MiB downloaded/.exec(resumed.stdout);
  const total = disks.reduce((n, l) => n + l.size, 0) / MiB;
  assert.ok(m && Number(m[1]) < total * 0.75, `resumed pull downloaded ${m?.[1]} of ${total.toFixed(1)} MiB`);
  const out = path.join(dir, 'exported-kill');
  assert.equal((await vmlet(store, 'export', image, out)).code, 0);
  const original = await readFile(path.join(dir, 'exported', 'disk.img'));
  assert.equal(sha(await readFile(path.join(out, 'disk.img'))), sha(original), 'the corrupted chunk was fetched again');
});

test('two pulls of one image at the same time share one download', async () => {
  const store = path.join(dir, 'store-twice');
  const image = `${proxy.host}/vms/guest:v1`;
  const before = proxy.bytesToClient;
  const [a, b] = await Promise.all([vmlet(store, 'pull', image), vmlet(store, 'pull', image)]);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(b.code, 0, b.stderr);
  const inspect = JSON.parse((await vmlet(store, 'inspect', image)).stdout) as { manifest: { layers: Array<{ size: number }> } };
  const imageBytes = inspect.manifest.layers.reduce((n, l) => n + l.size, 0);
  const moved = proxy.bytesToClient - before;
  assert.ok(moved < imageBytes * 1.5, `${moved} bytes moved for an image of ${imageBytes}: downloaded twice`);
  assert.equal([a.stdout, b.stdout].filter((s) => /already present/.test(s)).length, 1, 'the second one found the first one\'s image');
});

test('a pull beyond the store budget first removes the least recently used image', async () => {
  const store = path.join(dir, 'store-budget');
  assert.equal((await vmlet(store, 'pull', `${plain.host}/vms/guest:v1`)).code, 0);
  assert.equal((await vmlet(store, 'pull', `${proxy.host}/agoda/macos:15`)).code, 0);
  // Budget for about one guest image: the older (v1) must go, the Agoda image stays.
  const ls = JSON.parse((await vmlet(store, 'ls', '--json')).stdout) as Array<{ names: string[]; diskSize: number }>;
  const guest = ls.find((i) => i.names.some((n) => n.endsWith('guest:v1')))!;
  const budget = guest.diskSize + 128 * MiB + 8 * MiB;
  const pulled = await vmlet(store, 'pull', `${secure.host}/vms/guest:v2`, `--ca-file=${secure.caFile}`, `--docker-config=${dockerConfig}`, `--budget=${budget}`);
  assert.equal(pulled.code, 0, pulled.stderr);
  const names = (JSON.parse((await vmlet(store, 'ls', '--json')).stdout) as Array<{ names: string[] }>).flatMap((i) => i.names);
  assert.ok(!names.some((n) => n.endsWith('/vms/guest:v1')), `v1 removed: ${names.join(', ')}`);
  assert.ok(names.some((n) => n.endsWith('/vms/guest:v2')));
});

test('a Linux guest image carries its kernel and initrd as vmlet layers through push and pull', async () => {
  const src = path.join(dir, 'linux-src');
  await mkdir(src, { recursive: true });
  const files = { disk: randomBytes(2 * MiB), kernel: randomBytes(300_000), initrd: randomBytes(200_000) };
  for (const [name, data] of Object.entries(files)) await writeFile(path.join(src, name), data);
  await writeFile(path.join(src, 'vm.json'), JSON.stringify({ ...vmConfig, kernelCommandLine: 'console=ttyS0 quiet' }));
  const storeA = path.join(dir, 'store-a');
  const imported = await vmlet(storeA, 'import', 'linux:1', `--disk=${path.join(src, 'disk')}`, `--config=${path.join(src, 'vm.json')}`, `--kernel=${path.join(src, 'kernel')}`, `--initrd=${path.join(src, 'initrd')}`);
  assert.equal(imported.code, 0, imported.stderr);
  assert.equal((await vmlet(storeA, 'push', 'linux:1', `${plain.host}/vms/linux:1`)).code, 0);
  const store = path.join(dir, 'store-linux');
  const pulled = await vmlet(store, 'pull', `${plain.host}/vms/linux:1`);
  assert.equal(pulled.code, 0, pulled.stderr);
  const inspect = JSON.parse((await vmlet(store, 'inspect', `${plain.host}/vms/linux:1`)).stdout) as { config: { kernelCommandLine: string }; manifest: { layers: Array<{ mediaType: string }> } };
  assert.equal(inspect.config.kernelCommandLine, 'console=ttyS0 quiet');
  const types = inspect.manifest.layers.map((l) => l.mediaType);
  assert.ok(types.includes('application/vnd.vmlet.linux.kernel.v1') && types.includes('application/vnd.vmlet.linux.initrd.v1'), types.join(', '));
  const out = path.join(dir, 'exported-linux');
  assert.equal((await vmlet(store, 'export', `${plain.host}/vms/linux:1`, out)).code, 0);
  assert.equal(sha(await readFile(path.join(out, 'kernel'))), sha(files.kernel));
  assert.equal(sha(await readFile(path.join(out, 'initrd'))), sha(files.initrd));
  assert.equal(sha(await readFile(path.join(out, 'disk.img'))), sha(files.disk));
});

test('a full disk fails the pull with one line naming the cause, leaves no half image, and the pull resumes once there is room', async (t) => {
  // A small tmpfs is a disk that fills up for real; mounting one needs root (CI runs as root).
  const store = path.join(dir, 'store-full');
  await mkdir(store, { recursive: true });
  const mounted = await runCommand('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', store]);
  if (mounted.code !== 0) {
    t.skip(`cannot mount a tmpfs here (${mounted.stderr.trim() || `exit ${mounted.code}`}): needs root`);
    return;
  }
  try {
    const image = `${plain.host}/vms/guest:v1`;
    const full = await vmlet(store, 'pull', image);
    assert.equal(full.code, 1, full.stdout);
    const lines = full.stderr.split('\n').filter((l) => l.startsWith('vmlet: '));
    assert.equal(lines.length, 1, full.stderr);
    assert.match(lines[0]!, /guest:v1/);
    assert.match(lines[0]!, /no space left on device/i);
    const ls = await vmlet(store, 'ls');
    assert.equal(ls.code, 0, ls.stderr);
    assert.equal(ls.stdout.split('\n').length, 1, 'nothing but the header: no half image listed');

    assert.equal((await runCommand('mount', ['-o', 'remount,size=64m', store])).code, 0);
    const resumed = await vmlet(store, 'pull', image);
    assert.equal(resumed.code, 0, resumed.stderr);
    const m = /\(([\d.]+) MiB downloaded/.exec(resumed.stdout);
    const inspect = JSON.parse((await vmlet(store, 'inspect', image)).stdout) as { manifest: { layers: Array<{ size: number }> } };
    const total = inspect.manifest.layers.reduce((n, l) => n + l.size, 0) / MiB;
    assert.ok(m && Number(m[1]) < total, `resumed pull downloaded ${m?.[1]} of ${total.toFixed(1)} MiB: it started over`);
    const out = path.join(dir, 'exported-full');
    assert.equal((await vmlet(store, 'export', image, out)).code, 0);
    assert.equal(sha(await readFile(path.join(out, 'disk.img'))), sha(await readFile(path.join(dir, 'exported', 'disk.img'))));
  } finally {
    await runCommand('umount', ['-l', store]);
  }
});
