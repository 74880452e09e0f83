// The SSH exec line (src/agent/ssh/quote.ts) against real shells on this host: random argv, env and cwd
// made of hostile bytes go through /bin/sh (dash here) and bash, and `printf '%s\0'` / `env -0` on the
// other side must give back exactly the bytes that went in.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { commandLine, shellQuote, type ShellWord } from '../../../src/agent/ssh/quote.ts';
import { rng } from '../helpers/rng.ts';

const SHELLS = ['/bin/sh', '/bin/bash'].filter((s) => existsSync(s));

/** Runs `line` as a shell script fed on stdin (bytes, as an SSH server hands it over) and returns stdout. */
function runShell(shell: string, line: Buffer): Promise<{ stdout: Buffer; stderr: string; code: number | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(shell, ['-s'], { stdio: 'pipe', env: { PATH: '/usr/bin:/bin' } });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ stdout: Buffer.concat(out), stderr: err, code }));
    child.stdin.end(Buffer.concat([line, Buffer.from('\n')]));
  });
}

const splitNul = (b: Buffer): Buffer[] => {
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = b.indexOf(0); i !== -1; start = i + 1, i = b.indexOf(0, start)) parts.push(b.subarray(start, i));
  assert.equal(start, b.length, 'output ends with a NUL');
  return parts;
};

// Characters a naive quoter trips on, weighted heavily, plus any other NUL-free byte.
const NASTY = [..."'\"$`\\\n\t !*?[]{}()<>|&;#~=-%,"].map((c) => c.charCodeAt(0));
function randomWord(next: () => number): Buffer {
  const len = Math.floor(next() * 12);
  const bytes: number[] = [];
  for (let i = 0; i < len; i++) {
    const r = next();
    if (r < 0.5) bytes.push(NASTY[Math.floor(next() * NASTY.length)]!);
    else if (r < 0.6) bytes.push(...Buffer.from(['é', '✓', '🚀', 'ß'][Math.floor(next() * 4)]!));
    else bytes.push(1 + Math.floor(next() * 255)); // any byte but NUL, valid UTF-8 or not
  }
  return Buffer.from(bytes);
}

for (const shell of SHELLS) {
  test(`random argv survives ${shell} byte for byte (printf '%s\\0')`, async () => {
    const next = rng(0x5eed);
    for (let round = 0; round < 150; round++) {
      const args = Array.from({ length: 1 + Math.floor(next() * 6) }, () => randomWord(next));
      const line = commandLine({ argv: ['printf', '%s\\0', ...args] });
      const { stdout, stderr, code } = await runShell(shell, line);
      assert.equal(code, 0, `round ${round}: ${shell} failed on ${JSON.stringify(line.toString('latin1'))}: ${stderr}`);
      assert.deepEqual(splitNul(stdout), args, `round ${round}: ${JSON.stringify(line.toString('latin1'))}`);
    }
  });

  test(`random env values and a hostile cwd survive ${shell}`, async () => {
    const next = rng(0xe1e1);
    const root = await mkdtemp(join(tmpdir(), 'vmlet-quote-'));
    try {
      const cwd = join(root, "it's $HOME `x`\nand é");
      await mkdir(cwd);
      for (let round = 0; round < 60; round++) {
        const env: [string, ShellWord][] = [
          ['PLAIN', randomWord(next)],
          ['dotted.name-ok', randomWord(next)],
          ['EMPTY', ''],
        ];
        const line = commandLine({ argv: ['env', '-0'], env, cwd });
        const { stdout, stderr, code } = await runShell(shell, line);
        assert.equal(code, 0, stderr);
        const got = splitNul(stdout);
        for (const [name, value] of env) {
          const want = Buffer.concat([Buffer.from(`${name}=`), Buffer.from(value)]);
          assert.ok(got.some((e) => e.equals(want)), `round ${round}: ${name} missing or changed`);
        }
        const pwd = await runShell(shell, commandLine({ argv: ['pwd'], cwd }));
        assert.equal(pwd.stdout.toString(), `${cwd}\n`);
      }
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
}

test('exit status comes from the program itself (exec, no shell in between)', async () => {
  const { code } = await runShell('/bin/sh', commandLine({ argv: ['sh', '-c', 'exit 7'] }));
  assert.equal(code, 7);
  const missing = await runShell('/bin/sh', commandLine({ argv: ['no-such-program-vmlet'] }));
  assert.equal(missing.code, 127);
  const badDir = await runShell('/bin/sh', commandLine({ argv: ['true'], cwd: '/no/such/dir' }));
  assert.notEqual(badDir.code, 0, 'a cwd that cannot be entered fails the command');
});

test('program names with = or a leading - still run as programs', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vmlet-quote-'));
  try {
    // A program path with '=' in it must not turn into an env assignment or a shell assignment.
    const dir = join(root, 'a=b');
    await mkdir(dir);
    const { spawnSync } = await import('node:child_process');
    spawnSync('ln', ['-s', '/usr/bin/printf', join(dir, 'x=y')]);
    const { stdout, code, stderr } = await runShell('/bin/sh', commandLine({ argv: [join(dir, 'x=y'), '%s\\0', 'ok'], env: { A: '1' } }));
    assert.equal(code, 0, stderr);
    assert.deepEqual(splitNul(stdout), [Buffer.from('ok')]);
    const noEnv = await runShell('/bin/sh', commandLine({ argv: [join(dir, 'x=y'), '%s\\0', 'ok'] }));
    assert.equal(noEnv.code, 0, noEnv.stderr);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('quoting leaves plain words readable and refuses what no argv can hold', () => {
  assert.equal(shellQuote('ls').toString(), 'ls');
  assert.equal(shellQuote('/usr/bin/x.y').toString(), '/usr/bin/x.y');
  assert.equal(shellQuote('').toString(), "''");
  assert.equal(shellQuote("it's").toString(), "'it'\\''s'");
  assert.equal(shellQuote('A=b').toString(), "'A=b'");
  assert.equal(shellQuote('-x').toString(), "'-x'");
  assert.equal(shellQuote('~').toString(), "'~'");
  assert.throws(() => commandLine({ argv: [] }), /empty command/);
  assert.throws(() => commandLine({ argv: ['a\0b'] }), /NUL byte/);
  assert.throws(() => commandLine({ argv: ['x'], env: { 'A=B': '1' } }), /invalid environment variable name/);
  assert.equal(commandLine({ argv: ['true'] }).toString(), 'exec true');
  assert.equal(commandLine({ argv: ['ls', '-l'], env: { A: "x y" }, cwd: '/w' }).toString(), "cd -- /w && exec env -- 'A=x y' ls '-l'");
});
