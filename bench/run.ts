// Runs one benchmark by name (`npm run bench -- node-idle`), or all of them in turn.
import { readdirSync } from 'node:fs';

const names = readdirSync(import.meta.dirname)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts')
  .map((f) => f.slice(0, -3));
const wanted = process.argv.slice(2);
for (const name of wanted.length ? wanted : names) {
  if (!names.includes(name)) {
    console.error(`unknown benchmark "${name}"; there are: ${names.join(', ')}`);
    process.exit(2);
  }
  console.log(`\n## ${name}\n`);
  await import(`./${name}.ts`);
}
