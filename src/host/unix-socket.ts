// One connection to a unix socket, as a promise: resolves once connected, rejects with the socket's
// error (ENOENT while the server has not created it yet, ECONNREFUSED while nobody listens).
import { connect, type Socket } from 'node:net';

export function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}
