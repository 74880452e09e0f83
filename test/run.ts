// Runs the test suites with node's own test runner: `unit` (pure, seconds), `e2e` (real kube-apiserver,
// etcd, kubectl, registry), or `all`. Node 20 does not expand globs, so the files are listed here.
// Extra arguments are passed on to `node --test` (e.g. --test-name-pattern=lease).
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';

const root = path.dirname(path.dirname(new URL(import.meta.url).pathname));
const [suite = 'all', ...extra] = process.argv.slice(2);

function testFiles(dir: string): string[] {
  const abs = path.join(root, dir);
  try {
    return readdirSync(abs)
      .flatMap((name) => {
        const file = path.join(abs, name);
        if (statSync(file).isDirectory()) return testFiles(path.join(dir, name));
        return name.endsWith('.test.ts') ? [path.join(dir, name)] : [];
      })
      .sort();
  } catch {
    return [];
  }
}

const suites: Record<string, string[]> = {
  unit: testFiles('test/unit'),
  e2e: testFiles('test/e2e'),
};
suites.all = [...suites.unit!, ...suites.e2e!];
const files = suites[suite];
if (!files) {
  console.error(`unknown suite "${suite}": use unit, e2e or all`);
  process.exit(2);
}
if (files.length === 0) {
  console.error(`no test files in suite "${suite}"`);
  process.exit(1);
}
// End-to-end files each start an API server: on a 2-core machine they run one at a time.
const concurrency = suite === 'unit' ? Math.max(1, Math.min(4, (await import('node:os')).availableParallelism())) : 1;
const child = spawn(
  process.execPath,
  ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, ...extra, ...files],
  { cwd: root, stdio: 'inherit' },
);
const forward = (signal: NodeJS.Signals) => child.kill(signal);
process.on('SIGINT', forward);
process.on('SIGTERM', forward);
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
