// Service-link environment variables, as the kubelet makes them (kubelet_pods.go getServiceEnvVarMap and
// pkg/kubelet/envvars): for each Service with a cluster IP in the pod's namespace (unless
// enableServiceLinks is false), and always for the `kubernetes` Service of the default namespace,
// NAME_SERVICE_HOST / NAME_SERVICE_PORT / NAME_SERVICE_PORT_<PORTNAME>, and the Docker-link variables
// NAME_PORT, NAME_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}. Pure.
import type { V1Service } from '@kubernetes/client-node';

const MASTER_NAMESPACE = 'default';
const MASTER_SERVICES = new Set(['kubernetes']);

export function serviceLinkEnv(services: V1Service[], namespace: string, enableServiceLinks: boolean): Record<string, string> {
  const chosen = new Map<string, V1Service>();
  for (const svc of services) {
    const ip = svc.spec?.clusterIP;
    if (!ip || ip === 'None') continue;
    const name = svc.metadata?.name ?? '';
    if (svc.metadata?.namespace === MASTER_NAMESPACE && MASTER_SERVICES.has(name)) {
      if (!chosen.has(name)) chosen.set(name, svc);
    } else if (svc.metadata?.namespace === namespace && enableServiceLinks) {
      chosen.set(name, svc);
    }
  }
  const env: Record<string, string> = {};
  for (const svc of [...chosen.values()].sort((a, b) => (a.metadata!.name! < b.metadata!.name! ? -1 : 1))) {
    const ip = svc.spec!.clusterIP!;
    const prefix = envName(svc.metadata!.name!);
    const ports = svc.spec?.ports ?? [];
    env[`${prefix}_SERVICE_HOST`] = ip;
    if (ports[0]) env[`${prefix}_SERVICE_PORT`] = String(ports[0].port);
    for (const p of ports) if (p.name) env[`${prefix}_SERVICE_PORT_${envName(p.name)}`] = String(p.port);
    if (ports.length === 0) continue;
    const hostPort = (port: number) => (ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);
    const first = ports[0]!;
    env[`${prefix}_PORT`] = `${(first.protocol ?? 'TCP').toLowerCase()}://${hostPort(first.port)}`;
    for (const p of ports) {
      const proto = (p.protocol ?? 'TCP').toLowerCase();
      const base = `${prefix}_PORT_${p.port}_${proto.toUpperCase()}`;
      env[base] = `${proto}://${hostPort(p.port)}`;
      env[`${base}_PROTO`] = proto;
      env[`${base}_PORT`] = String(p.port);
      env[`${base}_ADDR`] = ip;
    }
  }
  return env;
}

/** "my-db" → "MY_DB": the kubelet's makeEnvVariableName. */
function envName(s: string): string {
  return s.toUpperCase().replace(/-/g, '_');
}
