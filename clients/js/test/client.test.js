// Node's built-in test runner on the package: `node --test test/client.test.js`.
//
// The first group needs nothing: the package's exports, that client.d.ts declares exactly
// what the module exports, the client's own checks, the SSE parser and extractText.
// The second group talks to a real relay at RELAY_URL (tests/test_js_package.py starts one
// in front of the mock providers and sets the variables below); without RELAY_URL those
// tests are skipped, and the pytest wrapper fails on any skip.
//
//   RELAY_URL          the relay, e.g. http://127.0.0.1:8787
//   RELAY_TOKEN        a relay token registered for these tests (pytest checks that it
//                      never reaches a provider)
//   TEST_OPENAI_KEY, TEST_ANTHROPIC_KEY  fake provider keys the tests store
//   MOCK_REPLY_TEXT    what the mock providers answer
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe, test } from 'node:test'

import * as pkg from 'byok-relay-client' // the package's own name: resolved through "exports"
import * as direct from '../client.js'

const { RelayClient, RelayError, parseSSE, extractText, createMemoryStorage } = pkg

const RELAY_URL = (process.env.RELAY_URL || '').replace(/\/+$/, '')
const RELAY_TOKEN = process.env.RELAY_TOKEN || ''
const OPENAI_KEY = process.env.TEST_OPENAI_KEY || 'sk-test-js-openai-0001'
const ANTHROPIC_KEY = process.env.TEST_ANTHROPIC_KEY || 'sk-ant-test-js-0002'
const REPLY = process.env.MOCK_REPLY_TEXT || null
const online = { skip: RELAY_URL && RELAY_TOKEN ? false : 'set RELAY_URL and RELAY_TOKEN (tests/test_js_package.py does)' }
const MESSAGES = [{ role: 'user', content: 'Say hello' }]

const dts = readFileSync(new URL('../client.d.ts', import.meta.url), 'utf8')

/** Names declared by `export declare class|function|const NAME` (plus `default`). */
function declaredExports () {
  const names = new Set([...dts.matchAll(/^export declare (?:class|function|const) (\w+)/gm)].map((m) => m[1]))
  if (/^export default \w+/m.test(dts)) names.add('default')
  return names
}

/** Members declared in the body of `export declare class NAME`. */
function declaredMembers (className) {
  const start = dts.indexOf(`export declare class ${className}`)
  assert.ok(start >= 0, `client.d.ts declares no class ${className}`)
  const open = dts.indexOf('{', start)
  let depth = 0
  let end = open
  for (; end < dts.length; end++) {
    if (dts[end] === '{') depth++
    if (dts[end] === '}' && --depth === 0) break
  }
  const body = dts.slice(open + 1, end).replace(/\/\*\*[\s\S]*?\*\//g, '')
  const methods = new Set()
  const fields = new Set()
  for (const line of body.split('\n')) {
    const m = /^ {2}(?:get |set )?(\w+)(\??)\s*(\(|:)/.exec(line)
    if (!m || m[1] === 'constructor') continue
    if (m[3] === '(' && !/^ {2}(?:get|set) /.test(line)) methods.add(m[1])
    else fields.add(m[1])
  }
  return { methods, fields }
}

function publicMethods (cls) {
  return new Set(Object.getOwnPropertyNames(cls.prototype).filter((name) => {
    if (name === 'constructor' || name.startsWith('_')) return false
    const d = Object.getOwnPropertyDescriptor(cls.prototype, name)
    return typeof d.value === 'function'
  }))
}

function accessors (cls) {
  return new Set(Object.getOwnPropertyNames(cls.prototype).filter((name) => {
    const d = Object.getOwnPropertyDescriptor(cls.prototype, name)
    return d.get || d.set
  }))
}

function sseStream (chunks) {
  const enc = new TextEncoder()
  return new ReadableStream({
    start (c) {
      for (const part of chunks) c.enqueue(typeof part === 'string' ? enc.encode(part) : part)
      c.close()
    }
  })
}

async function collect (iterable) {
  const out = []
  for await (const x of iterable) out.push(x)
  return out
}

async function rejection (promise) {
  try {
    await promise
  } catch (err) {
    return err
  }
  assert.fail('expected a rejection')
}

describe('the package', () => {
  test('resolves by its own name to the same module as ../client.js', () => {
    assert.equal(pkg.RelayClient, direct.RelayClient)
    assert.equal(pkg.default, pkg.RelayClient)
  })

  test('client.d.ts declares exactly what the module exports', () => {
    assert.deepEqual([...declaredExports()].sort(), Object.keys(pkg).sort())
  })

  test('client.d.ts declares every public RelayClient method, and no other', () => {
    const { methods, fields } = declaredMembers('RelayClient')
    assert.deepEqual([...methods].sort(), [...publicMethods(RelayClient)].sort())
    for (const name of accessors(RelayClient)) assert.ok(fields.has(name), `accessor ${name} not declared`)
    const instance = new RelayClient({ baseUrl: 'http://relay.invalid', storage: null })
    for (const name of Object.keys(instance).filter((k) => !k.startsWith('_'))) {
      assert.ok(fields.has(name), `field ${name} of RelayClient not declared`)
    }
    for (const name of fields) assert.ok(name in instance, `declared ${name} missing at run time`)
  })

  test('client.d.ts declares the RelayError fields', () => {
    const { fields } = declaredMembers('RelayError')
    const err = new RelayError(429, 'slow down', { body: { error: 'slow down', code: 'budget_exceeded' } })
    const own = Object.keys(err).filter((k) => !k.startsWith('_'))
    assert.deepEqual([...fields].sort(), own.sort())
    assert.equal(err.name, 'RelayError')
    assert.equal(err.status, 429)
    assert.equal(err.code, 'budget_exceeded')
    assert.ok(err instanceof Error)
  })

  test('has no runtime dependencies', () => {
    const meta = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'))
    assert.equal(meta.dependencies, undefined)
    assert.equal(meta.peerDependencies, undefined)
    assert.equal(meta.type, 'module')
  })
})

describe('the client without a relay', () => {
  test('rejects a getToken that is no function, and token with getToken', () => {
    assert.throws(() => new RelayClient({ getToken: 'x' }), TypeError)
    assert.throws(() => new RelayClient({ token: 't', getToken: () => 'jwt' }), TypeError)
  })

  test('sends nothing when getToken gives no token, or throws', async () => {
    const sent = []
    const fetch = (url, init) => { sent.push(url); return Promise.reject(new Error('unreachable')) }
    const empty = new RelayClient({ baseUrl: 'http://relay.invalid', fetch, getToken: () => null })
    let err = await rejection(empty.listKeys())
    assert.ok(err instanceof RelayError)
    assert.equal(err.status, 0)
    assert.equal(err.code, 'no_token')
    const failing = new RelayClient({ baseUrl: 'http://relay.invalid', fetch, getToken: async () => { throw new Error('signed out') } })
    err = await rejection(failing.chat({ model: 'gpt-4o-mini', messages: MESSAGES }))
    assert.equal(err.code, 'get_token_failed')
    assert.match(err.message, /signed out/)
    err = await rejection(failing.register())
    assert.equal(err.code, 'not_with_get_token')
    assert.deepEqual(sent, [])
  })

  test('a network failure is a RelayError with status 0', async () => {
    const client = new RelayClient({ baseUrl: 'http://relay.invalid', token: 't', fetch: () => Promise.reject(new TypeError('fetch failed')) })
    const err = await rejection(client.listKeys())
    assert.ok(err instanceof RelayError)
    assert.equal(err.status, 0)
    assert.equal(err.code, null)
  })

  test('keeps the token in the storage it is given', () => {
    const storage = createMemoryStorage()
    const client = new RelayClient({ baseUrl: 'http://relay.invalid', storage, storageKey: 'k' })
    assert.equal(client.token, null)
    client.token = 'abc'
    assert.equal(storage.getItem('k'), 'abc')
    client.clearToken()
    assert.equal(storage.getItem('k'), null)
  })

  test('parseSSE: CRLF, CR, multi-line data, comments, ids, [DONE], split at every byte', async () => {
    const body = '\uFEFFevent: a\r\ndata: {"x":1}\r\n\r\n: keep-alive\rdata: line1\rdata:line2\r\r' +
      'id: 7\nretry: 100\ndata: h\u00e9llo \u2713\n\ndata: [DONE]\n\ndata: after\n\n'
    const bytes = new TextEncoder().encode(body)
    const shape = (evs) => evs.map((e) => [e.event, e.data, e.id, e.retry])
    const whole = shape(await collect(parseSSE(sseStream([bytes]))))
    assert.deepEqual(whole, [
      ['a', '{"x":1}', null, null],
      ['message', 'line1\nline2', null, null],
      ['message', 'h\u00e9llo \u2713', '7', 100]
    ])
    for (let i = 0; i <= bytes.length; i++) {
      assert.deepEqual(shape(await collect(parseSSE(sseStream([bytes.slice(0, i), bytes.slice(i)])))), whole, `split at ${i}`)
    }
    const all = await collect(parseSSE(sseStream([bytes]), { stopOnDone: false }))
    assert.deepEqual(all.slice(-2).map((e) => e.data), ['[DONE]', 'after'])
    assert.deepEqual(all[0].json, { x: 1 })
  })

  test('extractText reads every provider shape', () => {
    assert.equal(extractText({ choices: [{ delta: { content: 'a' } }] }), 'a')
    assert.equal(extractText({ choices: [{ message: { content: 'b' } }] }), 'b')
    assert.equal(extractText({ type: 'content_block_delta', delta: { type: 'text_delta', text: 'c' } }), 'c')
    assert.equal(extractText({ type: 'message', content: [{ type: 'text', text: 'd' }] }), 'd')
    assert.equal(extractText({ type: 'response.output_text.delta', delta: 'e' }), 'e')
    assert.equal(extractText({ candidates: [{ content: { parts: [{ text: 'f' }, { text: 'x', thought: true }] } }] }), 'f')
    assert.equal(extractText(null), '')
    assert.equal(extractText({ unrelated: true }), '')
  })
})

describe('against a relay', () => {
  const client = () => new RelayClient({ baseUrl: RELAY_URL, token: RELAY_TOKEN })

  test('registers once and reuses the token (concurrent callers share one registration)', online, async () => {
    let posts = 0
    const fetch = (url, init) => {
      if (String(url).endsWith('/users') && init.method === 'POST') posts++
      return globalThis.fetch(url, init)
    }
    const storage = createMemoryStorage()
    const relay = new RelayClient({ baseUrl: RELAY_URL, appId: 'js-package-test', storage, fetch })
    const [a, b] = await Promise.all([relay.ensureToken(), relay.ensureToken()])
    assert.equal(a, b)
    assert.equal(posts, 1)
    assert.equal(storage.getItem('byok-relay-token'), a)
    assert.equal(await relay.ensureToken(), a)
    assert.equal(posts, 1)
    const again = new RelayClient({ baseUrl: RELAY_URL, storage })
    assert.equal(again.token, a)
    await relay.deleteUser()
    assert.equal(relay.token, null)
  })

  test('stores, lists and deletes keys', online, async () => {
    const relay = client()
    assert.deepEqual(await relay.storeKey('openai', OPENAI_KEY), { ok: true, provider: 'openai' })
    assert.deepEqual(await relay.storeKey('anthropic', ANTHROPIC_KEY), { ok: true, provider: 'anthropic' })
    await relay.storeKey('google', 'AIza-test-js-0003')
    const keys = await relay.listKeys()
    assert.deepEqual([...keys.providers].sort(), ['anthropic', 'google', 'openai'])
    const hints = Object.fromEntries(keys.keys.map((k) => [k.provider, k.hint]))
    assert.equal(hints.openai, OPENAI_KEY.slice(-4))
    assert.ok(!JSON.stringify(keys).includes(OPENAI_KEY), 'a stored key came back')
    assert.deepEqual(await relay.deleteKey('google'), { ok: true, deleted: true })
    assert.ok(!(await relay.listKeys()).providers.includes('google'))
  })

  test('chat through the unified route', online, async () => {
    const relay = client()
    await relay.storeKey('openai', OPENAI_KEY)
    const answer = await relay.chat({ model: 'openai/gpt-4o-mini', messages: MESSAGES })
    const text = extractText(answer)
    assert.ok(text.length > 0)
    if (REPLY) assert.equal(text, REPLY)
  })

  test('streams OpenAI chat, Anthropic messages and the Responses API in several events', online, async () => {
    const relay = client()
    await relay.storeKey('openai', OPENAI_KEY)
    await relay.storeKey('anthropic', ANTHROPIC_KEY)
    const chat = []
    for await (const ev of relay.stream('openai/v1/chat/completions', { model: 'gpt-4o-mini', stream: true, messages: MESSAGES })) {
      const t = extractText(ev.json)
      if (t) chat.push(t)
    }
    const anthropic = await collect(relay.streamText({ model: 'anthropic/claude-3-5-haiku-20241022', max_tokens: 64, messages: MESSAGES }))
    const responses = []
    const kinds = new Set()
    for await (const ev of relay.stream('openai/v1/responses', { model: 'gpt-4o-mini', input: 'Say hello', stream: true })) {
      kinds.add(ev.event)
      const t = extractText(ev.json)
      if (t) responses.push(t)
    }
    for (const [name, pieces] of Object.entries({ chat, anthropic, responses })) {
      assert.ok(pieces.length > 1, `${name}: the text came in ${pieces.length} piece(s)`)
      if (REPLY) assert.equal(pieces.join(''), REPLY, name)
    }
    assert.ok(kinds.has('response.completed'), [...kinds].join(', '))
  })

  test('aborting a stream ends it with an AbortError', online, async () => {
    const relay = client()
    await relay.storeKey('openai', OPENAI_KEY)
    const ctrl = new AbortController()
    let pieces = 0
    const err = await rejection((async () => {
      for await (const t of relay.streamText({ model: 'openai/mock-long', messages: MESSAGES }, { signal: ctrl.signal })) {
        if (t && ++pieces === 3) ctrl.abort()
      }
    })())
    assert.equal(err.name, 'AbortError')
    assert.equal(pieces, 3)
  })

  test('errors are RelayErrors with the relay message and status', online, async () => {
    const relay = client()
    let err = await rejection(relay.storeKey('no-such-provider', 'sk-test-x'))
    assert.ok(err instanceof RelayError)
    assert.equal(err.status, 400)
    assert.match(err.message, /provider/i)
    const stranger = new RelayClient({ baseUrl: RELAY_URL, token: 'not-a-relay-token' })
    err = await rejection(stranger.listKeys())
    assert.equal(err.status, 401)
    assert.ok(err.message.length > 0)
    // the provider's own error passes through (the mock's 401 for a key it rejects)
    const bad = new RelayClient({ baseUrl: RELAY_URL })
    await bad.ensureToken()
    await bad.storeKey('openai', 'sk-test-mock-401-js')
    err = await rejection(bad.chat({ model: 'openai/gpt-4o-mini', messages: MESSAGES }))
    assert.equal(err.status, 401)
    assert.match(err.message, /API key/)
    await bad.deleteUser()
  })

  test('getToken is asked before every request and sent as a Bearer token', online, async () => {
    let calls = 0
    const seen = []
    const fetch = (url, init) => { seen.push(init.headers); return globalThis.fetch(url, init) }
    const relay = new RelayClient({ baseUrl: RELAY_URL, fetch, getToken: async () => { calls++; return RELAY_TOKEN } })
    assert.equal(await relay.ensureToken(), RELAY_TOKEN)
    await relay.storeKey('openai', OPENAI_KEY)
    const keys = await relay.listKeys()
    assert.ok(keys.providers.includes('openai'))
    assert.equal(calls, 3)
    assert.ok(seen.every((h) => h.authorization === `Bearer ${RELAY_TOKEN}` && !('x-relay-token' in h)))
    const err = await rejection(relay.rotateToken())
    assert.equal(err.code, 'not_with_get_token')
  })

  test('scoped tokens: mint, use, list, revoke', online, async () => {
    const owner = client()
    await owner.storeKey('openai', OPENAI_KEY)
    const scoped = await owner.createScopedToken({ label: 'js-test', providers: ['openai'], ttl_s: 600, budget: { requests: 5 } })
    assert.equal(typeof scoped.token, 'string')
    const page = new RelayClient({ baseUrl: RELAY_URL, token: scoped.token })
    assert.ok(extractText(await page.chat({ model: 'openai/gpt-4o-mini', messages: MESSAGES })).length > 0)
    const refused = await rejection(page.chat({ model: 'anthropic/claude-3-5-haiku-20241022', max_tokens: 16, messages: MESSAGES }))
    assert.ok(refused instanceof RelayError)
    assert.equal(refused.status, 403)
    const listed = (await owner.listTokens()).tokens.find((t) => t.id === scoped.id)
    assert.equal(listed.usage.requests, 1)
    await owner.revokeToken(scoped.id)
    const gone = await rejection(page.chat({ model: 'openai/gpt-4o-mini', messages: MESSAGES }))
    assert.equal(gone.status, 401)
  })

  test('stats and models', online, async () => {
    const relay = client()
    const stats = await relay.stats()
    assert.ok(stats.total >= 1)
    const models = await relay.models()
    assert.ok(models.providers.includes('openai'))
  })
})
