// A small, strict parser of the Prometheus text exposition format 0.0.4, for tests of /metrics endpoints:
// every line must be empty, a HELP, a TYPE or a sample with well-formed labels, and TYPE comes before samples.
import assert from 'node:assert/strict';

export interface Sample { name: string; labels: Record<string, string>; value: number; timestamp?: number }

export function parsePrometheus(text: string): { samples: Sample[]; types: Map<string, string>; help: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const help = new Map<string, string>();
  assert.ok(text.endsWith('\n'), 'ends with a newline');
  for (const line of text.slice(0, -1).split('\n')) {
    if (line.trim() === '') continue; // the format allows empty lines (prom-client writes them between families)
    let m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      if (m[1] === 'TYPE') {
        assert.ok(['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(m[3]!), line);
        assert.ok(!types.has(m[2]!), `one TYPE for ${m[2]}`);
        types.set(m[2]!, m[3]!);
      } else help.set(m[2]!, m[3]!);
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line);
    assert.ok(m, `a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const body = m[2] ?? '';
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/g;
    let consumed = 0;
    for (let l; (l = re.exec(body)); ) {
      assert.equal(l.index, consumed, `labels well-formed in ${line}`);
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      consumed = re.lastIndex;
    }
    assert.equal(consumed, body.length, `labels well-formed in ${line}`);
    const value = Number(m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : m[3]);
    assert.ok(!Number.isNaN(value) || m[3] === 'NaN', `a number: ${m[3]}`);
    const family = types.has(m[1]!) ? m[1]! : m[1]!.replace(/_(bucket|sum|count)$/, '');
    assert.ok(types.has(family), `TYPE before samples of ${m[1]}`);
    samples.push({ name: m[1]!, labels, value, ...(m[4] ? { timestamp: Number(m[4]) } : {}) });
  }
  return { samples, types, help };
}
