// Starting a worker thread from a module next to the caller, both when running the TypeScript sources
// (under tsx) and when running the compiled JavaScript in dist/.
import { Worker } from 'node:worker_threads';

/** Starts `name` (without extension) from the directory of `from` (the caller's import.meta.url). */
export function spawnModuleWorker(from: string, name: string): Worker {
  if (from.endsWith('.ts')) {
    // Node 20 does not apply the parent's --import hooks to workers (nodejs/node#47747, tsx#354), so the
    // worker loads tsx itself and imports the entry through tsx's tsImport. Only in development: the
    // built code (dist/*.js) takes the branch below and needs no tsx.
    const entry = new URL(`./${name}.ts`, from).href;
    const tsx = import.meta.resolve('tsx/esm/api');
    const boot = `import(${JSON.stringify(tsx)}).then((tsx) => tsx.tsImport(${JSON.stringify(entry)}, ${JSON.stringify(entry)}))`;
    return new Worker(boot, { eval: true, execArgv: [] });
  }
  return new Worker(new URL(`./${name}.js`, from));
}
