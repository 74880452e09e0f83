// A local HTTP server for unit tests that stand a scripted peer in for a remote one: it listens on
// 127.0.0.1 on a port the OS picks, and closes with its open connections dropped.
import type { Server } from 'node:http';

export async function listenLocal(server: Server): Promise<{ port: number; close: () => Promise<void> }> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no address');
  return {
    port: address.port,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
