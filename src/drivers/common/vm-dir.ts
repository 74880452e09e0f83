// A VM's directory for both drivers' create() and attach(): a new VM wants a writable directory that
// holds no VM yet; a record that does not parse, or a spec that does not fit the record, is a VmError
// the runtime understands.
import { access, constants, readdir } from 'node:fs/promises';
import { VmError, type VmSpec } from '../hypervisor.ts';
import { StateError } from './record.ts';

/** dir must exist, be writable, and hold no vm.json and no socket. */
export async function claimVmDir(dir: string): Promise<void> {
  try {
    await access(dir, constants.W_OK);
  } catch {
    throw new VmError('InvalidVmDir', `VM dir ${dir} does not exist or is not writable`);
  }
  const existing = (await readdir(dir)).filter((f) => f === 'vm.json' || f.endsWith('.sock'));
  if (existing.length > 0) throw new VmError('InvalidVmDir', `VM dir ${dir} already holds a VM (${existing.join(', ')}); attach it instead`);
}

/** A new record for spec; a spec the record's schema refuses is InvalidSpec with its first line. */
export function recordForSpec<R>(spec: VmSpec, make: () => R): R {
  try {
    return make();
  } catch (err) {
    throw new VmError('InvalidSpec', `VM spec ${spec.id}: ${(err as Error).message.split('\n')[0]}`);
  }
}

/**
 * The VM recorded in a directory, picked up again (reattach()); undefined when there is no record (or it
 * is another driver's). A broken record is InvalidVmDir.
 */
export async function attachRecorded<R, V extends { reattach(): Promise<void> }>(read: () => Promise<R | undefined>, vmFor: (record: R) => V): Promise<V | undefined> {
  let record;
  try {
    record = await read();
  } catch (err) {
    if (err instanceof StateError) throw new VmError('InvalidVmDir', err.message);
    throw err;
  }
  if (!record) return undefined;
  const vm = vmFor(record);
  await vm.reattach();
  return vm;
}
