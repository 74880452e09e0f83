// /pods and /runningpods: the pods this node knows, and those with a running VM, each as a v1 PodList
// (the kubelet encodes both the same way).
import type { V1Pod } from '@kubernetes/client-node';
import type { KubeletServer } from '../server.ts';
import { sendJson } from '../server.ts';

export function podList(pods: readonly V1Pod[]): { kind: 'PodList'; apiVersion: 'v1'; metadata: Record<string, never>; items: V1Pod[] } {
  return { kind: 'PodList', apiVersion: 'v1', metadata: {}, items: [...pods] };
}

export function installPods(server: KubeletServer): void {
  server.route({ method: 'GET', path: '/pods', handle: ({ provider }, res) => sendJson(res, 200, podList(provider.listPods())) });
  server.route({ method: 'GET', path: '/runningpods', handle: ({ provider }, res) => sendJson(res, 200, podList(provider.runningPods())) });
}
