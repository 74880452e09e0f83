// Who vmlet logs in as over SSH: from configuration (a user name with a password and/or a private key
// file), or from a Kubernetes Secret the caller has fetched (kubernetes.io/basic-auth or
// kubernetes.io/ssh-auth). Parsing is pure apart from reading the key file, so every case is unit-tested.
import { readFile } from 'node:fs/promises';
import ssh2 from 'ssh2';

// ssh2 is CommonJS and Node detects only some of its named exports (not utils).
const { utils } = ssh2;

export interface SshCredentials {
  username: string;
  password?: string;
  /** A private key in OpenSSH, PEM (PKCS#1/8) or PuTTY format. */
  privateKey?: Buffer;
  passphrase?: string;
}

/** SSH settings as configuration holds them: a key by path, read by loadSshCredentials(). */
export interface SshCredentialsConfig {
  username: string;
  password?: string;
  privateKeyFile?: string;
  passphrase?: string;
}

/** The parts of a core/v1 Secret this reads (`data` is base64, as the API returns it). */
export interface SecretLike {
  type?: string;
  metadata?: { name?: string; namespace?: string };
  data?: Record<string, string>;
  stringData?: Record<string, string>;
}

/** Reads the key file named by configuration and checks that what it holds is a usable key. */
export async function loadSshCredentials(config: SshCredentialsConfig): Promise<SshCredentials> {
  const creds: SshCredentials = { username: config.username };
  if (config.password !== undefined) creds.password = config.password;
  if (config.passphrase !== undefined) creds.passphrase = config.passphrase;
  if (config.privateKeyFile !== undefined) {
    const key = await readFile(config.privateKeyFile).catch((err: NodeJS.ErrnoException) => {
      throw new Error(`ssh private key ${config.privateKeyFile}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
    });
    creds.privateKey = key;
    checkKey(creds, `ssh private key ${config.privateKeyFile}`);
  }
  return checked(creds, 'ssh settings');
}

/**
 * Credentials from a Secret: `kubernetes.io/basic-auth` (username, password) or `kubernetes.io/ssh-auth`
 * (ssh-privatekey, plus optional `username` and `passphrase` keys, since the type defines none). A
 * Secret without a user name uses defaultUsername (e.g. configuration's), else it is an error.
 */
export function credentialsFromSecret(secret: SecretLike, defaultUsername?: string): SshCredentials {
  const ns = secret.metadata?.namespace;
  const what = `secret ${ns ? `${ns}/` : ''}${secret.metadata?.name ?? '(unnamed)'}`;
  const field = (key: string): string | undefined => {
    if (secret.stringData?.[key] !== undefined) return secret.stringData[key];
    const b64 = secret.data?.[key];
    if (b64 === undefined) return undefined;
    // Buffer.from(…, 'base64') skips bad characters silently; a value that does not round-trip is not base64.
    const clean = b64.replace(/\s+/g, '');
    const bytes = Buffer.from(clean, 'base64');
    if (bytes.toString('base64').replace(/=+$/, '') !== clean.replace(/=+$/, '')) {
      throw new Error(`${what}: data.${key} is not valid base64`);
    }
    return bytes.toString('utf8');
  };
  const username = field('username') ?? defaultUsername;
  switch (secret.type) {
    case 'kubernetes.io/basic-auth': {
      const password = field('password');
      if (username === undefined) throw new Error(`${what}: type kubernetes.io/basic-auth but no username`);
      if (password === undefined) throw new Error(`${what}: type kubernetes.io/basic-auth but no password`);
      return checked({ username, password }, what);
    }
    case 'kubernetes.io/ssh-auth': {
      const key = field('ssh-privatekey');
      if (key === undefined) throw new Error(`${what}: type kubernetes.io/ssh-auth but no ssh-privatekey`);
      if (username === undefined) {
        throw new Error(`${what}: type kubernetes.io/ssh-auth names no user; add a "username" key or configure one`);
      }
      const creds: SshCredentials = { username, privateKey: Buffer.from(key) };
      const passphrase = field('passphrase');
      if (passphrase !== undefined) creds.passphrase = passphrase;
      checkKey(creds, `${what}: ssh-privatekey`);
      return checked(creds, what);
    }
    default:
      throw new Error(
        `${what}: type ${secret.type ?? '(none)'} is not an SSH credential; use kubernetes.io/basic-auth or kubernetes.io/ssh-auth`,
      );
  }
}

/** The authentication methods these credentials can try, in the order they are tried. */
export function authMethods(creds: SshCredentials): ('publickey' | 'password' | 'keyboard-interactive')[] {
  const methods: ('publickey' | 'password' | 'keyboard-interactive')[] = [];
  if (creds.privateKey) methods.push('publickey');
  // keyboard-interactive with the password answers servers that only offer PAM-style prompts
  // (macOS's sshd does, depending on its configuration).
  if (creds.password !== undefined) methods.push('password', 'keyboard-interactive');
  return methods;
}

function checked(creds: SshCredentials, what: string): SshCredentials {
  if (!creds.username) throw new Error(`${what}: empty user name`);
  if (creds.password === undefined && creds.privateKey === undefined) throw new Error(`${what}: neither a password nor a private key`);
  return creds;
}

function checkKey(creds: SshCredentials, what: string): void {
  const parsed = utils.parseKey(creds.privateKey!, creds.passphrase);
  if (parsed instanceof Error) {
    const encrypted = /encrypted|passphrase/i.test(parsed.message);
    throw new Error(`${what}: ${encrypted && creds.passphrase === undefined ? 'the key is encrypted and no passphrase was given' : `not a usable private key (${parsed.message})`}`);
  }
  if (!parsed.isPrivateKey()) throw new Error(`${what}: holds a public key, not a private key`);
}
