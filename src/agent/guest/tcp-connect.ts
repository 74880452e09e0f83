// port.connect: a TCP connection from the guest to its own loopback, for `kubectl port-forward`. The
// socket is half-open capable, so each direction ends on its own: the host's EOF on the stream's stdin
// becomes a FIN (socket.end()), the guest server's FIN an EOF on the stream's stdout.
import { connect, type Socket } from 'node:net';
import { AgentError } from '../protocol/errors.ts';

/** Loopback only: the host reaches the pod's own ports, never the guest's network beyond it. */
export const PORT_CONNECT_HOSTS = ['127.0.0.1', '::1'];
const CONNECT_TIMEOUT_MS = 20_000;

export function checkPortConnect(port: unknown, host: unknown): { port: number; host: string } {
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new AgentError('InvalidArgument', `port must be an integer from 1 to 65535 (got ${JSON.stringify(port)})`);
  }
  const h = host ?? '127.0.0.1';
  if (typeof h !== 'string' || !PORT_CONNECT_HOSTS.includes(h)) {
    throw new AgentError('InvalidArgument', `port.connect reaches the guest's loopback only: host must be 127.0.0.1 or ::1 (got ${JSON.stringify(h)})`);
  }
  return { port, host: h };
}

/** Resolves with the connected socket; a refused (or timed out) connection is ConnectFailed. */
export function connectTcp(host: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, allowHalfOpen: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new AgentError('ConnectFailed', `connect ETIMEDOUT ${host}:${port}: no answer within ${CONNECT_TIMEOUT_MS / 1000} s`));
    }, CONNECT_TIMEOUT_MS);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      socket.destroy();
      reject(new AgentError('ConnectFailed', err.message));
    });
  });
}
