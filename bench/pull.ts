// Benchmark: pulling a VM image, against three baselines measured in the same run on the same data.
//   image: a synthetic disk (default 4 GiB: half zeros, a quarter random, a quarter text-like) imported
//          and pushed by vmlet to the local plain-HTTP registry (Debian's docker-registry).
//   (a) curl fetching the same blobs, 4 at a time, to /dev/null: the network/registry bound;
//   (b) the compute bound: single-core time of what a pull computes (sha256 of the compressed blob,
//       Apple LZ4 decoding, sha256 of the output), measured alone, divided by the cores;
//   (c) `skopeo copy` of the same image to a directory (Debian's skopeo);
//   (d) not in the target, shown beside it: the disk's durable write speed (dd conv=fsync of as
//       many bytes as the disk holds non-zero), since a pull must make its disk durable;
//   (e) not in the target either: the machine bound. The registry runs on the same cores, and
//       receiving the blobs costs CPU too, so (a) and (b) cannot overlap fully: (e) is the single-core
//       compute plus curl's CPU time plus the registry's CPU time while serving curl, divided by the cores.
// vmlet's pull (the compiled `vmlet image pull` into an empty store) is timed, with its peak RSS and the
// allocated size of the resulting disk, and again with VMLET_DIRECT_IO=false (its disk writes through the
// page cache instead of O_DIRECT), an A/B in the same run. Then 5% of the disk is rewritten in 4 regions, pushed as v2, and
// pulled next to v1: the bytes it downloads are compared with a full pull.
// Targets: pull <= 1.3x max(a, b) and < (c); re-pull <= 10% of the bytes; allocated <= 1.05x non-zero
// data; peak RSS <= 300 MB.
// Run: npm run bench -- pull        (BENCH_DISK_GIB=1 for a quick run; BENCH_PULL_REPEAT=N pulls, median
//                                    reported, default 3; BENCH_CPU_PROF=DIR for V8 profiles)
import { execFile, spawn } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open, readFile, readdir, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { AppleLz4Parser } from '../src/images/lz4/apple-lz4.ts';
import { createFixtureDir, removeFixtureDir } from '../test/harness/processes.ts';
import { startRegistry } from '../test/harness/registry.ts';
import { runCommand } from '../test/harness/exec.ts';
import { VMLET_BIN } from '../test/harness/vmlet.ts';

const run = promisify(execFile);
const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
/** sysconf(_SC_CLK_TCK): 100 on Linux everywhere this runs. */
const CLOCK_TICKS = 100;
const DISK = Math.round(Number(process.env.BENCH_DISK_GIB ?? 4) * GiB);
/** Pulls of v1 measured (median reported): BENCH_PULL_REPEAT, default 3. */
const REPEAT = Math.max(1, Number(process.env.BENCH_PULL_REPEAT ?? 3));
const root = path.join(import.meta.dirname, '..');

async function ensureTools(): Promise<void> {
  const missing = ['curl', 'skopeo'].filter((bin) => !existsSync(`/usr/bin/${bin}`));
  if (missing.length === 0) return;
  // As root (CI, this project's machines) directly; elsewhere through sudo.
  const apt = (args: string[]) =>
    process.getuid?.() === 0
      ? run('apt-get', args, { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } })
      : run('sudo', ['apt-get', ...args], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  await apt(['update']);
  await apt(['install', '-y', '--no-install-recommends', ...missing]);
}


/** Writes the synthetic disk in 64 MiB pieces: zeros, random, text-like, zeros (half zeros overall). */
async function writeDisk(file: string): Promise<number> {
  const handle = await open(file, 'w');
  const piece = 64 * MiB;
  const text = Buffer.from('Mac Pro build agent: xcodebuild -scheme App -destination generic/platform=iOS ok 0123456789\n'.repeat(Math.ceil(piece / 90))).subarray(0, piece);
  let nonZero = 0;
  for (let at = 0; at < DISK; at += piece) {
    const kind = Math.floor((4 * at) / DISK); // 0: zeros, 1: random, 2: text, 3: zeros
    const len = Math.min(piece, DISK - at);
    if (kind === 1) {
      await handle.write(randomFillSync(Buffer.allocUnsafe(len)), 0, len, at);
      nonZero += len;
    } else if (kind === 2) {
      await handle.write(text, 0, len, at);
      nonZero += len;
    }
  }
  await handle.truncate(DISK);
  await handle.close();
  return nonZero;
}

/**
 * Runs a command, returning wall time, the peak RSS it reached and its CPU time, user and system (both
 * polled from /proc every 100 ms, so the CPU time misses at most the last 100 ms).
 */
async function timed(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ seconds: number; peakRss: number; cpu: { user: number; system: number }; stdout: string }> {
  const started = process.hrtime.bigint();
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  let stdout = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  let peakRss = 0;
  const cpu = { user: 0, system: 0 };
  const poll = setInterval(() => {
    void readFile(`/proc/${child.pid}/status`, 'utf8')
      .then((s) => {
        const hwm = Number(/^VmHWM:\s+(\d+) kB/m.exec(s)?.[1] ?? 0) * 1024;
        if (hwm > peakRss) peakRss = hwm;
      })
      .catch(() => undefined);
    // utime and stime, fields 14 and 15 of /proc/PID/stat (after the parenthesised command), in ticks.
    void readFile(`/proc/${child.pid}/stat`, 'utf8')
      .then((s) => {
        const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
        cpu.user = Number(f[11]) / CLOCK_TICKS;
        cpu.system = Number(f[12]) / CLOCK_TICKS;
      })
      .catch(() => undefined);
  }, 100);
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  clearInterval(poll);
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${code}\n${stdout}`);
  return { seconds: Number(process.hrtime.bigint() - started) / 1e9, peakRss, cpu, stdout };
}

async function vmlet(store: string, ...args: string[]) {
  return vmletWith({}, store, ...args);
}

async function vmletWith(env: NodeJS.ProcessEnv, store: string, ...args: string[]) {
  // BENCH_CPU_PROF=DIR: V8 CPU profiles of every vmlet run (one file per thread) into DIR, for where the time goes.
  const prof = process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  return timed(process.execPath, [...prof, VMLET_BIN, 'image', ...args, `--store=${store}`], { VMLET_USE_DIST: '1', ...env });
}

/** CPU time (user + system, seconds) a running process has used so far. */
async function cpuSeconds(pid: number): Promise<number> {
  const s = await readFile(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
}

async function computeBound(blobs: string[]): Promise<number> {
  let seconds = 0;
  for (const file of blobs) {
    const data = await readFile(file);
    const t0 = process.hrtime.bigint();
    createHash('sha256').update(data).digest();
    const parser = new AppleLz4Parser({ lend: true }); // as the pull decodes
    const out = createHash('sha256');
    for (let at = 0; at < data.length; at += 4 * MiB) for (const b of parser.push(data.subarray(at, at + 4 * MiB))) out.update(b);
    parser.end();
    out.digest();
    seconds += Number(process.hrtime.bigint() - t0) / 1e9;
  }
  return seconds / os.availableParallelism();
}

async function main(): Promise<void> {
  await ensureTools();
  console.log('building vmlet (npm run build) ...');
  const build = await runCommand('npm', ['run', 'build', '--silent'], { cwd: root, timeoutMs: 300_000 });
  if (build.code !== 0) throw new Error(build.stderr);
  const registry = await startRegistry({});
  const dir = await createFixtureDir('vmlet-bench-pull-');
  try {
    const src = path.join(dir, 'src');
    await mkdir(src);
    console.log(`writing a ${(DISK / GiB).toFixed(1)} GiB synthetic disk ...`);
    const nonZero = await writeDisk(path.join(src, 'disk.img'));
    await writeFile(path.join(src, 'config.json'), JSON.stringify({ version: 1, os: 'linux', arch: 'amd64', cpuCountMin: 1, cpuCount: 2, memorySizeMin: 512 * MiB, memorySize: GiB, macAddress: '52:54:00:00:00:01' }));
    await writeFile(path.join(src, 'nvram.bin'), Buffer.alloc(64 * 1024, 1));
    const storeA = path.join(dir, 'store-a');
    const target = `${registry.host}/bench/disk`;
    console.log('vmlet image import + push (v1) ...');
    await vmlet(storeA, 'import', 'bench:v1', `--dir=${src}`);
    await vmlet(storeA, 'push', 'bench:v1', `${target}:v1`);

    // The blobs as the registry serves them, for the baselines.
    const manifest = JSON.parse((await run('curl', ['-sf', '-H', 'Accept: application/vnd.oci.image.manifest.v1+json', `${registry.url}/v2/bench/disk/manifests/v1`])).stdout) as { layers: Array<{ digest: string; size: number; mediaType: string }> };
    const disks = manifest.layers.filter((l) => l.mediaType.endsWith('disk.v2'));
    const compressed = disks.reduce((n, l) => n + l.size, 0);
    const urls = manifest.layers.map((l) => `${registry.url}/v2/bench/disk/blobs/${l.digest}`);
    await writeFile(path.join(dir, 'urls'), urls.join('\n'));

    console.log('(a) curl, 4 at a time ...');
    // `times` prints the shell's CPU time and, on its second line, that of its children (xargs, curl).
    let registryCpu = await cpuSeconds(registry.pid);
    const curl = await timed('sh', ['-c', `xargs -P4 -n1 curl -sf -o /dev/null < ${path.join(dir, 'urls')}; times`]);
    const registryForCurl = (await cpuSeconds(registry.pid)) - registryCpu;
    const curlCpu = /(\d+)m([\d.]+)s (\d+)m([\d.]+)s\s*$/.exec(curl.stdout);
    const curlCpuSeconds = curlCpu ? 60 * Number(curlCpu[1]) + Number(curlCpu[2]) + 60 * Number(curlCpu[3]) + Number(curlCpu[4]) : NaN;
    console.log('(b) compute bound (single core, divided by cores) ...');
    const blobDir = path.join(storeA, 'content', 'blobs', 'sha256');
    const compute = await computeBound(disks.map((l) => path.join(blobDir, l.digest.slice(7))));
    const machine = (compute * os.availableParallelism() + curlCpuSeconds + registryForCurl) / os.availableParallelism();
    console.log('(d) writing the non-zero data to disk durably (dd conv=fsync) ...');
    const dd = await timed('dd', ['if=/dev/zero', `of=${path.join(dir, 'dd.img')}`, 'bs=4M', `count=${Math.round(nonZero / (4 * MiB))}`, 'conv=fsync', 'status=none']);
    await rm(path.join(dir, 'dd.img'), { force: true });
    console.log('(c) skopeo copy to a directory ...');
    const skopeoDir = path.join(dir, 'skopeo');
    const skopeo = await timed('skopeo', ['copy', '--src-tls-verify=false', `docker://${target}:v1`, `dir:${skopeoDir}`]);
    await rm(skopeoDir, { recursive: true, force: true });

    // Each pull into an empty store, REPEAT times, the median reported (this machine's noise is large);
    // the with- and without-O_DIRECT runs alternate.
    console.log(`vmlet image pull (v1) into an empty store, ${REPEAT} times, and as many through the page cache (VMLET_DIRECT_IO=false) ...`);
    const storeB = path.join(dir, 'store-b');
    const storeC = path.join(dir, 'store-c');
    const pulls: Array<Awaited<ReturnType<typeof timed>> & { registryCpu: number }> = [];
    const buffereds: Awaited<ReturnType<typeof timed>>[] = [];
    let allocated = 0;
    for (let i = 0; i < REPEAT; i++) {
      await rm(storeB, { recursive: true, force: true });
      registryCpu = await cpuSeconds(registry.pid);
      const pulled = await vmlet(storeB, 'pull', `${target}:v1`);
      pulls.push({ ...pulled, registryCpu: (await cpuSeconds(registry.pid)) - registryCpu });
      const pulledDisk = path.join(storeB, 'images', (await readdir(path.join(storeB, 'images'))).find((e) => /^[a-f0-9]{64}$/.test(e))!, 'disk.img');
      allocated = (await stat(pulledDisk)).blocks * 512;
      buffereds.push(await vmletWith({ VMLET_DIRECT_IO: 'false' }, storeC, 'pull', `${target}:v1`));
      await rm(storeC, { recursive: true, force: true });
    }
    const median = <T extends { seconds: number }>(xs: T[]): T => [...xs].sort((a, b) => a.seconds - b.seconds)[Math.floor(xs.length / 2)]!;
    const pull = median(pulls);
    const buffered = median(buffereds);
    console.log(`pulls: ${pulls.map((r) => r.seconds.toFixed(2)).join(', ')} s; through the page cache: ${buffereds.map((r) => r.seconds.toFixed(2)).join(', ')} s`);

    console.log('rewriting 5% of the disk in 4 regions, push v2, pull v2 next to v1 ...');
    const handle = await open(path.join(src, 'disk.img'), 'r+');
    const region = Math.round((0.05 * DISK) / 4);
    for (const at of [0.1, 0.35, 0.6, 0.85]) {
      const buf = Buffer.alloc(region, 0x5a);
      await handle.write(buf, 0, region, Math.round(at * DISK) + 12345);
    }
    await handle.close();
    await vmlet(storeA, 'import', 'bench:v2', `--dir=${src}`);
    await vmlet(storeA, 'push', 'bench:v2', `${target}:v2`);
    const repull = await vmlet(storeB, 'pull', `${target}:v2`);
    const downloaded = Number(/\(([\d.]+) MiB downloaded/.exec(repull.stdout)?.[1] ?? NaN) * MiB;

    const bound = Math.max(curl.seconds, compute);
    const boundWithDisk = Math.max(bound, dd.seconds);
    const f = (s: number) => `${s.toFixed(2)} s`;
    console.log('');
    console.log(`disk ${(DISK / GiB).toFixed(1)} GiB (${(nonZero / GiB).toFixed(2)} GiB non-zero), ${disks.length} chunks, ${(compressed / MiB).toFixed(0)} MiB compressed`);
    console.log('| measure | value | baseline (same run) | ratio | target |');
    console.log('|---|---|---|---|---|');
    console.log(`| vmlet pull + verify + decompress + sparse write | ${f(pull.seconds)} | (a) curl x4 ${f(curl.seconds)}; (b) compute ${f(compute)} | ${(pull.seconds / bound).toFixed(2)}x max(a,b) | <= 1.3x |`);
    console.log(`| the registry's CPU time while it serves the image | the pull: ${f(pull.registryCpu)} | curl x4: ${f(registryForCurl)} (curl's own CPU: ${f(curlCpuSeconds)}) | - | - |`);
    console.log(`| the same pull, against the machine bound | ${f(pull.seconds)} | (e) (single-core compute + curl's CPU + the registry's) / ${os.availableParallelism()} cores ${f(machine)} | ${(pull.seconds / machine).toFixed(2)}x (e) | - |`);
    console.log(`| the same, against the disk's durable write speed too | ${f(pull.seconds)} | (d) dd conv=fsync of the non-zero data ${f(dd.seconds)} | ${(pull.seconds / boundWithDisk).toFixed(2)}x max(a,b,d) | - |`);
    const cpuOf = (r: { seconds: number; cpu: { user: number; system: number } }) => `${f(r.cpu.user)} user + ${f(r.cpu.system)} system (${((r.cpu.user + r.cpu.system) / r.seconds).toFixed(2)} of ${os.availableParallelism()} cores busy)`;
    console.log(`| CPU time of the pull | ${cpuOf(pull)} | through the page cache: ${cpuOf(buffered)} | - | - |`);
    console.log(`| the same pull through the page cache (VMLET_DIRECT_IO=false) | ${f(buffered.seconds)} | the pull with O_DIRECT ${f(pull.seconds)} | ${(buffered.seconds / pull.seconds).toFixed(2)}x | - |`);
    console.log(`| vmlet pull vs skopeo copy | ${f(pull.seconds)} | (c) skopeo ${f(skopeo.seconds)} | ${(pull.seconds / skopeo.seconds).toFixed(2)}x | < 1x |`);
    console.log(`| re-pull after 5% rewritten in 4 regions | ${(downloaded / MiB).toFixed(0)} MiB | full pull ${(compressed / MiB).toFixed(0)} MiB | ${((100 * downloaded) / compressed).toFixed(1)}% | <= 10% |`);
    console.log(`| allocated blocks of the pulled disk | ${(allocated / MiB).toFixed(0)} MiB | non-zero data ${(nonZero / MiB).toFixed(0)} MiB | ${(allocated / nonZero).toFixed(3)}x | <= 1.05x |`);
    console.log(`| peak RSS of vmlet image pull (the most of its runs) | ${(Math.max(...pulls.map((r) => r.peakRss)) / MiB).toFixed(0)} MB | - | - | <= 300 MB |`);
  } finally {
    await registry.stop();
    await removeFixtureDir(dir);
  }
}

await main();
