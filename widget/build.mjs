// Builds the widget's two bundles, which the edge serves (and embeds in its binary):
// /widget.js, what the hotel's page loads, and /widget-chat.js, the chat window it loads on
// the first open.
//   node build.mjs           writes dist/ and prints the sizes
//   node build.mjs --check   fails when dist/ is not what src/ builds (a stale commit)
//   node build.mjs --tests   compiles test/unit/*.test.ts into .build/test/ for `node --test`
import { readFile, readdir, mkdir, rm, writeFile } from "node:fs/promises";
import { gzipSync } from "node:zlib";
import * as esbuild from "esbuild";

const here = new URL(".", import.meta.url).pathname;
/** What the hotel's page loads (widget.js, at most 15 KB gzipped before the chat is first
 * opened), and the chat window it loads on the first open (widget-chat.js). */
const BUNDLES = [
  { entry: "src/index.ts", out: "dist/widget.js", budget: 15 * 1024 },
  { entry: "src/chat.ts", out: "dist/widget-chat.js", budget: 30 * 1024 },
];

// CSS is imported as a minified string and adopted into the shadow root at run time.
const cssAsText = {
  name: "css-as-text",
  setup(build) {
    build.onLoad({ filter: /\.css$/ }, async ({ path }) => {
      const { code } = await esbuild.transform(await readFile(path, "utf8"), { loader: "css", minify: true });
      return { contents: `export default ${JSON.stringify(code.trim())};`, loader: "js" };
    });
  },
};

const bundle = {
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  legalComments: "none",
  banner: { js: "/* Jack web chat widget. Built from widget/src by `npm run build`; do not edit. */" },
  plugins: [cssAsText],
  write: false,
  logLevel: "warning",
};

const mode = process.argv[2];
if (mode === "--tests") {
  const dir = `${here}test/unit/`;
  const tests = (await readdir(dir)).filter((f) => f.endsWith(".test.ts")).map((f) => dir + f);
  await rm(`${here}.build/test`, { recursive: true, force: true });
  await mkdir(`${here}.build/test`, { recursive: true });
  await esbuild.build({
    entryPoints: tests,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    outdir: `${here}.build/test`,
    outExtension: { ".js": ".mjs" },
    plugins: [cssAsText],
    logLevel: "warning",
  });
} else {
  let failed = false;
  for (const { entry, out, budget } of BUNDLES) {
    const result = await esbuild.build({ ...bundle, entryPoints: [`${here}${entry}`] });
    const code = result.outputFiles[0].contents;
    const gzip = gzipSync(code, { level: 9 }).length;
    const size = `${out}: ${(code.length / 1024).toFixed(1)} KiB, ${(gzip / 1024).toFixed(1)} KiB gzipped (budget ${budget / 1024} KiB)`;
    if (gzip > budget) {
      console.error(`${size}: over budget`);
      failed = true;
    } else if (mode === "--check") {
      const committed = await readFile(`${here}${out}`).catch(() => Buffer.alloc(0));
      if (!committed.equals(Buffer.from(code))) {
        console.error(
          `${out} is stale: it is not what widget/src builds. Run \`npm run build\` in widget/ and commit it.`,
        );
        failed = true;
      } else {
        console.log(`${size}: up to date`);
      }
    } else {
      await mkdir(`${here}dist`, { recursive: true });
      await writeFile(`${here}${out}`, code);
      console.log(size);
    }
  }
  if (failed) process.exit(1);
}
