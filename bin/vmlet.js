#!/usr/bin/env node
// The `vmlet` command. In a checkout (src/ present) it runs the TypeScript sources through tsx, so that
// what runs is always what is in the tree; an installed package (no src/), or VMLET_USE_DIST=1 after
// `npm run build`, runs the compiled JavaScript in dist/.
import { existsSync } from 'node:fs';

const source = new URL('../src/cli/main.ts', import.meta.url);
const compiled = new URL('../dist/cli/main.js', import.meta.url);
const useDist = process.env.VMLET_USE_DIST === '1' || !existsSync(source);
if (useDist) {
  const { main } = await import(compiled.href);
  await main();
} else {
  const { register } = await import('tsx/esm/api');
  register();
  const { main } = await import(source.href);
  await main();
}
