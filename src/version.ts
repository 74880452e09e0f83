// Versions vmlet reports about itself: its own release and the Kubernetes API level it implements.
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

/** vmlet's own version, from package.json. */
export const VMLET_VERSION: string = pkg.version;

/** The Kubernetes release whose kubelet behaviour vmlet follows (and whose binaries the tests run). */
export const KUBERNETES_VERSION = '1.36.3';

/** What the Node reports as its kubelet version, e.g. `v1.36.3-vmlet-0.1.0`. */
export const KUBELET_VERSION = `v${KUBERNETES_VERSION}-vmlet-${VMLET_VERSION}`;

/** What the Node reports as its container runtime. */
export const RUNTIME_VERSION = `vmlet://${VMLET_VERSION}`;
