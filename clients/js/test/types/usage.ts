// Type-checked (never run) by `npm run typecheck` / tests/test_js_package.py: what an
// app written in TypeScript does with the package, against client.d.ts. Each
// `@ts-expect-error` line is a misuse the declarations must reject; should a declaration
// loosen to `any`, that directive goes unused and tsc fails.
import RelayClientDefault, {
  BEARER_HEADER,
  createMemoryStorage,
  DEFAULT_STORAGE_KEY,
  extractText,
  parseSSE,
  RelayClient,
  RelayError,
  TOKEN_HEADER,
  type ChatParams,
  type GetToken,
  type KeyList,
  type RelayClientOptions,
  type SSEEvent,
  type TokenStorage
} from 'byok-relay-client'
import { RelayClient as ByPath } from 'byok-relay-client/client.js'

const headerNames: string[] = [TOKEN_HEADER, BEARER_HEADER, DEFAULT_STORAGE_KEY]
const sameClass: typeof RelayClient = RelayClientDefault
const alsoSame: typeof RelayClient = ByPath

export async function app (pastedKey: string, output: { textContent: string }): Promise<void> {
  const relay = new RelayClient({ baseUrl: 'https://relay.example.com', appId: 'my-app' })
  const token: string = await relay.ensureToken()
  const current: string | null = relay.token
  relay.token = null
  relay.token = token
  const stored: { ok: boolean; provider: string } = await relay.storeKey('openai', pastedKey)
  await relay.storeKey('openai-compatible', pastedKey, { baseUrl: 'https://llm.example.com/v1' })
  const keys: KeyList = await relay.listKeys()
  const providers: string[] = keys.providers
  const hint: string = keys.keys[0].hint
  const deleted: boolean = (await relay.deleteKey('anthropic')).deleted

  const params: ChatParams = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hi' }] }
  const ctrl = new AbortController()
  for await (const ev of relay.streamChat(params, { signal: ctrl.signal })) {
    const e: SSEEvent = ev
    output.textContent += extractText(e.json)
  }
  for await (const piece of relay.streamText({ model: 'anthropic/claude-3-5-haiku', max_tokens: 64 })) {
    output.textContent += piece
  }
  for await (const ev of relay.stream('openai/v1/responses', { model: 'gpt-4o-mini', input: 'Hi', stream: true },
    { headers: { 'openai-beta': 'x' }, stopOnDone: false, throwOnError: false })) {
    const data: string = ev.data
    const id: string | null = ev.id
  }
  const answer = await relay.chat(params)
  const res: Response = await relay.request('openai/v1/models', undefined, { method: 'GET', raw: true })
  const json = await relay.request(null, { model: 'gpt-4o', messages: [] })
  const scoped = await relay.createScopedToken({ providers: ['openai'], origins: ['https://app.example.com'], ttl_s: 900, budget: { requests: 20 } })
  const scopedToken: string = scoped.token
  const live = (await relay.listTokens()).tokens.map((t) => t.usage.output_tokens)
  await relay.setBudget({ window: 'day', tokens: 200000, providers: { openai: { requests: 500 } } })
  await relay.setBudget(null)
  await relay.revokeToken(scoped.id)
  const rotated: string = await relay.rotateToken()
  const expiresAt: number | null = relay.expiresAt

  try {
    await relay.chat({ model: 'gpt-4o' })
  } catch (err) {
    if (err instanceof RelayError) {
      const status: number = err.status
      const code: string | null = err.code
      const reqId: string | null = err.requestId
      const headers: Headers | null = err.headers
      if (err.code === 'budget_exceeded' || err.code === 'not_with_get_token') throw err
    }
  }

  // The app's own sign-in JWT instead of a relay token.
  const getToken: GetToken = async () => 'eyJ...'
  const signedIn = new RelayClient({ baseUrl: 'https://relay.example.com', getToken })
  const fromSync = new RelayClient({ getToken: () => null })
  const storage: TokenStorage = createMemoryStorage()
  const opts: RelayClientOptions = { storage, storageKey: 'k', fetch: globalThis.fetch, token: 'scoped' }
  const inMemory = new RelayClient({ storage: null })
  const noOptions = new RelayClient()

  const body = new ReadableStream<Uint8Array>()
  for await (const ev of parseSSE(body, { stopOnDone: true, signal: ctrl.signal })) {
    const retry: number | null = ev.retry
  }
  const built = new RelayError(0, 'offline', { code: 'no_token', cause: new Error('x') })

  // --- misuse the declarations must reject ---
  // @ts-expect-error baseUrl is a string
  new RelayClient({ baseUrl: 8787 })
  // @ts-expect-error getToken is a function
  new RelayClient({ getToken: 'eyJ...' })
  // @ts-expect-error no such option
  new RelayClient({ baseURL: 'https://relay.example.com' })
  // @ts-expect-error storeKey needs the key
  await relay.storeKey('openai')
  // @ts-expect-error ensureToken resolves to a string
  const n: number = await relay.ensureToken()
  // @ts-expect-error a chat needs a model
  await relay.chat({ messages: [] })
  // @ts-expect-error the budget window is hour, day or month
  await relay.setBudget({ window: 'week' })
  // @ts-expect-error status is a number
  const s: string = built.status
  for await (const piece of relay.streamText(params)) {
    // @ts-expect-error streamText yields strings
    const count: number = piece
  }
  // @ts-expect-error streamChat yields SSE events, not strings
  for await (const ev of relay.streamChat(params)) { const t: string = ev }
  // @ts-expect-error createMemoryStorage takes nothing
  createMemoryStorage('x')
  // @ts-expect-error extractText returns a string
  const e: number = extractText({})
}
