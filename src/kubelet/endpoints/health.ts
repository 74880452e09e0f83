// /healthz and /configz of the kubelet API. /healthz answers "ok" while the server serves (with
// ?verbose, the checks one per line, as the kubelet's healthz handler); /configz is the effective
// configuration in the kubelet's shape, {"kubeletconfig": {...KubeletConfiguration v1beta1...}}.
import { goDuration } from '../../kube/go-duration.ts';
import type { KubeletServer } from '../server.ts';
import { sendJson, sendText } from '../server.ts';

export interface KubeletConfigView {
  nodeName: string;
  address: string;
  port: number;
  tlsCertFile: string;
  tlsPrivateKeyFile: string;
  clientCAFile?: string;
  anonymous: boolean;
  authorizationMode: 'Webhook' | 'AlwaysAllow';
  tokenCacheTtlMs: number;
  authorizedCacheTtlMs: number;
  unauthorizedCacheTtlMs: number;
  maxPods: number;
}

export function installHealth(server: KubeletServer, config: () => KubeletConfigView): void {
  server.route({
    method: 'GET',
    path: '/healthz/*',
    handle: ({ url, params }, res) => {
      const check = params['*'];
      if (check && check !== 'ping' && check !== 'log') return sendText(res, 404, '404 page not found\n');
      if (check) return sendText(res, 200, 'ok');
      if (url.searchParams.has('verbose')) return sendText(res, 200, '[+]ping ok\n[+]log ok\nhealthz check passed\n');
      sendText(res, 200, 'ok');
    },
  });
  server.route({
    method: 'GET',
    path: '/configz',
    handle: (_ctx, res) => sendJson(res, 200, { kubeletconfig: kubeletConfiguration(config()) }),
  });
}

/** The parts of a KubeletConfiguration (kubelet.config.k8s.io/v1beta1) vmlet has, with the kubelet's field names. */
export function kubeletConfiguration(c: KubeletConfigView): Record<string, unknown> {
  return {
    kind: 'KubeletConfiguration',
    apiVersion: 'kubelet.config.k8s.io/v1beta1',
    // Not a KubeletConfiguration field: the kubelet takes it from --hostname-override; here for who reads configz.
    nodeName: c.nodeName,
    enableServer: true,
    address: c.address,
    port: c.port,
    tlsCertFile: c.tlsCertFile,
    tlsPrivateKeyFile: c.tlsPrivateKeyFile,
    authentication: {
      x509: c.clientCAFile ? { clientCAFile: c.clientCAFile } : {},
      webhook: { enabled: true, cacheTTL: goDuration(c.tokenCacheTtlMs) },
      anonymous: { enabled: c.anonymous },
    },
    authorization: {
      mode: c.authorizationMode,
      webhook: { cacheAuthorizedTTL: goDuration(c.authorizedCacheTtlMs), cacheUnauthorizedTTL: goDuration(c.unauthorizedCacheTtlMs) },
    },
    maxPods: c.maxPods,
  };
}

