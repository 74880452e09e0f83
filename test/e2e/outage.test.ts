// The API server goes away for 60 s and comes back: vmlet must keep running, say so once (not once per
// failed request), and have the node Ready and heartbeating again within 30 s of the server's return.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import type { Cluster } from '../harness/cluster.ts';
import { waitFor } from '../harness/processes.ts';
import { startClusterWithNode, type VmletProcess } from '../harness/vmlet.ts';

const NODE = 'outage-node';
const OUTAGE_MS = 60_000;
let cluster: Cluster;
let vmlet: VmletProcess;

before(async () => {
  ({ cluster, vmlet } = await startClusterWithNode(NODE));
});

after(async () => {
  await vmlet?.stop();
  await cluster?.stop();
});

test('an API server outage of 60 s is survived, logged once, and the node is Ready within 30 s of its return', async () => {
  const stoppedAt = Date.now();
  await cluster.stopApiServer();
  await sleep(OUTAGE_MS);
  assert.equal(vmlet.exitStatus, undefined, 'vmlet is still running after the outage');
  // The server answers vmlet a little before startApiServer() returns (it then waits for bootstrap), so
  // "after the return" means after the restart began; the 30 s count from when it is fully up.
  const restartedAt = Date.now();
  await cluster.startApiServer();

  // Ready again: a Lease renewal and a Ready heartbeat, both from after the restart.
  await waitFor('Lease renewal and Ready heartbeat after the API server returned', async () => {
    const lease = await cluster.kubectl(['get', 'lease', '-n', 'kube-node-lease', NODE, '-o', 'jsonpath={.spec.renewTime}']);
    const node = await cluster.kubectl(['get', 'node', NODE, '-o', 'json']);
    if (lease.code !== 0 || node.code !== 0) return undefined;
    const ready = (JSON.parse(node.stdout) as { status: { conditions: Array<{ type: string; status: string; lastHeartbeatTime: string }> } })
      .status.conditions.find((c) => c.type === 'Ready');
    const fresh = Date.parse(lease.stdout) > restartedAt && ready?.status === 'True' && Date.parse(ready.lastHeartbeatTime) > restartedAt;
    return fresh ? true : undefined;
  }, { timeoutMs: 30_000, intervalMs: 500, process: vmlet.proc });

  const during = (await vmlet.logs()).filter((l) => Date.parse(l.time) >= stoppedAt);
  const unreachable = during.filter((l) => /API server unreachable/.test(l.msg));
  assert.equal(unreachable.length, 1, `one "unreachable" line, got:\n${JSON.stringify(during, null, 1)}`);
  assert.equal(unreachable[0]!.level, 'warn');
  assert.equal(during.filter((l) => /reachable again after \d+s/.test(l.msg)).length, 1, 'one "reachable again" line');
  // Not a flood: at most a handful of lines at info level or above over the whole outage.
  const loud = during.filter((l) => l.level !== 'debug' && l.level !== 'trace');
  assert.ok(loud.length <= 6, `${loud.length} log lines during a 60 s outage:\n${loud.map((l) => `${l.level} ${l.msg}`).join('\n')}`);
  assert.equal((await vmlet.admin('/readyz')).status, 200);
});
