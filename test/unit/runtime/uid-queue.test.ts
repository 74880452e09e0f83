import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UidQueue } from '../../../src/runtime/uid-queue.ts';

const tick = () => new Promise((r) => setImmediate(r));

test('one worker per UID at a time; a UID queued while it runs is worked once more after, not twice at once', async () => {
  const log: string[] = [];
  const gates: Array<() => void> = [];
  const q = new UidQueue(async (uid) => {
    log.push(`start ${uid}`);
    await new Promise<void>((r) => gates.push(r));
    log.push(`end ${uid}`);
  }, 4);
  q.enqueue('a');
  q.enqueue('a');
  q.enqueue('a');
  await tick();
  assert.deepEqual(log, ['start a']);
  gates.shift()!();
  await tick();
  await tick();
  assert.deepEqual(log, ['start a', 'end a', 'start a'], 'the queued-again UID runs once more');
  gates.shift()!();
  await tick();
  assert.deepEqual(log, ['start a', 'end a', 'start a', 'end a']);
});

test('at most `concurrency` UIDs at once, the rest in order; nothing new after stop()', async () => {
  const running = new Set<string>();
  let peak = 0;
  const done: string[] = [];
  const gates = new Map<string, () => void>();
  const q = new UidQueue(async (uid) => {
    running.add(uid);
    peak = Math.max(peak, running.size);
    await new Promise<void>((r) => gates.set(uid, r));
    running.delete(uid);
    done.push(uid);
  }, 2);
  for (const u of ['a', 'b', 'c', 'd']) q.enqueue(u);
  await tick();
  assert.deepEqual([...running], ['a', 'b']);
  gates.get('a')!();
  await tick();
  await tick();
  assert.deepEqual([...running].sort(), ['b', 'c']);
  q.stop();
  q.enqueue('e');
  for (const u of ['b', 'c']) gates.get(u)!();
  await tick();
  await tick();
  gates.get('d')?.();
  await tick();
  assert.equal(peak, 2);
  assert.ok(!done.includes('e'), 'e was queued after stop()');
});
