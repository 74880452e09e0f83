import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { V1Container, V1Pod, V1PodSpec } from '@kubernetes/client-node';
import { PodSpecError } from '../../../src/runtime/pod/errors.ts';
import { checkPod, checkRuntimeClass, engineContainers, podWarnings, sidecarContainers, vmContainer } from '../../../src/runtime/pod/validate.ts';

const opts = { hostPathPrefixes: ['/srv/shared', '/var/lib/vmlet/host'] };
const vm: V1Container = { name: 'vm', image: 'ghcr.io/cirruslabs/ubuntu:latest' };

function pod(spec: Partial<V1PodSpec> = {}, container: Partial<V1Container> = {}): V1Pod {
  return { metadata: { name: 'web', namespace: 'default', uid: 'u1' }, spec: { containers: [{ ...vm, ...container }], ...spec } };
}

function verdict(p: V1Pod, o: Parameters<typeof checkPod>[1] = opts): string {
  try {
    checkPod(p, o);
    return 'accepted';
  } catch (err) {
    assert.ok(err instanceof PodSpecError, String(err));
    return `${err.reason}: ${err.message}`;
  }
}

test('a plain one-container pod, with the things a VM pod may use, is accepted', () => {
  const p = pod(
    {
      initContainers: [{ name: 'setup', image: 'ghcr.io/cirruslabs/ubuntu:latest', command: ['sh', '-c', 'true'] }],
      volumes: [
        { name: 'cfg', configMap: { name: 'cfg' } },
        { name: 'sec', secret: { secretName: 's' } },
        { name: 'info', downwardAPI: { items: [{ path: 'labels', fieldRef: { fieldPath: 'metadata.labels' } }] } },
        { name: 'proj', projected: { sources: [{ serviceAccountToken: { path: 'token' } }, { configMap: { name: 'c' } }] } },
        { name: 'scratch', emptyDir: { medium: 'Memory', sizeLimit: '1Gi' } },
        { name: 'defaulted' },
        { name: 'data', hostPath: { path: '/srv/shared/data' } },
        { name: 'root', hostPath: { path: '/var/lib/vmlet/host', type: 'Directory' } },
        { name: 'made', hostPath: { path: '/srv/shared/new', type: 'DirectoryOrCreate' } },
      ],
      runtimeClassName: 'vmlet',
    },
    {
      stdin: true,
      tty: true,
      command: [],
      workingDir: '/app',
      env: [{ name: 'A_B.c-d', value: 'x' }, { name: '_X', value: 'y' }, { name: 'MEM', valueFrom: { resourceFieldRef: { resource: 'limits.memory', divisor: '1Mi' } } }],
      envFrom: [{ prefix: 'CFG_', configMapRef: { name: 'cfg' } }],
      ports: [{ containerPort: 80 }],
      volumeMounts: [
        { name: 'cfg', mountPath: '/etc/cfg', readOnly: true },
        { name: 'data', mountPath: '/data' },
      ],
      readinessProbe: { httpGet: { path: '/', port: 80 } },
      livenessProbe: { tcpSocket: { port: 80 } },
      lifecycle: { preStop: { sleep: { seconds: 2 } } },
      resources: { limits: { cpu: '1500m', memory: '2Gi', 'ephemeral-storage': '64Mi' }, requests: { cpu: '500m', memory: '1Gi', 'ephemeral-storage': '1' } },
    },
  );
  assert.equal(verdict(p, { ...opts, runtimeClasses: ['vmlet'] }), 'accepted');
});

// Each spec as a new user would write it, the reason it must get and the words its message must hold.
const cases: Array<[string, V1Pod, RegExp]> = [
  ['a pod with no containers', pod({ containers: [] }), /^InvalidPodSpec: spec\.containers: a pod needs one container/],
  [
    'a privileged sidecar (it would have the host)',
    pod({ containers: [vm, { name: 'helper', image: 'busybox', securityContext: { privileged: true } }] }),
    /^UnsupportedPodSpec: spec\.containers\[1\] \(helper\)\.securityContext\.privileged: true is not supported: "helper" is a sidecar container on the node's container engine/,
  ],
  [
    'a vm-container annotation naming no container',
    { ...pod({ containers: [vm, { name: 'helper', image: 'busybox' }] }), metadata: { name: 'web', namespace: 'default', uid: 'u1', annotations: { 'vmlet.dev/vm-container': 'build' } } },
    /^InvalidPodSpec: metadata\.annotations\["vmlet\.dev\/vm-container"\]: no container named "build" in spec\.containers \(there are: vm, helper\)/,
  ],
  ['an empty image', pod({}, { image: '' }), /^InvalidPodSpec: spec\.containers\[0\] \(vm\)\.image: no image is given/],
  ['an image with a trailing space', pod({}, { image: 'ghcr.io/x/vm:1 ' }), /^InvalidPodSpec: .*\.image: "ghcr\.io\/x\/vm:1 " has leading or trailing spaces/],
  ['hostNetwork: true', pod({ hostNetwork: true }), /^UnsupportedPodSpec: spec\.hostNetwork: true is not supported: .*network namespace; remove spec\.hostNetwork/],
  ['hostPID: true', pod({ hostPID: true }), /^UnsupportedPodSpec: spec\.hostPID: true .*PID namespace/],
  ['hostIPC: true', pod({ hostIPC: true }), /^UnsupportedPodSpec: spec\.hostIPC: true .*IPC namespace/],
  ['an ephemeral (kubectl debug) container', pod({ ephemeralContainers: [{ name: 'debugger', image: 'busybox' }] }), /^UnsupportedPodSpec: spec\.ephemeralContainers\[0\] \(debugger\): .*use kubectl exec/],
  ['a hostPort', pod({}, { ports: [{ containerPort: 80, hostPort: 8080 }] }), /^UnsupportedPodSpec: spec\.containers\[0\] \(vm\)\.ports\[0\]\.hostPort: 8080 is not supported/],
  ['privileged: true', pod({}, { securityContext: { privileged: true } }), /^UnsupportedPodSpec: .*\.securityContext\.privileged: true is not supported/],
  ['a persistentVolumeClaim volume', pod({ volumes: [{ name: 'db', persistentVolumeClaim: { claimName: 'db' } }] }), /^UnsupportedPodSpec: spec\.volumes\[0\] \(db\): persistent and CSI volumes need a storage driver.*VM pods support configMap, secret/],
  ['an nfs volume', pod({ volumes: [{ name: 'share', nfs: { server: 'nas', path: '/x' } }] }), /^UnsupportedPodSpec: spec\.volumes\[0\] \(share\): nfs volumes are not supported; VM pods support/],
  ['a csi volume', pod({ volumes: [{ name: 'c', csi: { driver: 'x.csi.io' } }] }), /^UnsupportedPodSpec: spec\.volumes\[0\] \(c\): persistent and CSI volumes/],
  ['a projected clusterTrustBundle', pod({ volumes: [{ name: 'p', projected: { sources: [{ clusterTrustBundle: { path: 'ca.pem', name: 'b' } }] } }] }), /^UnsupportedPodSpec: spec\.volumes\[0\] \(p\)\.projected\.sources\[0\]: clusterTrustBundle is not supported/],
  ['an emptyDir of huge pages', pod({ volumes: [{ name: 'h', emptyDir: { medium: 'HugePages' } }] }), /^UnsupportedPodSpec: .*emptyDir medium "HugePages" is not supported/],
  [
    'a hostPath outside the allowed prefixes',
    pod({ volumes: [{ name: 'etc', hostPath: { path: '/etc' } }] }),
    /^UnsupportedPodSpec: spec\.volumes\[0\] \(etc\)\.hostPath\.path: hostPath "\/etc" is outside the host directories this node shares \(\/srv\/shared, \/var\/lib\/vmlet\/host: its hostPathPrefixes setting\); use a path under one of them, or ask the node's administrator to add one with --host-path-prefix$/,
  ],
  ['a hostPath of a single file', pod({ volumes: [{ name: 'sock', hostPath: { path: '/srv/shared/docker.sock', type: 'Socket' } }] }), /^UnsupportedPodSpec: spec\.volumes\[0\] \(sock\)\.hostPath\.type: "Socket" is not supported: a VM gets host directories \(shared over virtiofs\), not single files, sockets or devices; share the directory that holds it/],
  ['a hostPath of type File', pod({ volumes: [{ name: 'f', hostPath: { path: '/srv/shared/a.conf', type: 'File' } }] }), /^UnsupportedPodSpec: .*\.hostPath\.type: "File" is not supported/],
  ['an image reference in capitals', pod({}, { image: 'Ubuntu:Latest' }), /^InvalidImageName: spec\.containers\[0\] \(vm\)\.image: "Ubuntu:Latest" is not a valid image reference: repository name must be lowercase; write it as \[registry\/\]repository\[:tag\]\[@sha256:digest\]/],
  ['an image reference with two tags', pod({}, { image: 'ghcr.io/x/vm:1:2' }), /^InvalidImageName: .*\.image: "ghcr\.io\/x\/vm:1:2" is not a valid image reference: /],
  ['an image digest that is not one', pod({}, { image: 'ghcr.io/x/vm@sha256:abc' }), /^InvalidImageName: .*is not a valid image reference: malformed digest "sha256:abc"/],
  ['an init container image that is not a reference', pod({ initContainers: [{ name: 'setup', image: 'https://ghcr.io/x/vm:1' }] }), /^InvalidImageName: spec\.initContainers\[0\] \(setup\)\.image: "https:\/\/ghcr\.io\/x\/vm:1" is not a valid image reference/],
  ['an ephemeral-storage limit of 1 byte', pod({}, { resources: { limits: { 'ephemeral-storage': '1' } } }), /^InvalidVmSize: spec\.containers\[0\] \(vm\)\.resources\.limits\.ephemeral-storage: 1 is less than a VM writes to its disk while it boots; give at least 64Mi \(e\.g\. 1Gi\) or remove the limit/],
  ['an ephemeral-storage limit of 0', pod({}, { resources: { limits: { 'ephemeral-storage': '0' } } }), /^InvalidVmSize: .*\.resources\.limits\.ephemeral-storage: 0 is less than/],
  ['an env resourceFieldRef to ephemeral-storage', pod({}, { env: [{ name: 'DISK', valueFrom: { resourceFieldRef: { resource: 'limits.ephemeral-storage' } } }] }), /^UnsupportedPodSpec: spec\.containers\[0\] \(vm\)\.env\[0\] \(DISK\)\.valueFrom\.resourceFieldRef\.resource: "limits\.ephemeral-storage" is not supported in VM pods; use one of limits\.cpu, limits\.memory, requests\.cpu, requests\.memory/],
  ['an env resourceFieldRef to huge pages', pod({}, { env: [{ name: 'HP', valueFrom: { resourceFieldRef: { resource: 'limits.hugepages-2Mi' } } }] }), /^UnsupportedPodSpec: .*\.env\[0\] \(HP\)\.valueFrom\.resourceFieldRef\.resource: "limits\.hugepages-2Mi"/],
  [
    'a downwardAPI volume item with a resourceFieldRef',
    pod({ volumes: [{ name: 'info', downwardAPI: { items: [{ path: 'cpu', resourceFieldRef: { containerName: 'vm', resource: 'limits.cpu' } }] } }] }),
    /^UnsupportedPodSpec: spec\.volumes\[0\] \(info\)\.downwardAPI\.items\[0\] \(cpu\)\.resourceFieldRef: "limits\.cpu" is not supported in downwardAPI volumes of VM pods yet; use an environment variable with valueFrom\.resourceFieldRef/,
  ],
  [
    'a projected downwardAPI item with a resourceFieldRef',
    pod({ volumes: [{ name: 'p', projected: { sources: [{ downwardAPI: { items: [{ path: 'mem', resourceFieldRef: { containerName: 'vm', resource: 'limits.memory' } }] } }] } }] }),
    /^UnsupportedPodSpec: spec\.volumes\[0\] \(p\)\.projected\.sources\[0\]\.downwardAPI\.items\[0\] \(mem\)\.resourceFieldRef/,
  ],
  ['a hostPath that climbs out of a prefix', pod({ volumes: [{ name: 'up', hostPath: { path: '/srv/shared/../../etc' } }] }), /^UnsupportedPodSpec: .*hostPath "\/srv\/shared\/\.\.\/\.\.\/etc" is outside/],
  ['a hostPath that only shares a name prefix', pod({ volumes: [{ name: 'sib', hostPath: { path: '/srv/shared-other' } }] }), /^UnsupportedPodSpec: .*hostPath "\/srv\/shared-other" is outside/],
  ['two volumes with one name', pod({ volumes: [{ name: 'a', emptyDir: {} }, { name: 'a', emptyDir: {} }] }), /^InvalidPodSpec: spec\.volumes\[1\] \(a\): the volume name "a" is used twice/],
  ['a volumeMount naming an unknown volume', pod({ volumes: [{ name: 'cfg', configMap: { name: 'c' } }] }, { volumeMounts: [{ name: 'config', mountPath: '/etc/cfg' }] }), /^InvalidPodSpec: .*\.volumeMounts\[0\]\.name: no volume named "config" in spec\.volumes \(there are: cfg\)/],
  ['a relative mountPath', pod({ volumes: [{ name: 'v', emptyDir: {} }] }, { volumeMounts: [{ name: 'v', mountPath: 'data' }] }), /^InvalidPodSpec: .*\.volumeMounts\[0\]\.mountPath: "data" is not an absolute path/],
  ['two mounts at one path', pod({ volumes: [{ name: 'a', emptyDir: {} }, { name: 'b', emptyDir: {} }] }, { volumeMounts: [{ name: 'a', mountPath: '/data' }, { name: 'b', mountPath: '/data/' }] }), /^InvalidPodSpec: .*\.volumeMounts\[1\]\.mountPath: "\/data\/" is already mounted/],
  ['a subPath with ..', pod({ volumes: [{ name: 'v', emptyDir: {} }] }, { volumeMounts: [{ name: 'v', mountPath: '/d', subPath: 'a/../../etc' }] }), /^InvalidPodSpec: .*\.volumeMounts\[0\]\.subPath: "a\/\.\.\/\.\.\/etc" must be a relative path inside the volume/],
  ['a readinessProbe with only timings', pod({}, { readinessProbe: { periodSeconds: 5 } }), /^InvalidPodSpec: spec\.containers\[0\] \(vm\)\.readinessProbe: no handler is given; set one of exec, httpGet, tcpSocket, grpc/],
  ['a livenessProbe with two handlers', pod({}, { livenessProbe: { exec: { command: ['true'] }, tcpSocket: { port: 22 } } }), /^InvalidPodSpec: .*\.livenessProbe: only one handler may be given, found exec and tcpSocket/],
  ['a preStop hook with no handler', pod({}, { lifecycle: { preStop: {} } }), /^InvalidPodSpec: .*\.lifecycle\.preStop: no handler/],
  ['a privileged init container on the engine', pod({ initContainers: [{ name: 'setup', image: 'busybox:1', command: ['true'], securityContext: { privileged: true } }] }), /^UnsupportedPodSpec: spec\.initContainers\[0\] \(setup\)\.securityContext\.privileged: true is not supported/],
  ['an init container with the VM\'s image without a command', pod({ initContainers: [{ name: 'setup', image: 'ghcr.io/cirruslabs/ubuntu:latest' }] }), /^UnsupportedPodSpec: spec\.initContainers\[0\] \(setup\): an init container with the VM's image runs as a process in the VM, and a VM image has no entrypoint; set command/],
  ['a native sidecar (restartPolicy Always) with the VM\'s image', pod({ initContainers: [{ name: 'proxy', image: 'ghcr.io/cirruslabs/ubuntu:latest', restartPolicy: 'Always' }] }), /^UnsupportedPodSpec: spec\.initContainers\[0\] \(proxy\): restartPolicy Always makes "proxy" a native sidecar, which runs on the node's container engine, but its image is the VM's/],
  ['an init container with no image', pod({ initContainers: [{ name: 'setup', image: '' }] }), /^InvalidPodSpec: spec\.initContainers\[0\] \(setup\)\.image: no image/],
  ['a cpu limit of 0', pod({}, { resources: { limits: { cpu: '0' } } }), /^InvalidVmSize: .*\.resources\.limits\.cpu: 0 leaves the VM no CPU/],
  ['a memory limit of 0', pod({}, { resources: { limits: { memory: '0' } } }), /^InvalidVmSize: .*\.resources\.limits\.memory: 0 leaves the VM no memory/],
  ['a memory request above its limit', pod({}, { resources: { limits: { memory: '1Gi' }, requests: { memory: '2Gi' } } }), /^InvalidVmSize: .*\.resources\.requests\.memory: 2Gi is above the limit 1Gi/],
  ['a cpu request above its limit', pod({}, { resources: { limits: { cpu: '1' }, requests: { cpu: '1500m' } } }), /^InvalidVmSize: .*\.resources\.requests\.cpu: 1500m is above the limit 1/],
  ['a quantity that is not one', pod({}, { resources: { limits: { memory: '2 GB' } } }), /^InvalidPodSpec: .*\.resources\.limits\.memory: "2 GB" is not a quantity/],
  ['a relative workingDir', pod({}, { workingDir: 'app' }), /^InvalidPodSpec: .*\.workingDir: "app" is not an absolute path; write it from \/ \(e\.g\. \/app\)/],
  ['an env var name starting with a digit', pod({}, { env: [{ name: '1ST', value: 'x' }] }), /^InvalidPodSpec: .*\.env\[0\]\.name: "1ST" is not a valid environment variable name/],
  ['an env var name with a space', pod({}, { env: [{ name: 'MY VAR', value: 'x' }] }), /^InvalidPodSpec: .*\.env\[0\]\.name: "MY VAR"/],
  ['an envFrom prefix that cannot start a name', pod({}, { envFrom: [{ prefix: '9_', configMapRef: { name: 'c' } }] }), /^InvalidPodSpec: .*\.envFrom\[0\]\.prefix: "9_" is not a valid start/],
  ['volumeDevices', pod({ volumes: [{ name: 'blk', persistentVolumeClaim: { claimName: 'b' } }] }, { volumeDevices: [{ name: 'blk', devicePath: '/dev/xvda' }] }), /volumeDevices: raw block devices are not supported/],
  ['a Windows pod', pod({ os: { name: 'windows' } }), /^UnsupportedPodSpec: spec\.os\.name: "windows" is not supported/],
  ['dynamic resource claims', pod({ resourceClaims: [{ name: 'gpu', resourceClaimName: 'gpu' }] }), /^UnsupportedPodSpec: spec\.resourceClaims: dynamic resource allocation/],
];

for (const [name, p, want] of cases) {
  test(`refused: ${name}`, () => {
    assert.match(verdict(p), want);
  });
}

test('a runtimeClassName the node does not answer to is refused only when runtime classes are configured', () => {
  const p = pod({ runtimeClassName: 'gvisor' });
  assert.equal(verdict(p), 'accepted');
  assert.match(verdict(p, { ...opts, runtimeClasses: ['vmlet'] }), /^UnsupportedPodSpec: spec\.runtimeClassName: "gvisor" is not a runtime class of this node \(known: vmlet\)/);
});

test('with no hostPath prefixes configured, every hostPath is refused and the message says none are', () => {
  const p = pod({ volumes: [{ name: 'd', hostPath: { path: '/srv/shared' } }] });
  assert.match(verdict(p, { hostPathPrefixes: [] }), /^UnsupportedPodSpec: spec\.volumes\[0\] \(d\)\.hostPath\.path: hostPath "\/srv\/shared" is outside the host directories this node shares \(none are configured: the node's hostPathPrefixes setting, --host-path-prefix, is empty\); use an emptyDir, configMap or secret volume instead/);
});

test('every problem is reported at once, with the first one\'s reason', () => {
  const p = pod({ hostNetwork: true, volumes: [{ name: 'db', persistentVolumeClaim: { claimName: 'db' } }] }, { workingDir: 'app' });
  try {
    checkPod(p, opts);
    assert.fail('accepted');
  } catch (err) {
    assert.ok(err instanceof PodSpecError);
    assert.equal(err.reason, 'UnsupportedPodSpec');
    assert.equal(err.problems.length, 3);
    assert.match(err.message, /^3 problems: spec\.hostNetwork: .*; spec\.volumes\[0\] \(db\): .*; spec\.containers\[0\] \(vm\)\.workingDir: /);
  }
});

test('a pod without a spec is refused, not a crash', () => {
  assert.match(verdict({ metadata: { name: 'x' } }), /^InvalidPodSpec: spec: the pod has no spec/);
});

test('restricted Pod Security settings are accepted, each told as not applied in the VM (podWarnings)', () => {
  const p = pod(
    { securityContext: { runAsNonRoot: true, runAsUser: 1000, fsGroup: 2000, seccompProfile: { type: 'RuntimeDefault' } } },
    { securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] }, readOnlyRootFilesystem: true, runAsUser: 1000 } },
  );
  assert.equal(verdict(p), 'accepted');
  const fields = (w: string) => w.slice(0, w.indexOf(': not applied in the VM: '));
  assert.deepEqual(podWarnings(p).map(fields), [
    'spec.securityContext.runAsUser, spec.securityContext.runAsNonRoot, spec.securityContext.fsGroup',
    'spec.securityContext.seccompProfile',
    'spec.containers[0] (vm).securityContext.runAsUser',
    'spec.containers[0] (vm).securityContext.capabilities, spec.containers[0] (vm).securityContext.readOnlyRootFilesystem, spec.containers[0] (vm).securityContext.allowPrivilegeEscalation',
  ]);
  assert.match(podWarnings(p)[3]!, /: not applied in the VM: root in the VM has every capability and a writable disk; the VM boundary, not these settings, keeps the pod from the host$/);
  assert.match(podWarnings(p)[0]!, /run the command as another user yourself/);
  assert.deepEqual(podWarnings(pod({}, { securityContext: { allowPrivilegeEscalation: true, readOnlyRootFilesystem: false } })), []);
  assert.deepEqual(podWarnings(pod()), []);
});

test('checkRuntimeClass: a RuntimeClass is run only when its handler is one the node has, and a missing one is named', () => {
  const refusal = (p: V1Pod, found: Parameters<typeof checkRuntimeClass>[1], handlers = ['vmlet']) => {
    try {
      checkRuntimeClass(p, found, handlers);
      return 'accepted';
    } catch (err) {
      assert.ok(err instanceof PodSpecError);
      return `${err.reason}: ${err.message}`;
    }
  };
  assert.equal(refusal(pod(), undefined), 'accepted');
  assert.equal(refusal(pod({ runtimeClassName: 'vm' }), { name: 'vm', handler: 'vmlet' }), 'accepted');
  assert.equal(
    refusal(pod({ runtimeClassName: 'gvisor' }), { name: 'gvisor', handler: 'runsc' }),
    'UnsupportedPodSpec: spec.runtimeClassName: RuntimeClass "gvisor" selects handler "runsc", which this node does not have (it runs VMs with handler "vmlet"); use a RuntimeClass whose handler is vmlet, or run the pod on a node with "runsc"',
  );
  assert.match(refusal(pod({ runtimeClassName: 'kata' }), { name: 'kata', handler: 'kata' }, ['vmlet', 'vmlet-macos']), /with handlers "vmlet", "vmlet-macos"\)/);
  assert.equal(refusal(pod({ runtimeClassName: 'gone' }), undefined), 'UnsupportedPodSpec: spec.runtimeClassName: RuntimeClass "gone" not found; create it with handler: vmlet, or remove runtimeClassName');
});

test('hybrid pods: containers other than the VM container are sidecars; the annotation picks the VM container', () => {
  const helper: V1Container = { name: 'helper', image: 'registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-latest', command: ['sh'], stdin: true };
  const p = pod({ containers: [vm, helper] });
  assert.equal(verdict(p), 'accepted');
  assert.equal(vmContainer(p).name, 'vm');
  assert.deepEqual(sidecarContainers(p).map((c) => c.name), ['helper']);
  // GitLab Runner puts the build container first; another order names it.
  const q: V1Pod = { ...pod({ containers: [helper, { ...vm, name: 'build' }] }), metadata: { name: 'w', namespace: 'default', uid: 'u2', annotations: { 'vmlet.dev/vm-container': 'build' } } };
  assert.equal(verdict(q), 'accepted');
  assert.equal(vmContainer(q).name, 'build');
  assert.deepEqual(sidecarContainers(q).map((c) => c.name), ['helper']);
  // Init containers run in the VM: the VM container's image, not the first container's.
  const r: V1Pod = { ...q, spec: { ...q.spec!, initContainers: [{ name: 'init', image: vm.image, command: ['true'] }] } };
  assert.equal(verdict(r), 'accepted');
  // A sidecar's securityContext is the engine's to apply, and its probes run: no warning for either.
  const w = pod({ containers: [vm, { ...helper, securityContext: { runAsUser: 1000 }, readinessProbe: { exec: { command: ['true'] } } }] });
  assert.deepEqual(podWarnings(w), []);
});

test('init containers: the VM image runs in the VM, another image on the engine, restartPolicy Always is a native sidecar there', () => {
  const p = pod({
    initContainers: [
      { name: 'proxy', image: 'envoy:1', restartPolicy: 'Always' },
      { name: 'fetch', image: 'busybox:1' },
      { name: 'setup', image: vm.image, command: ['true'] },
    ],
    containers: [vm, { name: 'helper', image: 'busybox:1' }],
  });
  assert.equal(verdict(p), 'accepted');
  assert.deepEqual(engineContainers(p).map((x) => `${x.kind}:${x.container.name}`), ['native:proxy', 'sidecar:helper', 'init:fetch']);
});
