// Copy the relay's browser client into this package, so that `npm pack` ships the very file
// the relay serves at GET /client.js.
//
// The one source is src/byok_relay/static/client.js (inside the Python package, so every
// wheel and `pip install` carries it); clients/js/client.js is a committed copy of it,
// which tests/test_js_package.py checks byte for byte. The repository's LICENSE, when there
// is one, is copied too (clients/js/LICENSE is generated, not committed; npm always packs it).
//
//   node scripts/sync-client.mjs          copy them (also run by `npm pack` as prepack)
//   node scripts/sync-client.mjs --check  exit 1 when client.js differs, change nothing
//
// Outside the repository (no source next to this package) there is nothing to copy from,
// and the committed copy is used as it is. Messages go to stderr (`npm pack --json` keeps
// stdout for its JSON).
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const pkg = dirname(dirname(fileURLToPath(import.meta.url)))
const repo = join(pkg, '..', '..')
const source = join(repo, 'src', 'byok_relay', 'static', 'client.js')
const copy = join(pkg, 'client.js')
const check = process.argv.includes('--check')

if (!existsSync(source)) {
  console.error('sync-client: no src/byok_relay/static/client.js (not in the byok-relay repository): keeping client.js as it is')
  process.exit(0)
}
const want = readFileSync(source)
const have = existsSync(copy) ? readFileSync(copy) : null
if (have && want.equals(have)) {
  console.error('sync-client: client.js is identical to the one the relay serves')
} else if (check) {
  console.error('sync-client: clients/js/client.js differs from src/byok_relay/static/client.js: run `npm run sync` in clients/js')
  process.exit(1)
} else {
  writeFileSync(copy, want)
  console.error('sync-client: copied src/byok_relay/static/client.js to clients/js/client.js')
}
const license = join(repo, 'LICENSE')
if (!check && existsSync(license)) writeFileSync(join(pkg, 'LICENSE'), readFileSync(license))
