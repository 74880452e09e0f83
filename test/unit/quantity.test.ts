import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatBytes, formatCpu, parseQuantity, wholeCpus } from '../../src/kube/quantity.ts';
import { parseDuration } from '../../src/config/duration.ts';

test('quantities parse binary, decimal, milli and exponent forms', () => {
  assert.equal(parseQuantity('4Gi'), 4 * 2 ** 30);
  assert.equal(parseQuantity('1.5G'), 1.5e9);
  assert.equal(parseQuantity('500m'), 0.5);
  assert.equal(parseQuantity('2'), 2);
  assert.equal(parseQuantity('1e3'), 1000);
  assert.throws(() => parseQuantity('4 GB'), /not a Kubernetes quantity/);
  assert.throws(() => parseQuantity(''), /not a Kubernetes quantity/);
});

test('millicores round up to whole vCPUs', () => {
  assert.equal(wholeCpus('500m'), 1);
  assert.equal(wholeCpus('1001m'), 2);
  assert.equal(wholeCpus('2'), 2);
});

test('bytes and CPUs format the way the kubelet reports them', () => {
  assert.equal(formatBytes(16 * 2 ** 30), '16Gi');
  assert.equal(formatBytes(2 ** 20 + 2 ** 10), '1025Ki');
  assert.equal(formatBytes(1000), '1000');
  assert.equal(formatCpu(8), '8');
  assert.equal(formatCpu(7.5), '7500m');
});

test('durations accept Go spellings and plain seconds', () => {
  assert.equal(parseDuration('1h30m'), 5_400_000);
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration(10), 10_000);
  assert.equal(parseDuration('15'), 15_000);
  assert.throws(() => parseDuration('10 s'), /not a duration/);
  assert.throws(() => parseDuration('s'), /not a duration/);
});
