// Runs face-api.js's own FaceExpressionNet (the @vladmandic/face-api package installed by
// scripts/fetch-faceapi.sh, tfjs pure-JS CPU backend) on fixed synthetic inputs and writes the probabilities,
// the parity reference for the Keras port (src/moodlens/training/faceapi.py, tests/test_faceapi_port.py).
//
//   node scripts/faceapi-reference.mjs [OUT.json]      (default: tests/fixtures/faceapi/reference.json)
//
// The inputs are generated from integer-only recipes that tests/test_faceapi_port.py repeats in NumPy
// (no dataset images); each input's SHA-256 is stored so the test can prove it rebuilt the same pixels.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CACHE = process.env.FACEAPI_CACHE || join(ROOT, '.cache', 'faceapi');
const PKG = join(CACHE, 'node_modules', '@vladmandic', 'face-api');
const OUT = process.argv[2] || join(ROOT, 'tests', 'fixtures', 'faceapi', 'reference.json');
const S = 112;

// lowbias32 (Chris Wellons' integer hash): 32-bit multiplies wrap identically in JS (Math.imul) and NumPy uint32.
function hash32(x) {
  x >>>= 0;
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

// One HxWx3 uint8 image from a recipe; index i = (y * S + x) * 3 + c.
function makeImage(recipe) {
  const img = new Uint8Array(S * S * 3);
  for (let y = 0; y < S; y += 1) {
    for (let x = 0; x < S; x += 1) {
      for (let c = 0; c < 3; c += 1) {
        const i = (y * S + x) * 3 + c;
        let v;
        if (recipe.kind === 'noise') {
          v = hash32((Math.imul(recipe.seed, 0x9e3779b9) + i) >>> 0) >>> 24;
        } else if (recipe.kind === 'blocks') { // noise constant over cell x cell squares
          const j = ((Math.floor(y / recipe.cell) * S + Math.floor(x / recipe.cell)) * 3 + c);
          v = hash32((Math.imul(recipe.seed, 0x9e3779b9) + j) >>> 0) >>> 24;
        } else if (recipe.kind === 'gradient') { // R along x, G along y, B along the diagonal
          v = [Math.floor((x * 255) / (S - 1)), Math.floor((y * 255) / (S - 1)),
            Math.floor(((x + y) * 255) / (2 * (S - 1)))][c];
        } else if (recipe.kind === 'radial') { // grey: bright centre, dark corners
          const d2 = (2 * x - (S - 1)) ** 2 + (2 * y - (S - 1)) ** 2;
          v = 255 - Math.floor((d2 * 255) / (2 * (S - 1) ** 2));
        } else {
          throw new Error(`unknown recipe ${recipe.kind}`);
        }
        img[i] = v;
      }
    }
  }
  return img;
}

const RECIPES = [
  ...[1, 2, 3, 4, 5, 6].map((seed) => ({ kind: 'noise', seed })),
  { kind: 'blocks', seed: 7, cell: 8 },
  { kind: 'blocks', seed: 8, cell: 16 },
  { kind: 'gradient' },
  { kind: 'radial' },
];

// The package's Node bundle without native code (it loads @tensorflow/tfjs from the same cache).
const faceapi = createRequire(join(CACHE, 'package.json'))('@vladmandic/face-api/dist/face-api.node-wasm.js');
const { tf } = faceapi;
await tf.setBackend('cpu');
await tf.ready();
await faceapi.nets.faceExpressionNet.loadFromDisk(join(PKG, 'model'));

const version = JSON.parse(readFileSync(join(PKG, 'package.json'), 'utf8')).version;
const cases = [];
for (const recipe of RECIPES) {
  const pixels = makeImage(recipe);
  const input = tf.tensor3d(pixels, [S, S, 3], 'int32');
  const expressions = await faceapi.nets.faceExpressionNet.predictExpressions(input);
  input.dispose();
  cases.push({
    recipe,
    sha256: createHash('sha256').update(pixels).digest('hex'),
    probabilities: faceapi.FACE_EXPRESSION_LABELS.map((label) => expressions[label]),
  });
}

writeFileSync(OUT, `${JSON.stringify({
  package: `@vladmandic/face-api@${version}`,
  tfjs: tf.version.tfjs,
  backend: tf.getBackend(),
  labels: faceapi.FACE_EXPRESSION_LABELS,
  input: 'RGB uint8 112x112x3, index (y*112+x)*3+c; recipes as in scripts/faceapi-reference.mjs',
  cases,
}, null, 1)}\n`);
console.log(`wrote ${OUT}: ${cases.length} cases, ${version}, tfjs ${tf.version.tfjs} ${tf.getBackend()}`);
