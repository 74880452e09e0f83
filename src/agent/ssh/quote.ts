// The one line an SSH exec request carries. SSH has no argv: the server hands a single string to the
// user's login shell (`$SHELL -c <line>`), so vmlet must write argv, environment and working directory
// as shell syntax that no byte of theirs can escape. Agoda's vz-kubelet did not (a `'` broke it); here
// every word is single-quoted, and a single quote inside a word is written as '\'' (close, escaped quote,
// reopen). Inside single quotes POSIX shells treat every byte literally — `$`, backticks, backslashes,
// newlines, non-ASCII — so this holds for sh, dash, bash, ash and zsh login shells (macOS's default).
// It does not hold for csh/tcsh or fish as login shells; stock images do not use them.
//
// Words are bytes, not only strings: a path need not be UTF-8, and the line is sent as a Buffer. NUL is
// the one byte that cannot be in an argument on any Unix, so it is refused.

/** An argument, environment value or path: a string (sent as UTF-8) or raw bytes. */
export type ShellWord = string | Uint8Array;

export interface CommandLineSpec {
  /** The program and its arguments; argv[0] is looked up in the server's default PATH. */
  argv: readonly ShellWord[];
  /** Environment for the program, passed through `env`, so names need not be shell identifiers. */
  env?: Readonly<Record<string, ShellWord>> | readonly (readonly [string, ShellWord])[];
  /** Directory to run in; the command fails (cd's exit status) if it cannot be entered. */
  cwd?: ShellWord;
}

const QUOTE = 0x27;
// Bytes that are never special to a POSIX shell in a word, so such words can go unquoted (readable in
// logs). Not '=' (the first word would be an assignment), '~' (tilde expansion) or '-' first (options).
const PLAIN = /^[A-Za-z0-9_+.,/:@%][A-Za-z0-9_+.,/:@%-]*$/;

/** One word, quoted for a POSIX shell: the shell reads it back as exactly these bytes. */
export function shellQuote(word: ShellWord): Buffer {
  const bytes = toBytes(word, 'an argument');
  if (bytes.length > 0 && PLAIN.test(bytes.toString('latin1'))) return bytes;
  const parts: Buffer[] = [Buffer.from("'")];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== QUOTE) continue;
    parts.push(bytes.subarray(start, i), Buffer.from("'\\''"));
    start = i + 1;
  }
  parts.push(bytes.subarray(start), Buffer.from("'"));
  return Buffer.concat(parts);
}

/**
 * The exec line for argv with env and cwd, e.g. `cd -- /work && exec env -- 'A=1' ls '-l'`. `exec`
 * replaces the shell, so the server reports the program's own exit status or signal, and a signal
 * request reaches the program rather than a shell in between.
 */
export function commandLine(spec: CommandLineSpec): Buffer {
  if (spec.argv.length === 0) throw new Error('exec: empty command (argv has no program)');
  const words: Buffer[] = [];
  const env: readonly (readonly [string, ShellWord])[] = Array.isArray(spec.env)
    ? (spec.env as readonly (readonly [string, ShellWord])[])
    : Object.entries((spec.env ?? {}) as Record<string, ShellWord>);
  const program = toBytes(spec.argv[0]!, 'the program name');
  // `env` takes its first operand without '=' as the program, so a program name with '=' in it goes
  // through `sh -c 'exec "$0" "$@"'`; a name starting with '-' would be an option to the shell's exec.
  const viaEnv = env.length > 0 || program[0] === 0x2d /* - */ || program.includes(0x3d /* = */);
  if (viaEnv) {
    words.push(Buffer.from('env'), Buffer.from('--'));
    for (const [name, value] of env) {
      if (name === '' || name.includes('=') || name.includes('\0')) {
        throw new Error(`exec: invalid environment variable name ${JSON.stringify(name)}`);
      }
      words.push(shellQuote(Buffer.concat([Buffer.from(`${name}=`), toBytes(value, `the value of ${name}`)])));
    }
    if (program.includes(0x3d)) words.push(Buffer.from(`/bin/sh -c 'exec "$0" "$@"'`));
  }
  for (const arg of spec.argv) words.push(shellQuote(arg));
  const exec = Buffer.concat([Buffer.from('exec '), join(words)]);
  if (spec.cwd === undefined) return exec;
  return Buffer.concat([Buffer.from('cd -- '), shellQuote(spec.cwd), Buffer.from(' && '), exec]);
}

function join(words: Buffer[]): Buffer {
  const out: Buffer[] = [];
  words.forEach((w, i) => out.push(...(i ? [Buffer.from(' '), w] : [w])));
  return Buffer.concat(out);
}

function toBytes(word: ShellWord, what: string): Buffer {
  const bytes = typeof word === 'string' ? Buffer.from(word, 'utf8') : Buffer.from(word);
  if (bytes.includes(0)) throw new Error(`exec: ${what} contains a NUL byte, which no Unix argument can hold`);
  return bytes;
}
