// Logs of a pod without a command come from the VM's console file: tail, limit and follow.
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { consoleLog, tailOffset } from '../../../src/runtime/pod/console-log.ts';

const text = async (r: NodeJS.ReadableStream) => {
  let s = '';
  for await (const c of r) s += String(c);
  return s;
};

test('tailOffset finds where the last N lines start, with or without a final newline', () => {
  const b = Buffer.from('a\nb\nc\n');
  assert.equal(b.subarray(tailOffset(b, 2)).toString(), 'b\nc\n');
  assert.equal(b.subarray(tailOffset(b, 9)).toString(), 'a\nb\nc\n');
  assert.equal(b.subarray(tailOffset(b, 0)).toString(), '');
  const c = Buffer.from('a\nb\nc');
  assert.equal(c.subarray(tailOffset(c, 1)).toString(), 'c');
});

test('console logs honour tailLines and limitBytes, and follow picks up appended lines', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'console-'));
  try {
    const file = path.join(dir, 'console.log');
    await writeFile(file, 'boot 1\nboot 2\nboot 3\n');
    assert.equal(await text(await consoleLog(file, {})), 'boot 1\nboot 2\nboot 3\n');
    assert.equal(await text(await consoleLog(file, { tailLines: 1 })), 'boot 3\n');
    assert.equal(await text(await consoleLog(file, { limitBytes: 9 })), 'boot 1\nbo');
    const follow = await consoleLog(file, { follow: true, tailLines: 1 });
    let seen = '';
    follow.on('data', (d: Buffer) => (seen += d.toString()));
    await appendFile(file, 'later\n');
    for (let i = 0; i < 40 && !seen.includes('later'); i++) await new Promise((r) => setTimeout(r, 100));
    follow.destroy();
    assert.equal(seen, 'boot 3\nlater\n');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
