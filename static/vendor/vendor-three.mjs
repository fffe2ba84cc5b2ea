// Copies three.js (from node_modules, pinned in package.json) into static/vendor/three, minified file by file.
// Relative imports are kept, so the page loads them as plain ES modules through its importmap: no bundle step.
// Run from the repo root: `npm ci && npm run vendor`.
import { transform } from 'esbuild';
import { mkdir, readFile, writeFile, copyFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';

const src = 'node_modules/three';
const out = 'static/vendor/three';
const files = [
  ['build/three.module.js', 'three.module.min.js'],
  ['build/three.core.js', 'three.core.js'], // three.module.js imports './three.core.js' by this name
  ['examples/jsm/controls/OrbitControls.js', 'addons/controls/OrbitControls.js'],
  ['examples/jsm/loaders/GLTFLoader.js', 'addons/loaders/GLTFLoader.js'],
  ['examples/jsm/utils/BufferGeometryUtils.js', 'addons/utils/BufferGeometryUtils.js'],
  ['examples/jsm/utils/SkeletonUtils.js', 'addons/utils/SkeletonUtils.js'],
];

await rm(out, { recursive: true, force: true });
const version = JSON.parse(await readFile(join(src, 'package.json'), 'utf8')).version;
for (const [from, to] of files) {
  const code = await readFile(join(src, from), 'utf8');
  const result = await transform(code, { minify: true, format: 'esm', target: 'es2020', legalComments: 'inline' });
  await mkdir(dirname(join(out, to)), { recursive: true });
  await writeFile(join(out, to), `/* three.js r${version} (MIT, see LICENSE) ${from} */\n` + result.code);
}
await copyFile(join(src, 'LICENSE'), join(out, 'LICENSE'));
await writeFile(join(out, 'VERSION'), version + '\n');
console.log(`vendored three ${version} into ${out}`);
