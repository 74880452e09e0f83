// `vmlet image pull | push | ls | inspect | rm | prune | import | export`: the image store from the
// command line, against the same store directory `vmlet run` uses.
import type { Command } from 'commander';
import { exportImage, importImage, pushImage, tartVmDirectory, DEFAULT_CHUNK_SIZE, type ImportSource } from '../images/build.ts';
import { pullImage } from '../images/pull.ts';
import { RegistryClient } from '../images/registry/client.ts';
import { CredentialStore } from '../images/registry/credentials.ts';
import { ImageStore, type StoredImage } from '../images/store/image-store.ts';
import { ConfigError, loadConfig } from '../config/load.ts';
import { parseQuantity } from '../kube/quantity.ts';
import { createProgress } from './progress.ts';
import { readFileSync } from 'node:fs';

export interface CommonFlags {
  store?: string;
  insecureRegistry?: string[];
  caFile?: string[];
  dockerConfig?: string;
}

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

export function addImageCommands(program: Command): void {
  const image = program.command('image').description('Pull, push, list and manage VM images');
  const common = storeOptions;

  common(image.command('pull <image>').description('Pull a VM image (Tart or Agoda format) into the store'))
    .option('--platform <os/arch>', 'platform to pick from an index (default: this host)')
    .option('--budget <bytes>', 'bytes the store may hold; least recently used images go first to make room (e.g. 200Gi)')
    .action(async (ref: string, flags: CommonFlags & { platform?: string; budget?: string }) => {
      const { store, registry } = await open(flags);
      const progress = createProgress();
      try {
        const result = await pullImage({
          store,
          registry,
          image: ref,
          ...(flags.platform ? { platform: platformOf(flags.platform) } : {}),
          ...(flags.budget ? { budgetBytes: quantity('--budget', flags.budget) } : {}),
          onProgress: (p) => progress.update(p.layer === 'image' ? 'total' : `layer ${p.layer}`, p.bytes, p.total),
        });
        progress.stop();
        const how = result.alreadyPresent ? 'already present' : `${mib(result.downloaded)} MiB downloaded, ${mib(result.reused)} MiB reused from the store`;
        console.log(`${result.image.names[0] ?? ref} ${result.image.digest} (${how})`);
      } finally {
        progress.stop();
        await registry.close();
      }
    });

  common(image.command('push <image> <target>').description('Push a stored image to registry/repository:tag'))
    .option('--tag <tag>', 'extra tag (repeatable)', collect)
    .action(async (ref: string, target: string, flags: CommonFlags & { tag?: string[] }) => {
      const { store, registry } = await open(flags);
      const progress = createProgress();
      try {
        const r = await pushImage({ store, registry, image: ref, target, extraTags: flags.tag, onProgress: (b, t) => progress.update('total', b, t) });
        progress.stop();
        console.log(`${target} ${r.digest} (${mib(r.uploaded)} MiB uploaded, ${mib(r.skipped)} MiB already there)`);
      } finally {
        progress.stop();
        await registry.close();
      }
    });

  common(image.command('ls').description('List stored images'))
    .option('--json', 'JSON output')
    .action(async (flags: CommonFlags & { json?: boolean }) => {
      const store = await openStore(flags);
      const images = await store.list();
      if (flags.json) return console.log(JSON.stringify(images.map(summary), null, 2));
      const rows = images.map((i) => [i.names.join(',') || '<none>', i.digest.slice(7, 19), i.layout.format, i.layout.chunks.length.toString(), gib(i.layout.diskSize), gib(i.diskUsage), i.inUse ? 'yes' : '']);
      printTable(['NAME', 'DIGEST', 'FORMAT', 'CHUNKS', 'DISK', 'ON DISK', 'IN USE'], rows);
    });

  common(image.command('inspect <image>').description('Show a stored image: manifest, layout and VM config')).action(async (ref: string, flags: CommonFlags) => {
    const store = await openStore(flags);
    const stored = await find(store, ref);
    const config = JSON.parse(readFileSync(`${stored.dir}/config.json`, 'utf8')) as unknown;
    console.log(JSON.stringify({ ...summary(stored), config, manifest: stored.manifest }, null, 2));
  });

  common(image.command('rm <image...>').description('Remove stored images (not those in use)')).action(async (refs: string[], flags: CommonFlags) => {
    const store = await openStore(flags);
    for (const ref of refs) {
      const stored = await find(store, ref);
      await store.remove(stored.digest);
      console.log(`removed ${stored.names.join(',') || stored.digest}`);
    }
  });

  common(image.command('prune').description('Remove least recently used images until the store fits a budget'))
    .option('--budget <bytes>', 'bytes to keep at most, e.g. 200Gi (default 0: everything not in use)', '0')
    .action(async (flags: CommonFlags & { budget: string }) => {
      const store = await openStore(flags);
      const removed = await store.prune(quantity('--budget', flags.budget));
      for (const image of removed) console.log(`removed ${image.names.join(',') || image.digest} (${gib(image.diskUsage)})`);
      if (removed.length === 0) console.log('nothing to remove');
    });

  common(image.command('import <name>').description('Make an image from a Tart VM directory, or from a raw disk and a VM config'))
    .option('--dir <tart-vm-dir>', 'a Tart VM directory (config.json, disk.img, nvram.bin)')
    .option('--disk <file>', 'raw disk image')
    .option('--config <file>', "Tart VMConfig JSON (os, arch, cpuCount, memorySize, ...)")
    .option('--nvram <file>', 'NVRAM / EFI variable store')
    .option('--kernel <file>', 'Linux kernel (direct boot by QEMU)')
    .option('--initrd <file>', 'initrd for the kernel')
    .option('--chunk-size <bytes>', `uncompressed bytes per disk layer (default ${DEFAULT_CHUNK_SIZE / 1024 / 1024}Mi)`)
    .action(async (name: string, flags: CommonFlags & { dir?: string; disk?: string; config?: string; nvram?: string; kernel?: string; initrd?: string; chunkSize?: string }) => {
      const store = await openStore(flags);
      let source: ImportSource;
      if (flags.dir) source = tartVmDirectory(flags.dir);
      else if (flags.disk && flags.config) source = { disk: flags.disk, config: flags.config, nvram: flags.nvram, kernel: flags.kernel, initrd: flags.initrd };
      else throw new ConfigError('import needs --dir, or --disk and --config');
      const progress = createProgress();
      try {
        const stored = await importImage({
          store,
          name,
          source,
          ...(flags.chunkSize ? { chunkSize: quantity('--chunk-size', flags.chunkSize) } : {}),
          onProgress: (b, t) => progress.update('total', b, t),
        });
        progress.stop();
        console.log(`${stored.names[0]} ${stored.digest}`);
      } finally {
        progress.stop();
      }
    });

  common(image.command('export <image> <dir>').description('Write a stored image out as a Tart VM directory')).action(async (ref: string, dir: string, flags: CommonFlags) => {
    const store = await openStore(flags);
    await exportImage(store, ref, dir);
    console.log(`exported to ${dir}`);
  });
}

/** --store and the registry flags, shared by `vmlet image` and `vmlet vm`. */
export function storeOptions(cmd: Command): Command {
  return cmd
    .option('--store <dir>', 'image store directory (default: the imageCacheDir of vmlet run)')
    .option('--insecure-registry <host:port>', 'registry spoken to over plain HTTP (repeatable; loopback is allowed anyway)', collect)
    .option('--ca-file <pem>', 'extra CA certificate for registries (repeatable)', collect)
    .option('--docker-config <file>', "docker's config.json with registry credentials (default ~/.docker/config.json)");
}

export async function openStore(flags: CommonFlags): Promise<ImageStore> {
  const config = loadConfig({ env: process.env });
  const store = new ImageStore(flags.store ?? config.imageCacheDir, { directIo: config.directIo });
  await store.init();
  return store;
}

export async function open(flags: CommonFlags): Promise<{ store: ImageStore; registry: RegistryClient }> {
  const caPems = (flags.caFile ?? []).map((file) => {
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError(`--ca-file ${file} cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  });
  const registry = new RegistryClient({
    plainHttpRegistries: flags.insecureRegistry ?? [],
    caPems,
    credentials: new CredentialStore({ ...(flags.dockerConfig ? { dockerConfigPath: flags.dockerConfig } : {}) }),
  });
  return { store: await openStore(flags), registry };
}

/** `--platform os/arch[/variant]` as an OCI platform. */
function platformOf(text: string): { os: string; architecture: string; variant?: string } {
  const [os, architecture, variant, extra] = text.split('/');
  if (!os || !architecture || extra !== undefined) throw new ConfigError(`--platform "${text}" must be os/arch or os/arch/variant, e.g. darwin/arm64`);
  return { os, architecture, ...(variant ? { variant } : {}) };
}

export function quantity(flag: string, text: string): number {
  try {
    return parseQuantity(text);
  } catch (err) {
    throw new ConfigError(`${flag}: ${(err as Error).message}`);
  }
}

async function find(store: ImageStore, ref: string): Promise<StoredImage> {
  const digest = await store.resolve(ref);
  const stored = digest ? await store.get(digest) : undefined;
  if (!stored) throw new ConfigError(`image ${ref} is not in the store (vmlet image ls lists what is)`);
  return stored;
}

function summary(i: StoredImage) {
  return { names: i.names, digest: i.digest, format: i.layout.format, chunks: i.layout.chunks.length, diskSize: i.layout.diskSize, diskUsage: i.diskUsage, inUse: i.inUse, usedAt: i.usedAt };
}

function printTable(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  for (const row of [head, ...rows]) console.log(row.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
}

const mib = (n: number) => (n / 1024 / 1024).toFixed(1);
const gib = (n: number) => `${(n / 1024 ** 3).toFixed(2)} GiB`;
