// Builds dist/ from src/ (npm run build; `go generate` runs it): one
// minified JS bundle with its dependencies, one CSS file and index.html,
// plus dist/.sources.sha256, the hash of everything the build read, which
// the Go test compares so a stale committed dist/ fails `make unit`.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';

const common = { bundle: true, minify: true, logLevel: 'info', legalComments: 'eof' };
mkdirSync('dist', { recursive: true });
await build({ ...common, entryPoints: ['src/main.js'], format: 'iife', target: 'es2020', outfile: 'dist/app.js' });
await build({ ...common, entryPoints: ['src/style.css'], outfile: 'dist/app.css' });
copyFileSync('src/index.html', 'dist/index.html');

// The same hash as web_test.go: sorted paths, each path, NUL, content, NUL.
const inputs = ['build.mjs', 'package.json', 'package-lock.json', ...readdirSync('src').map((f) => `src/${f}`)].sort();
const h = createHash('sha256');
for (const f of inputs) {
  h.update(f);
  h.update('\0');
  h.update(readFileSync(f));
  h.update('\0');
}
writeFileSync('dist/.sources.sha256', h.digest('hex') + '\n');
