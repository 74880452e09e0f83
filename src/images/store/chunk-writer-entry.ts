// The chunk-writer thread (started by chunk-writer.ts): decodes one Apple LZ4 disk chunk at a time,
// hashes what it decodes, and writes it straight into the disk file at the chunk's offset: RunWriter
// gathers it into runs of up to 1 MiB without the zero windows, DiskSink writes them (O_DIRECT on Linux).
// Decoded bytes never cross back to the main thread, which only downloads and feeds.
import { parentPort } from 'node:worker_threads';
import { DigestTracker } from '../lz4/digest.ts';
import { AppleLz4Parser } from '../lz4/parser.ts';
import { toWire } from '../lz4/protocol.ts';
import type { ChunkFromWorker, ChunkToWorker } from './chunk-writer-protocol.ts';
import { alignedArena, DiskSink } from './direct-sink.ts';
import { RunWriter } from './run-writer.ts';

const port = parentPort;
if (!port) throw new Error('chunk-writer-entry.ts must run in a worker thread');
/** Largest single write: 16 windows of 64 KiB. */
const STAGE_BYTES = 1024 * 1024;
/** One per thread, reused by every chunk: the stage, page-aligned for O_DIRECT (see DiskSink). */
const arena = alignedArena(STAGE_BYTES);

interface Job {
  id: number;
  sink: DiskSink;
  runs: RunWriter;
  parser: AppleLz4Parser;
  tracker: DigestTracker;
}

let job: Job | undefined;

function send(msg: ChunkFromWorker): void {
  port!.postMessage(msg);
}

function fail(id: number, err: unknown): void {
  if (job && job.id === id) job.sink.close();
  job = undefined;
  send({ type: 'error', id, error: toWire(err) });
}

port.on('message', (msg: ChunkToWorker) => {
  try {
    switch (msg.type) {
      case 'start': {
        if (job) job.sink.close(); // a job abandoned by the main thread
        const sink = DiskSink.open(msg.file, arena, STAGE_BYTES);
        job = {
          id: msg.id,
          sink,
          runs: new RunWriter(sink, sink.stage, msg.offset, msg.sparse),
          parser: new AppleLz4Parser(),
          tracker: new DigestTracker(msg.expect),
        };
        return;
      }
      case 'data': {
        if (!job || job.id !== msg.id) return;
        const before = job.runs.pushed;
        for (const block of job.parser.blocks(new Uint8Array(msg.chunk))) {
          job.tracker.update(block);
          job.runs.push(block);
        }
        send({ type: 'consumed', id: msg.id, bytes: msg.chunk.byteLength, decoded: job.runs.pushed - before });
        return;
      }
      case 'end': {
        if (!job || job.id !== msg.id) return;
        const j = job;
        j.parser.end();
        const result = j.tracker.finish();
        j.runs.end();
        // No fsync per chunk (it doubled pull time): the pull syncs the disk file once before publishing,
        // and a pull resumed after a reboot re-verifies the chunks it had recorded as done.
        j.sink.close();
        job = undefined;
        send({ type: 'done', id: msg.id, digest: result.digest, size: result.size, written: j.runs.written });
        return;
      }
    }
  } catch (err) {
    fail(msg.id, err);
  }
});
