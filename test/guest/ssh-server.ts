// The test guest's SSH server, for the SSH fallback (src/agent/ssh/): Debian's dropbear-bin and the shared
// libraries it links (libc comes with the host's Node, see assemble.ts), plus the accounts a stock image
// has: admin/admin as on Cirrus Labs' Tart images, and root/root (the agent needs root to open its
// virtio-serial port, and this guest has no sudo). rootfs-init.sh starts dropbear only with vmlet.ssh=on.
import { appendFile, copyFile, mkdir, readdir, readlink, symlink, writeFile, chmod, lstat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { runChecked } from '../harness/exec.ts';

/**
 * dropbear-bin and what it needs besides libc, found with `objdump -p | grep NEEDED` on Debian 12:
 * dropbear → libtomcrypt1, libtommath1, libcrypt1 (crypt(3) for /etc/shadow), zlib1g; libtomcrypt1 →
 * libgmp10. Plus OpenSSH's sftp-server (libc only), which dropbear runs for the SFTP subsystem from
 * /usr/lib/sftp-server, so that both of the agent installer's upload paths can be tested (SFTP, and
 * `cat >` when it is told not to use SFTP). build.ts pins their versions into the guest's cache key.
 */
export const SSH_PACKAGES = ['dropbear-bin', 'libtomcrypt1', 'libtommath1', 'libgmp10', 'libcrypt1', 'zlib1g', 'openssh-sftp-server'];

/** The accounts the guest has besides root's entry in assemble.ts: user → password. */
export const SSH_USERS = { admin: 'admin', root: 'root' } as const;

/**
 * Downloads `packages` ("name=version") into `work`, unpacks them, and copies dropbear, dropbearkey and
 * the libraries (with their soname links) into the staged root file system `root`. Adds the admin user
 * (/etc/passwd, /etc/group, /home/admin), /etc/shadow with crypt hashes made now by the guest's own
 * busybox (`mkpasswd -m sha512`, random salt), and /etc/shells. Returns the bytes of file content added.
 */
export async function stageSshServer(root: string, work: string, packages: string[], busybox: string): Promise<number> {
  const debs = join(work, 'debs');
  const unpacked = join(work, 'unpacked');
  await mkdir(debs, { recursive: true });
  const sandbox = process.getuid?.() === 0 ? ['-o', 'APT::Sandbox::User=root'] : [];
  await runChecked('apt-get', [...sandbox, 'download', ...packages], { cwd: debs, timeoutMs: 10 * 60_000 }).catch((err: Error) => {
    throw new Error(`${err.message}\n(if the mirror no longer has these versions, run apt-get update)`);
  });
  for (const deb of await readdir(debs)) await runChecked('dpkg-deb', ['-x', join(debs, deb), unpacked]);

  let bytes = 0;
  const copy = async (path: string): Promise<void> => {
    const from = join(unpacked, path);
    const to = join(root, path);
    await mkdir(dirname(to), { recursive: true });
    const st = await lstat(from);
    if (st.isSymbolicLink()) {
      await symlink(await readlink(from), to);
    } else {
      await copyFile(from, to);
      bytes += st.size;
    }
  };
  await copy('usr/sbin/dropbear');
  await copy('usr/bin/dropbearkey');
  await copy('usr/lib/openssh/sftp-server');
  await copy('usr/lib/sftp-server'); // -> openssh/sftp-server
  for (const dir of ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu']) {
    const names = await readdir(join(unpacked, dir)).catch(() => [] as string[]);
    for (const name of names) if (name.includes('.so')) await copy(join(dir, name));
  }

  const hash = async (password: string): Promise<string> =>
    (await runChecked(busybox, ['mkpasswd', '-m', 'sha512', password])).stdout.trim();
  const shadow = `root:${await hash(SSH_USERS.root)}:19000:0:99999:7:::\nadmin:${await hash(SSH_USERS.admin)}:19000:0:99999:7:::\n`;
  // uid 1000, not Tart's 501: this is a Linux guest. init chowns the home dir at boot, since mke2fs -d
  // keeps the owner of the staged files, which is whoever runs the build.
  await appendFile(join(root, 'etc/passwd'), 'admin:x:1000:1000:admin:/home/admin:/bin/sh\n');
  await appendFile(join(root, 'etc/group'), 'admin:x:1000:\n');
  await writeFile(join(root, 'etc/shadow'), shadow, { mode: 0o600 });
  await chmod(join(root, 'etc/shadow'), 0o600);
  await writeFile(join(root, 'etc/shells'), '/bin/sh\n/bin/ash\n');
  await mkdir(join(root, 'home/admin'), { recursive: true });
  await mkdir(join(root, 'etc/dropbear'), { recursive: true });
  return bytes + shadow.length;
}
