// Exec credential plugins (client.authentication.k8s.io/v1 and v1beta1): the kubeconfig names a command
// (aws eks get-token, gke-gcloud-auth-plugin, kubelogin, ...) that prints an ExecCredential with a token
// or a client certificate. The answer is cached until shortly before it expires, or until the API server
// rejects it.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { KubeconfigError } from './errors.ts';

export interface ExecConfig {
  apiVersion?: string;
  command?: string;
  args?: string[];
  env?: Array<{ name: string; value: string }>;
  installHint?: string;
}

export interface ExecCredentialStatus {
  token?: string;
  clientCertificateData?: string;
  clientKeyData?: string;
  expirationTimestamp?: string;
}

const TIMEOUT_MS = 60_000;
const EXPIRY_MARGIN_MS = 30_000;

export class ExecCredentialPlugin {
  private cached?: { status: ExecCredentialStatus; expires: number };
  private pending?: Promise<ExecCredentialStatus>;

  constructor(
    private readonly config: ExecConfig,
    private readonly source: string,
    private readonly dir: string,
  ) {
    if (!config.command) throw new KubeconfigError(`kubeconfig ${source}: exec plugin has no command`);
  }

  async token(): Promise<string | undefined> {
    return (await this.credential()).token;
  }

  async credential(): Promise<ExecCredentialStatus> {
    if (this.cached && Date.now() < this.cached.expires) return this.cached.status;
    this.pending ??= this.run().finally(() => (this.pending = undefined));
    return this.pending;
  }

  /** Forgets the cached credential (after a 401), so that the next request runs the plugin again. */
  invalidate(): void {
    this.cached = undefined;
  }

  private async run(): Promise<ExecCredentialStatus> {
    const apiVersion = this.config.apiVersion ?? 'client.authentication.k8s.io/v1';
    // A relative command path is relative to the kubeconfig's directory, as in client-go.
    const command = this.config.command!.includes('/') ? path.resolve(this.dir, this.config.command!) : this.config.command!;
    const env: NodeJS.ProcessEnv = { ...process.env, KUBERNETES_EXEC_INFO: JSON.stringify({ apiVersion, kind: 'ExecCredential', spec: { interactive: false } }) };
    for (const e of this.config.env ?? []) env[e.name] = e.value;
    const stdout = await new Promise<string>((resolve, reject) => {
      execFile(command, this.config.args ?? [], { env, timeout: TIMEOUT_MS, maxBuffer: 1 << 20 }, (err, out, errOut) => {
        if (err) {
          const hint = (err as NodeJS.ErrnoException).code === 'ENOENT' && this.config.installHint ? ` (${this.config.installHint.trim()})` : '';
          const detail = String(errOut || err.message).trim().split('\n')[0];
          reject(new KubeconfigError(`kubeconfig ${this.source}: exec plugin ${this.config.command} failed: ${detail}${hint}`));
        } else resolve(out);
      });
    });
    let status: ExecCredentialStatus | undefined;
    try {
      status = (JSON.parse(stdout) as { status?: ExecCredentialStatus }).status;
    } catch {
      throw new KubeconfigError(`kubeconfig ${this.source}: exec plugin ${this.config.command} printed no ExecCredential JSON`);
    }
    if (!status?.token && !(status?.clientCertificateData && status.clientKeyData)) {
      throw new KubeconfigError(`kubeconfig ${this.source}: exec plugin ${this.config.command} returned neither a token nor a client certificate`);
    }
    const expiry = status.expirationTimestamp ? Date.parse(status.expirationTimestamp) - EXPIRY_MARGIN_MS : Infinity;
    this.cached = { status, expires: expiry };
    return status;
  }
}
