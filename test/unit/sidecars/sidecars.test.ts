// Pure parts of src/sidecars/: the Docker create body from a V1Container, engine endpoint resolution,
// the stream framing, and that importing the layer does not load dockerode.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import { createBody, FrameDemuxer, LABELS, nonRootImageUserProblem, resolveEngineEndpoint, SidecarEngineError } from '../../../src/sidecars/index.ts';

const pod = { namespace: 'ns', name: 'web', uid: 'u-1' };

test('createBody: command/args, env, limits, user, mounts, ports, labels, name', () => {
  const b = createBody({
    pod,
    container: {
      name: 'proxy', image: 'reg/proxy:1', command: ['envoy'], args: ['-c', 'x'], workingDir: '/w', tty: true, stdin: true, stdinOnce: true,
      ports: [{ containerPort: 8080 }, { containerPort: 53, protocol: 'UDP' }],
      resources: { limits: { cpu: '1500m', memory: '128Mi', 'nvidia.com/gpu': '1' }, requests: { cpu: '250m' } },
      securityContext: { runAsUser: 1000, readOnlyRootFilesystem: true, capabilities: { add: ['NET_ADMIN'], drop: ['ALL'] }, allowPrivilegeEscalation: false },
    },
    podSecurityContext: { runAsGroup: 3000, supplementalGroups: [4000], fsGroup: 5 },
    env: [{ name: 'A', value: '1' }],
    mounts: [{ hostPath: '/h', containerPath: '/c', readOnly: true }],
    publishOn: '10.0.0.5',
    restartCount: 2,
  });
  const o = b.options;
  assert.equal(b.name, 'vmlet_proxy_web_ns_u-1_2');
  assert.deepEqual([o.Entrypoint, o.Cmd, o.Env, o.WorkingDir, o.User, o.Hostname], [['envoy'], ['-c', 'x'], ['A=1'], '/w', '1000:3000', 'web']);
  assert.deepEqual([o.Tty, o.OpenStdin, o.StdinOnce], [true, true, true]);
  assert.equal(o.Labels?.[LABELS.podUid], 'u-1');
  assert.equal(o.Labels?.[LABELS.restartCount], '2');
  const h = o.HostConfig!;
  assert.deepEqual([h.NanoCpus, h.Memory, h.CpuShares], [1.5e9, 128 * 2 ** 20, 256]);
  assert.deepEqual([h.ReadonlyRootfs, h.CapAdd, h.CapDrop, h.SecurityOpt, h.GroupAdd], [true, ['NET_ADMIN'], ['ALL'], ['no-new-privileges'], ['4000']]);
  assert.deepEqual(h.Mounts, [{ Type: 'bind', Source: '/h', Target: '/c', ReadOnly: true }]);
  assert.deepEqual(h.PortBindings, { '8080/tcp': [{ HostIp: '10.0.0.5', HostPort: '8080' }], '53/udp': [{ HostIp: '10.0.0.5', HostPort: '53' }] });
  assert.deepEqual(h.RestartPolicy, { Name: 'no' });
  assert.equal(b.ignored.length, 2); // the GPU limit and fsGroup
  assert.equal(b.verifyNonRootImageUser, false);
});

test('createBody: args alone keep the image entrypoint; a shared network has no hostname or ports', () => {
  const o = createBody({ pod, container: { name: 'c', image: 'i', args: ['x'], ports: [{ containerPort: 1 }] }, networkMode: 'container:abc', publishOn: '1.2.3.4' }).options;
  assert.equal(o.Entrypoint, undefined);
  assert.deepEqual(o.Cmd, ['x']);
  assert.equal(o.Hostname, undefined);
  assert.equal(o.ExposedPorts, undefined);
  assert.equal(o.HostConfig?.PortBindings, undefined);
  assert.equal(o.HostConfig?.NetworkMode, 'container:abc');
});

test('createBody: runAsNonRoot with user 0 is refused; without a user the image is checked', () => {
  assert.throws(() => createBody({ pod, container: { name: 'c', image: 'i', securityContext: { runAsNonRoot: true, runAsUser: 0 } } }), SidecarEngineError);
  assert.equal(createBody({ pod, container: { name: 'c', image: 'i' }, podSecurityContext: { runAsNonRoot: true } }).verifyNonRootImageUser, true);
  assert.match(nonRootImageUserProblem('') ?? '', /root/);
  assert.match(nonRootImageUserProblem('app') ?? '', /not numeric/);
  assert.equal(nonRootImageUserProblem('1000:1000'), undefined);
});

test('resolveEngineEndpoint: configured, then DOCKER_HOST, then a well-known socket; none names them all', () => {
  assert.equal(resolveEngineEndpoint({ socket: '/s.sock', env: { DOCKER_HOST: 'unix:///x' } }).display, 'unix:///s.sock');
  assert.deepEqual(resolveEngineEndpoint({ env: { DOCKER_HOST: 'tcp://h:2375' } }), { kind: 'tcp', host: 'h', port: 2375, tls: false, display: 'tcp://h:2375' });
  assert.equal(resolveEngineEndpoint({ env: { DOCKER_HOST: 'tcp://h:2376', DOCKER_TLS_VERIFY: '1' } }).kind, 'env');
  const found = resolveEngineEndpoint({ env: { XDG_RUNTIME_DIR: '/run/user/1' }, home: '/home/u', exists: (p) => p === '/run/user/1/podman/podman.sock' });
  assert.equal(found.display, 'unix:///run/user/1/podman/podman.sock');
  const none = resolveEngineEndpoint({ env: {}, home: '/home/u', exists: () => false });
  assert.match(none.display, /^any of \/var\/run\/docker\.sock, .*\.colima.*\(DOCKER_HOST is not set\)$/);
  assert.throws(() => resolveEngineEndpoint({ socket: 'ftp://x' }), /use a socket path/);
});

test('FrameDemuxer: frames split across chunks, both streams', () => {
  const got: string[] = [];
  const d = new FrameDemuxer((kind, p) => got.push(`${kind}:${p.toString()}`));
  const frame = (type: number, text: string): Buffer => Buffer.concat([Buffer.from([type, 0, 0, 0, 0, 0, 0, text.length]), Buffer.from(text)]);
  const all = Buffer.concat([frame(1, 'out'), frame(2, 'err'), frame(1, 'more')]);
  for (let i = 0; i < all.length; i += 3) d.push(all.subarray(i, i + 3));
  assert.deepEqual(got, ['stdout:out', 'stderr:err', 'stdout:more']);
  assert.equal(d.leftover, 0);
});

test('importing src/sidecars does not load dockerode', () => {
  const require = createRequire(import.meta.url);
  const path = require.resolve('dockerode');
  assert.equal(require.cache[path], undefined);
});
