// A TCP proxy on 127.0.0.1 in front of a real server (the plain-HTTP registry) that breaks the byte
// stream on purpose: cut the connection, stall it (for a while or for good) or flip a byte, at an exact
// offset of a connection's response (or request) bytes. Faults can be added while it runs; it counts
// connections and bytes. It forwards bytes only, so against TLS the faults hit encrypted bytes.
import { createServer, connect, type Server, type Socket } from 'node:net';

export type FaultAction =
  /** Close both sides after the offset: FIN by default, RST with reset. */
  | { kind: 'cut'; reset?: boolean }
  /** Stop forwarding at the offset, for ms or (without ms) until the connection is closed. */
  | { kind: 'stall'; ms?: number }
  /** XOR the byte at the offset (default 0xff). */
  | { kind: 'corrupt'; xor?: number };

export interface Fault {
  action: FaultAction;
  /** Offset in the stream, counted from the stream's start, or from the end of `match` when given. */
  at: number;
  /** 'response' (server to client, default) or 'request' (client to server). */
  direction?: 'response' | 'request';
  /**
   * Only after the client has sent this text (e.g. "GET /v2/app/blobs/sha256:…"); the offset then
   * counts from the first response byte after it (or, for requests, from the byte after the text).
   */
  match?: string;
  /** Only on the Nth connection the proxy accepts (1-based). */
  connection?: number;
  /** How many times the fault fires before it is spent. Default 1; Infinity for every time. */
  times?: number;
}

export interface FaultHandle {
  readonly fault: Fault;
  /** How many times it has fired. */
  readonly fired: number;
  /** Resolves when it first fires. */
  readonly firedOnce: Promise<void>;
}

export interface FaultProxy {
  /** "127.0.0.1:<port>", as in image references. */
  readonly host: string;
  readonly url: string;
  readonly port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  readonly bytesToClient: number;
  readonly bytesToServer: number;
  addFault(fault: Fault): FaultHandle;
  clearFaults(): void;
  close(): Promise<void>;
}

type Direction = 'response' | 'request';

interface Entry {
  fault: Fault;
  fired: number;
  resolveFired: () => void;
  firedOnce: Promise<void>;
}

interface Armed {
  entry: Entry;
  /** Absolute stream offset at which it fires. */
  at: number;
}

interface Flow {
  from: Socket;
  to: Socket;
  /** Bytes forwarded so far. */
  position: number;
  armed: Armed[];
  stalled: boolean;
  queue: Buffer[];
}

interface Conn {
  id: number;
  client: Socket;
  server: Socket;
  response: Flow;
  request: Flow;
  /** The end of the request bytes seen so far, to find `match` across chunk boundaries. */
  requestTail: string;
  /** Request bytes received from the client so far (forwarded in the same order, so offsets agree). */
  requestSeen: number;
  upstreamClosed: boolean;
  timers: Set<NodeJS.Timeout>;
  closed: boolean;
}

/** Starts a proxy to target ("host:port") on 127.0.0.1, port chosen by the OS. */
export async function startFaultProxy(target: string): Promise<FaultProxy> {
  const [targetHost = '127.0.0.1', targetPort = ''] = splitHostPort(target);
  const entries: Entry[] = [];
  const conns = new Set<Conn>();
  const stats = { connections: 0, bytesToClient: 0, bytesToServer: 0 };

  const spent = (e: Entry): boolean => e.fired >= (e.fault.times ?? 1);

  function arm(conn: Conn, direction: Direction, base: number, matched: string | undefined): void {
    for (const entry of entries) {
      const f = entry.fault;
      if ((f.direction ?? 'response') !== direction || spent(entry)) continue;
      if (f.connection !== undefined && f.connection !== conn.id) continue;
      if (f.match !== matched) continue;
      const flow = direction === 'response' ? conn.response : conn.request;
      // A later request on the same connection re-arms the fault relative to its own response.
      flow.armed = flow.armed.filter((a) => a.entry !== entry);
      flow.armed.push({ entry, at: base + f.at });
    }
  }

  /** Arms the faults whose `match` this request data completes. */
  function scanRequest(conn: Conn, chunk: Buffer): void {
    const start = conn.requestSeen;
    conn.requestSeen += chunk.length;
    const text = conn.requestTail + chunk.toString('latin1');
    const textStart = start - conn.requestTail.length;
    for (const entry of entries) {
      const m = entry.fault.match;
      if (m === undefined || spent(entry)) continue;
      let from = 0;
      for (let i = text.indexOf(m, from); i >= 0; i = text.indexOf(m, from)) {
        from = i + 1;
        const end = textStart + i + m.length;
        if (end <= start) continue; // Seen in an earlier chunk already.
        if ((entry.fault.direction ?? 'response') === 'request') arm(conn, 'request', end, m);
        else arm(conn, 'response', conn.response.position, m);
      }
    }
    conn.requestTail = text.slice(-4096);
  }

  function forward(conn: Conn, flow: Flow, direction: Direction, chunk: Buffer): void {
    if (conn.closed) return;
    if (flow.stalled) {
      flow.queue.push(chunk);
      return;
    }
    let rest = chunk;
    while (rest.length > 0 && !conn.closed) {
      const start = flow.position;
      const due = flow.armed.filter((a) => a.at >= start && a.at < start + rest.length).sort((a, b) => a.at - b.at)[0];
      if (!due) {
        write(conn, flow, direction, rest);
        return;
      }
      const k = due.at - start;
      if (k > 0) write(conn, flow, direction, rest.subarray(0, k));
      rest = rest.subarray(k);
      flow.armed = flow.armed.filter((a) => a !== due);
      due.entry.fired += 1;
      due.entry.resolveFired();
      const action = due.entry.fault.action;
      if (action.kind === 'cut') {
        closeConn(conn, action.reset === true);
        return;
      }
      if (action.kind === 'corrupt') {
        const flipped = Buffer.from(rest.subarray(0, 1));
        flipped[0] = flipped[0]! ^ (action.xor ?? 0xff);
        write(conn, flow, direction, flipped);
        rest = rest.subarray(1);
        continue;
      }
      flow.stalled = true;
      flow.queue.push(rest);
      flow.from.pause();
      if (action.ms !== undefined) {
        const timer = setTimeout(() => {
          conn.timers.delete(timer);
          flow.stalled = false;
          const queued = flow.queue.splice(0);
          for (const q of queued) forward(conn, flow, direction, q);
          if (!flow.stalled && !conn.closed) flow.from.resume();
          if (!flow.stalled && conn.upstreamClosed) closeConn(conn, false);
        }, action.ms);
        conn.timers.add(timer);
      }
      return;
    }
  }

  function write(conn: Conn, flow: Flow, direction: Direction, bytes: Buffer): void {
    flow.position += bytes.length;
    if (direction === 'response') stats.bytesToClient += bytes.length;
    else stats.bytesToServer += bytes.length;
    if (!flow.to.write(bytes)) {
      flow.from.pause();
      flow.to.once('drain', () => {
        if (!flow.stalled && !conn.closed) flow.from.resume();
      });
    }
  }

  function closeConn(conn: Conn, reset: boolean): void {
    if (conn.closed) return;
    conn.closed = true;
    for (const t of conn.timers) clearTimeout(t);
    conn.timers.clear();
    if (reset) {
      conn.client.resetAndDestroy();
      conn.server.resetAndDestroy();
    } else {
      // end(), not destroy(): bytes already written before the cut must still reach the client.
      conn.client.end();
      conn.server.destroy();
    }
    conns.delete(conn);
  }

  const server: Server = createServer((client) => {
    stats.connections += 1;
    const upstream = connect(Number(targetPort), targetHost);
    const conn: Conn = {
      id: stats.connections,
      client,
      server: upstream,
      response: { from: upstream, to: client, position: 0, armed: [], stalled: false, queue: [] },
      request: { from: client, to: upstream, position: 0, armed: [], stalled: false, queue: [] },
      requestTail: '',
      requestSeen: 0,
      upstreamClosed: false,
      timers: new Set(),
      closed: false,
    };
    conns.add(conn);
    arm(conn, 'response', 0, undefined);
    arm(conn, 'request', 0, undefined);
    client.on('data', (b: Buffer) => {
      scanRequest(conn, b);
      forward(conn, conn.request, 'request', b);
    });
    upstream.on('data', (b: Buffer) => forward(conn, conn.response, 'response', b));
    // Either side going away takes the other with it; errors are expected when faults are injected.
    client.on('error', () => {});
    upstream.on('error', () => {});
    client.on('close', () => closeConn(conn, false));
    upstream.on('close', () => {
      conn.upstreamClosed = true;
      // A stalled response keeps the client's connection open: the client must find out by itself.
      if (!conn.response.stalled) closeConn(conn, false);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('fault proxy: no TCP address');
  const port = address.port;
  const host = `127.0.0.1:${port}`;

  return {
    host,
    url: `http://${host}`,
    port,
    get connections() {
      return stats.connections;
    },
    get bytesToClient() {
      return stats.bytesToClient;
    },
    get bytesToServer() {
      return stats.bytesToServer;
    },
    addFault(fault: Fault): FaultHandle {
      let resolveFired!: () => void;
      const firedOnce = new Promise<void>((resolve) => (resolveFired = resolve));
      const entry: Entry = { fault, fired: 0, resolveFired, firedOnce };
      entries.push(entry);
      // Faults without a match apply to connections already open too, from where their stream is now.
      for (const conn of conns) {
        if (fault.match !== undefined) continue;
        const direction = fault.direction ?? 'response';
        const flow = direction === 'response' ? conn.response : conn.request;
        if (fault.connection === undefined || fault.connection === conn.id) flow.armed.push({ entry, at: flow.position + fault.at });
      }
      return {
        fault,
        get fired() {
          return entry.fired;
        },
        firedOnce,
      };
    },
    clearFaults(): void {
      entries.splice(0);
      for (const conn of conns) {
        conn.response.armed = [];
        conn.request.armed = [];
      }
    },
    async close(): Promise<void> {
      for (const conn of [...conns]) closeConn(conn, false);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function splitHostPort(target: string): [string, string] {
  const m = /^(.*):(\d+)$/.exec(target.replace(/^[a-z]+:\/\//, ''));
  if (!m) throw new Error(`fault proxy: target "${target}" is not host:port`);
  return [m[1]!.replace(/^\[|\]$/g, ''), m[2]!];
}
