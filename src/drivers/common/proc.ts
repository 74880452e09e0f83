// Linux /proc readings as text, pure: /proc/<pid>/stat and /proc/<pid>/cmdline. Both drivers use them to
// tell who a pid is (the QEMU driver's process identity, the vz helper's start time on Linux).
import { StateError } from './record.ts';

/** The fields of /proc/<pid>/stat the drivers use. */
export interface ProcStat {
  pid: number;
  comm: string;
  /** R, S, D, Z (zombie: exited, not yet reaped), X... */
  state: string;
  ppid: number;
  /** Clock ticks. */
  utime: number;
  stime: number;
  startTime: string;
}

/** Parses /proc/<pid>/stat. comm may hold spaces and parentheses, so fields are counted after the last ')'. */
export function parseProcStat(text: string): ProcStat {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new StateError(`not a /proc/<pid>/stat line: ${text.slice(0, 80)}`);
  const rest = text.slice(close + 2).trim().split(/\s+/);
  // rest[0] is field 3 (state); field n is rest[n - 3].
  const field = (n: number): string => {
    const v = rest[n - 3];
    if (v === undefined) throw new StateError(`/proc/<pid>/stat has no field ${n}: ${text.slice(0, 80)}`);
    return v;
  };
  return {
    pid: Number(text.slice(0, open).trim()),
    comm: text.slice(open + 1, close),
    state: field(3),
    ppid: Number(field(4)),
    utime: Number(field(14)),
    stime: Number(field(15)),
    startTime: field(22),
  };
}

/** /proc/<pid>/cmdline as argv. */
export function parseCmdline(raw: Buffer | string): string[] {
  const text = typeof raw === 'string' ? raw : raw.toString('utf8');
  const parts = text.split('\0');
  if (parts.at(-1) === '') parts.pop();
  return parts;
}
