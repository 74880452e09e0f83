// Service account tokens for pods' projected volumes, as the kubelet's token manager gets them: a
// TokenRequest bound to the pod (the Node authorizer allows a node to ask only for the service accounts of
// pods bound to it), cached, and asked for again once 80% of its lifetime has passed (or after 24 h), so
// that the runtime's periodic volume refresh writes a fresh token into the VM before the old one expires.
import type { AuthenticationV1TokenRequest } from '@kubernetes/client-node';
import type { KubeApi } from '../client.ts';
import type { ServiceAccountTokenRequest } from '../../runtime/pod/env.ts';

interface Cached {
  token: string;
  /** When to ask again. */
  renewAt: number;
  expiresAt: number;
}

export class ServiceAccountTokens {
  private readonly cache = new Map<string, Cached>();

  constructor(private readonly api: KubeApi, private readonly now: () => number = Date.now) {}

  async token(req: ServiceAccountTokenRequest): Promise<string> {
    const key = JSON.stringify([req.namespace, req.serviceAccount, req.audience ?? '', req.expirationSeconds, req.podUid]);
    const cached = this.cache.get(key);
    const now = this.now();
    if (cached && now < cached.renewAt) return cached.token;
    try {
      const body: AuthenticationV1TokenRequest = {
        apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest',
        spec: {
          audiences: req.audience ? [req.audience] : [],
          expirationSeconds: req.expirationSeconds,
          boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: req.podName, uid: req.podUid },
        },
      };
      const res = await this.api.call<AuthenticationV1TokenRequest>('create', 'serviceaccounts/token', {
        method: 'POST', path: `/api/v1/namespaces/${req.namespace}/serviceaccounts/${req.serviceAccount}/token`, body,
      });
      const token = res.status?.token;
      if (!token) throw new Error('the API server answered a TokenRequest without a token');
      const expiresAt = res.status?.expirationTimestamp ? new Date(res.status.expirationTimestamp).getTime() : now + req.expirationSeconds * 1000;
      const ttl = expiresAt - now;
      this.cache.set(key, { token, expiresAt, renewAt: now + Math.min(ttl * 0.8, 24 * 3600 * 1000) });
      return token;
    } catch (err) {
      // A token still valid is better than none while the API server does not answer.
      if (cached && now < cached.expiresAt) return cached.token;
      throw err;
    }
  }

  /** The pod is gone: its tokens go too. */
  forget(podUid: string): void {
    for (const key of this.cache.keys()) if (key.includes(JSON.stringify(podUid))) this.cache.delete(key);
  }
}
