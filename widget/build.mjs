// Builds the widget bundle that the edge serves at /widget.js (and embeds in its binary).
//   node build.mjs           writes dist/widget.js and prints its sizes
//   node build.mjs --check   fails when dist/widget.js is not what src/ builds (a stale commit)
//   node build.mjs --tests   compiles test/unit/*.test.ts into .build/test/ for `node --test`
import { readFile, readdir, mkdir, rm } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import * as esbuild from 'esbuild';

const here = new URL('.', import.meta.url).pathname;
const OUT = `${here}dist/widget.js`;
/** The most the hotel's page loads before the chat is opened (issue 3): 15 KB gzipped. */
const BUDGET_GZIP = 15 * 1024;

// CSS is imported as a minified string and adopted into the shadow root at run time.
const cssAsText = {
  name: 'css-as-text',
  setup(build) {
    build.onLoad({ filter: /\.css$/ }, async ({ path }) => {
      const { code } = await esbuild.transform(await readFile(path, 'utf8'), { loader: 'css', minify: true });
      return { contents: `export default ${JSON.stringify(code.trim())};`, loader: 'js' };
    });
  },
};

const bundle = {
  entryPoints: [`${here}src/index.ts`],
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020'],
  legalComments: 'none',
  banner: { js: '/* Jack web chat widget. Built from widget/src by `npm run build`; do not edit. */' },
  plugins: [cssAsText],
  write: false,
  logLevel: 'warning',
};

const mode = process.argv[2];
if (mode === '--tests') {
  const dir = `${here}test/unit/`;
  const tests = (await readdir(dir)).filter((f) => f.endsWith('.test.ts')).map((f) => dir + f);
  await rm(`${here}.build/test`, { recursive: true, force: true });
  await mkdir(`${here}.build/test`, { recursive: true });
  await esbuild.build({
    entryPoints: tests,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outdir: `${here}.build/test`,
    outExtension: { '.js': '.mjs' },
    plugins: [cssAsText],
    logLevel: 'warning',
  });
} else {
  const result = await esbuild.build(bundle);
  const code = result.outputFiles[0].contents;
  const gzip = gzipSync(code, { level: 9 }).length;
  const size = `dist/widget.js: ${(code.length / 1024).toFixed(1)} KiB, ${(gzip / 1024).toFixed(1)} KiB gzipped (budget ${BUDGET_GZIP / 1024} KiB)`;
  if (gzip > BUDGET_GZIP) {
    console.error(`${size}: over budget`);
    process.exit(1);
  }
  if (mode === '--check') {
    const committed = await readFile(OUT).catch(() => Buffer.alloc(0));
    if (!committed.equals(Buffer.from(code))) {
      console.error('dist/widget.js is stale: it is not what widget/src builds. Run `npm run build` in widget/ and commit dist/widget.js.');
      process.exit(1);
    }
    console.log(`${size}: up to date`);
  } else {
    await mkdir(`${here}dist`, { recursive: true });
    const { writeFile } = await import('node:fs/promises');
    await writeFile(OUT, code);
    console.log(size);
  }
}
