// `make assets`: bundle src/ into connector/playground/ (or the folder given), the files d365 serve ships.
// Deterministic: the same lock file and sources give the same bytes (tests/playground/test_bundle.py rebuilds
// and compares), so no source maps and no paths or dates in the output.
import { copyFileSync, mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import * as esbuild from 'esbuild';

const out = resolve(process.argv[2] || '../connector/playground');
mkdirSync(out, { recursive: true });
await esbuild.build({
  entryPoints: { app: 'src/main.jsx' },
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['chrome109', 'firefox115', 'safari16'],
  jsx: 'automatic',
  define: { 'process.env.NODE_ENV': '"production"' },
  legalComments: 'eof',
  charset: 'utf8',
  outdir: out,
  logLevel: 'warning',
});
copyFileSync('src/index.html', resolve(out, 'index.html'));
