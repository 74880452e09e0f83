// The chunk-writer thread (started by chunk-writer.ts): decodes one Apple LZ4 disk chunk at a time,
// hashes what it decodes, and writes it straight into the disk file at the chunk's offset, skipping runs
// of zeros. Decoded bytes never cross back to the main thread, which only downloads and feeds.
import { closeSync, openSync, writeSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { DigestTracker } from '../lz4/digest.ts';
import { AppleLz4Parser } from '../lz4/parser.ts';
import { toWire } from '../lz4/protocol.ts';
import type { ChunkFromWorker, ChunkToWorker } from './chunk-writer-protocol.ts';
import { ZERO_RUN } from './sparse-file.ts';

const port = parentPort;
if (!port) throw new Error('chunk-writer-entry.ts must run in a worker thread');
const ZEROS = Buffer.alloc(ZERO_RUN);

interface Job {
  id: number;
  fd: number;
  position: number;
  sparse: boolean;
  parser: AppleLz4Parser;
  tracker: DigestTracker;
  written: number;
}

let job: Job | undefined;

function send(msg: ChunkFromWorker): void {
  port!.postMessage(msg);
}

function write(j: Job, data: Buffer): void {
  if (!j.sparse) {
    writeAll(j.fd, data, j.position);
    j.written += data.length;
  } else {
    for (let at = 0; at < data.length; at += ZERO_RUN) {
      const end = Math.min(at + ZERO_RUN, data.length);
      if (data.compare(ZEROS, 0, end - at, at, end) === 0) continue;
      writeAll(j.fd, data.subarray(at, end), j.position + at);
      j.written += end - at;
    }
  }
  j.position += data.length;
}

function writeAll(fd: number, data: Buffer, position: number): void {
  for (let done = 0; done < data.length; ) done += writeSync(fd, data, done, data.length - done, position + done);
}

function fail(id: number, err: unknown): void {
  if (job && job.id === id) closeSync(job.fd);
  job = undefined;
  send({ type: 'error', id, error: toWire(err) });
}

port.on('message', (msg: ChunkToWorker) => {
  try {
    switch (msg.type) {
      case 'start':
        job = {
          id: msg.id,
          fd: openSync(msg.file, 'r+'),
          position: msg.offset,
          sparse: msg.sparse,
          parser: new AppleLz4Parser(),
          tracker: new DigestTracker(msg.expect),
          written: 0,
        };
        return;
      case 'data': {
        if (!job || job.id !== msg.id) return;
        const before = job.position;
        for (const block of job.parser.blocks(new Uint8Array(msg.chunk))) {
          job.tracker.update(block);
          write(job, block);
        }
        send({ type: 'consumed', id: msg.id, bytes: msg.chunk.byteLength, decoded: job.position - before });
        return;
      }
      case 'end': {
        if (!job || job.id !== msg.id) return;
        const j = job;
        j.parser.end();
        const result = j.tracker.finish();
        // No fsync per chunk (it doubled pull time): the pull syncs the disk file once before publishing,
        // and a pull resumed after a reboot re-verifies the chunks it had recorded as done.
        closeSync(j.fd);
        job = undefined;
        send({ type: 'done', id: msg.id, digest: result.digest, size: result.size, written: j.written });
        return;
      }
    }
  } catch (err) {
    fail(msg.id, err);
  }
});
