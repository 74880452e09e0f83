// The chunk-writer thread (started by chunk-writer.ts): decodes one Apple LZ4 disk chunk at a time,
// hashes what it receives (the blob's digest) and what it decodes, and writes it straight into the disk file at the chunk's offset: RunWriter
// gathers it into runs of up to 1 MiB without the zero windows, DiskSink writes them (O_DIRECT on Linux).
// Decoded bytes never cross back to the main thread, which only downloads and feeds.
import type { Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { DigestTracker } from '../lz4/digest.ts';
import { AppleLz4Parser } from '../lz4/parser.ts';
import { toWire } from '../lz4/protocol.ts';
import { hashFor, parseDigest } from '../registry/digest.ts';
import type { ChunkFromWorker, ChunkToWorker } from './chunk-writer-protocol.ts';
import { alignedArena, DiskSink } from './direct-sink.ts';
import { RunWriter } from './run-writer.ts';

const port = parentPort;
if (!port) throw new Error('chunk-writer-entry.ts must run in a worker thread');
/** Largest single write: 16 windows of 64 KiB. */
const STAGE_BYTES = 1024 * 1024;
/** Stages per thread: one filling, the others being written meanwhile (a block over 1 MiB needs more). */
const STAGES = 6;
/** One arena per thread, reused by every chunk, cut into the stages: page-aligned for O_DIRECT (see DiskSink). */
const arena = alignedArena(STAGES * STAGE_BYTES);
const stages = Array.from({ length: STAGES }, (_, i) => arena.subarray(i * STAGE_BYTES, (i + 1) * STAGE_BYTES));

interface Job {
  id: number;
  sink: DiskSink;
  runs: RunWriter;
  parser: AppleLz4Parser;
  tracker: DigestTracker;
  /** The compressed bytes' hash, when the job checks the blob's digest (see ChunkJob.blobDigest). */
  blob?: { hash: Hash; digest: string; algorithm: string };
}

let job: Job | undefined;

function send(msg: ChunkFromWorker): void {
  port!.postMessage(msg);
}

async function fail(id: number, err: unknown): Promise<void> {
  const j = job && job.id === id ? job : undefined;
  job = undefined;
  await j?.sink.close(); // after its writes in flight
  send({ type: 'error', id, error: toWire(err) });
}

// Messages are handled one after another; a handler may wait for the disk (free stages, the last writes).
let queue = Promise.resolve();
port.on('message', (msg: ChunkToWorker) => {
  queue = queue.then(() => handle(msg));
});

async function handle(msg: ChunkToWorker): Promise<void> {
  try {
    switch (msg.type) {
      case 'start': {
        if (job) await job.sink.close(); // a job abandoned by the main thread
        const sink = DiskSink.open(msg.file, stages, { direct: msg.direct });
        job = {
          id: msg.id,
          sink,
          runs: new RunWriter(sink, msg.offset, msg.sparse),
          parser: new AppleLz4Parser({ lend: true }), // blocks are hashed and copied into a stage at once
          tracker: new DigestTracker(msg.expect),
          // hashFor refuses a digest it cannot verify (the job fails with that reason).
          blob: msg.blobDigest === undefined ? undefined : { hash: hashFor(msg.blobDigest), digest: msg.blobDigest, algorithm: parseDigest(msg.blobDigest)!.algorithm },
        };
        return;
      }
      case 'data': {
        if (!job || job.id !== msg.id) return;
        const before = job.runs.pushed;
        const j = job;
        const bytes = new Uint8Array(msg.chunk, 0, msg.length);
        j.blob?.hash.update(bytes);
        for (const block of j.parser.blocks(bytes)) {
          j.tracker.update(block);
          // Room for every stage this block can fill, plus the one it starts.
          const need = Math.min(STAGES, Math.ceil(block.length / STAGE_BYTES) + 1);
          if (j.sink.freeStages < need) await j.sink.available(need);
          j.runs.push(block);
        }
        // The parser, the hash and the stage copy what they keep: the buffer goes back to be refilled.
        port!.postMessage({ type: 'consumed', id: msg.id, bytes: msg.length, decoded: j.runs.pushed - before, chunk: msg.chunk } satisfies ChunkFromWorker, [msg.chunk]);
        return;
      }
      case 'end': {
        if (!job || job.id !== msg.id) return;
        const j = job;
        // The blob's own digest first: bytes that are not the blob explain any decoding error after them.
        const got = j.blob && `${j.blob.algorithm}:${j.blob.hash.digest('hex')}`;
        if (j.blob && got !== j.blob.digest) {
          job = undefined;
          await j.sink.close();
          send({ type: 'blob-mismatch', id: msg.id, digest: got! });
          return;
        }
        j.parser.end();
        const result = j.tracker.finish();
        j.runs.end(); // writes the stage it holds: needs no other
        await j.sink.drain(); // a write error (ENOSPC) fails the chunk here
        // No fsync per chunk (it doubled pull time): the pull syncs the disk file once before publishing,
        // and a pull resumed after a reboot re-verifies the chunks it had recorded as done.
        await j.sink.close();
        job = undefined;
        send({ type: 'done', id: msg.id, digest: result.digest, size: result.size, written: j.runs.written });
        return;
      }
    }
  } catch (err) {
    await fail(msg.id, err);
  }
}
