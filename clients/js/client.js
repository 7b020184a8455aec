/**
 * byok-relay browser client — an ES module with no dependencies and no build step.
 *
 * Served by the relay at `GET /client.js`:
 *
 * ```js
 * import { RelayClient } from 'https://relay.example.com/client.js'
 *
 * const relay = new RelayClient({ baseUrl: 'https://relay.example.com', appId: 'my-app' })
 * await relay.ensureToken()                       // registers once, then reuses the stored token
 * await relay.storeKey('openai', userPastedKey)  // stored encrypted by the relay, never returned
 *
 * const ctrl = new AbortController()
 * for await (const ev of relay.streamChat({ model: 'gpt-4o-mini', messages }, { signal: ctrl.signal })) {
 *   output.textContent += extractText(ev.json)
 * }
 * ```
 *
 * Or, when the relay trusts your identity provider (`JWT_ISSUERS_FILE`, SPEC §10), with the
 * signed-in user's own JWT instead of a relay token: no registration, nothing in localStorage,
 * and `getToken` is asked before every request, so a refreshed token is always the one sent.
 *
 * ```js
 * const relay = new RelayClient({
 *   baseUrl: 'https://relay.example.com',
 *   getToken: () => auth0.getTokenSilently()       // or Clerk's session.getToken(), Firebase's
 * })                                               // user.getIdToken(), Supabase's access_token
 * await relay.storeKey('openai', userPastedKey)    // the user is created on first use
 * ```
 *
 * @module byok-relay/client
 */

/** Default storage key under which the relay token is kept. */
export const DEFAULT_STORAGE_KEY = 'byok-relay-token'

/** Header that carries the relay token. */
export const TOKEN_HEADER = 'x-relay-token'

/** Header that carries the token returned by `getToken` (as `Bearer <token>`). */
export const BEARER_HEADER = 'authorization'

/**
 * @typedef {() => (string|null|undefined|Promise<string|null|undefined>)} GetToken
 * Returns the signed-in user's current JWT from your identity provider (e.g.
 * `() => auth0.getTokenSilently()`, `() => clerk.session.getToken()`,
 * `() => auth.currentUser.getIdToken()` for Firebase). Called with no arguments before every
 * request that needs a credential; the token is sent as `Authorization: Bearer <token>` and
 * never stored. Throwing, or returning an empty value (no one signed in), fails that call
 * with a {@link RelayError} of status 0 (`code` `'get_token_failed'` / `'no_token'`) before
 * anything is sent.
 */

/**
 * @typedef {object} TokenStorage
 * Minimal Web Storage subset (`localStorage`, `sessionStorage` or your own object).
 * @property {(key: string) => (string|null)} getItem
 * @property {(key: string, value: string) => void} setItem
 * @property {(key: string) => void} removeItem
 */

/**
 * @typedef {object} SSEEvent
 * One Server-Sent Event.
 * @property {string} event   Event type (`'message'` when the stream named none).
 * @property {string} data    The data lines joined with `'\n'`.
 * @property {any} json       `data` parsed as JSON, or `null` when it is not JSON.
 * @property {string|null} id Last event id seen so far, if the stream sent one.
 * @property {number|null} retry Reconnection time (ms) if the stream sent one.
 */

/**
 * @typedef {object} RequestOptions
 * @property {string} [method]  HTTP method; default `POST` with a body, `GET` without.
 * @property {AbortSignal} [signal]  Abort the request (and, for streams, the upstream generation).
 * @property {Record<string, string>} [headers]  Extra headers (e.g. `anthropic-version`).
 * @property {boolean} [raw]  `request()` only: resolve with the `Response` instead of parsed JSON.
 * @property {boolean} [auth]  Send the credential: the relay token, or `getToken`'s (default `true`).
 */

/**
 * @typedef {object} StreamOptions
 * @property {string} [method]
 * @property {AbortSignal} [signal]
 * @property {Record<string, string>} [headers]
 * @property {boolean} [stopOnDone]  Stop at a `data: [DONE]` line (default `true`).
 * @property {boolean} [throwOnError]  Throw a {@link RelayError} on an `event: error` (default `true`).
 */

/**
 * @typedef {object} KeyInfo
 * @property {string} provider
 * @property {string} hint  Last 4 characters of the stored key.
 * @property {number|string|null} created_at
 * @property {number|string|null} updated_at
 * @property {number|string|null} last_used_at
 */

/**
 * @typedef {object} KeyList
 * @property {string[]} providers
 * @property {KeyInfo[]} keys
 */

/**
 * Error thrown for every non-2xx answer (from the relay or passed through from a provider)
 * and for an `event: error` inside a stream.
 */
export class RelayError extends Error {
  /**
   * @param {number} status  HTTP status; 0 when there was no answer: a network failure, or a
   *   call the client did not send (`getToken` failed, see {@link RelayError#code}).
   * @param {string} message  The relay's `{"error": "..."}` text, or the provider's message.
   * @param {{ body?: any, headers?: Headers, requestId?: string|null, cause?: unknown, code?: string }} [extra]
   */
  constructor (status, message, extra = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause })
    this.name = 'RelayError'
    /** @type {number} */
    this.status = status
    /** @type {any} Parsed error body (or text) as received. */
    this.body = extra.body === undefined ? null : extra.body
    /** @type {Headers|null} */
    this.headers = extra.headers || null
    /** @type {string|null} The relay's `X-Relay-Request-Id`, when exposed. */
    this.requestId = extra.requestId || null
    /**
     * @type {string|null} Machine-readable reason: the relay's `body.code` (e.g.
     * `'budget_exceeded'`), or the client's own for a call it refused to send:
     * `'get_token_failed'`, `'no_token'`, `'not_with_get_token'`.
     */
    const b = this.body
    this.code = extra.code || (b && typeof b === 'object' && typeof b.code === 'string' ? b.code : null)
  }
}

/** @returns {TokenStorage} */
export function createMemoryStorage () {
  /** @type {Map<string, string>} */
  const m = new Map()
  return {
    getItem: (k) => (m.has(k) ? /** @type {string} */ (m.get(k)) : null),
    setItem: (k, v) => { m.set(k, String(v)) },
    removeItem: (k) => { m.delete(k) }
  }
}

/** @returns {TokenStorage} */
function defaultStorage () {
  try {
    if (typeof localStorage !== 'undefined' && localStorage && typeof localStorage.getItem === 'function') {
      return localStorage
    }
  } catch (_) {
    // Access to localStorage can throw (sandboxed iframes, blocked storage): fall through.
  }
  return createMemoryStorage()
}

/**
 * Pull the human-readable message out of an error body: the relay's `{"error": "..."}`,
 * OpenAI/Anthropic `{"error": {"message": "..."}}`, Gemini `[{"error": {...}}]`, or plain text.
 * @param {any} body
 * @param {number} status
 * @returns {string}
 */
function errorMessage (body, status) {
  let b = body
  if (Array.isArray(b) && b.length) b = b[0]
  if (b && typeof b === 'object') {
    const e = b.error
    if (typeof e === 'string' && e) return e
    if (e && typeof e === 'object') {
      if (typeof e.message === 'string' && e.message) return e.message
      if (typeof e.type === 'string' && e.type) return e.type
    }
    if (typeof b.message === 'string' && b.message) return b.message
    if (typeof b.detail === 'string' && b.detail) return b.detail
  }
  if (typeof b === 'string' && b.trim()) return b.trim().slice(0, 500)
  return `HTTP ${status}`
}

/**
 * Build a RelayError from a non-OK Response (reads its body).
 * @param {Response} res
 * @returns {Promise<RelayError>}
 */
async function errorFromResponse (res) {
  let text = ''
  try { text = await res.text() } catch (_) { /* body unreadable */ }
  /** @type {any} */
  let body = text
  try { body = text ? JSON.parse(text) : null } catch (_) { /* not JSON */ }
  return new RelayError(res.status, errorMessage(body, res.status), {
    body,
    headers: res.headers,
    requestId: res.headers.get('x-relay-request-id')
  })
}

/**
 * @param {string} data
 * @returns {any}
 */
function tryJSON (data) {
  if (!data) return null
  const c = data.charCodeAt(0)
  // Quick reject for obviously non-JSON data such as "[DONE]" or plain text.
  if (c !== 123 /* { */ && c !== 91 /* [ */ && c !== 34 /* " */ && !(c >= 48 && c <= 57) && c !== 45 &&
      data !== 'true' && data !== 'false' && data !== 'null') return null
  try { return JSON.parse(data) } catch (_) { return null }
}

/**
 * The error to throw for an aborted signal (its reason when that is an Error).
 * @param {AbortSignal} signal
 * @returns {Error}
 */
function abortReason (signal) {
  return signal.reason instanceof Error ? signal.reason : new DOMException('Aborted', 'AbortError')
}

/**
 * Incremental Server-Sent-Events parser (WHATWG rules): accepts `\n`, `\r\n` and `\r` line ends
 * (even when split across chunks), multi-line `data:`, comments, `event:`, `id:`, `retry:` and
 * UTF-8 split across chunks. Stops at a `data: [DONE]` line unless `stopOnDone` is false.
 * Cancels the stream's reader when the consumer stops early (break / return / abort).
 *
 * @param {ReadableStream<Uint8Array>} readableStream  e.g. `response.body`
 * @param {{ signal?: AbortSignal, stopOnDone?: boolean }} [options]
 * @returns {AsyncGenerator<SSEEvent, void, undefined>}
 */
export async function * parseSSE (readableStream, options = {}) {
  const { signal, stopOnDone = true } = options
  const reader = readableStream.getReader()
  const decoder = new TextDecoder('utf-8')
  let buf = ''
  let first = true
  let eventType = ''
  /** @type {string[]} */
  let dataLines = []
  let hasData = false
  /** @type {string|null} */
  let lastId = null
  /** @type {number|null} */
  let retry = null
  let finished = false
  /** @type {SSEEvent[]} */
  const ready = []

  /** @param {string} line */
  const onLine = (line) => {
    if (line === '') {
      if (hasData) {
        const data = dataLines.join('\n')
        ready.push({ event: eventType || 'message', data, json: tryJSON(data), id: lastId, retry })
      }
      eventType = ''
      dataLines = []
      hasData = false
      return
    }
    if (line.charCodeAt(0) === 58 /* : */) return // comment / keep-alive
    const colon = line.indexOf(':')
    let field = line
    let value = ''
    if (colon !== -1) {
      field = line.slice(0, colon)
      value = line.slice(colon + 1)
      if (value.charCodeAt(0) === 32 /* space */) value = value.slice(1)
    }
    switch (field) {
      case 'event': eventType = value; break
      case 'data': dataLines.push(value); hasData = true; break
      case 'id': if (!value.includes('\0')) lastId = value; break
      case 'retry': if (/^\d+$/.test(value)) retry = Number(value); break
      default: break // unknown field: ignored, as the spec says
    }
  }

  /**
   * Split complete lines out of `buf`. A trailing `\r` is kept back (it may be half of `\r\n`)
   * unless `final`.
   * @param {boolean} final
   */
  const drain = (final) => {
    let start = 0
    const n = buf.length
    for (let i = 0; i < n; i++) {
      const ch = buf.charCodeAt(i)
      if (ch === 10 /* \n */) {
        onLine(buf.slice(start, i))
        start = i + 1
      } else if (ch === 13 /* \r */) {
        if (i + 1 < n) {
          onLine(buf.slice(start, i))
          if (buf.charCodeAt(i + 1) === 10) i++
          start = i + 1
        } else if (final) {
          onLine(buf.slice(start, i))
          start = n
        } else {
          break // wait for the next chunk to know whether "\n" follows
        }
      }
    }
    buf = buf.slice(start)
  }

  const onAbort = () => { reader.cancel().catch(() => {}) }
  if (signal) {
    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, { once: true })
  }

  try {
    while (true) {
      if (signal && signal.aborted) {
        throw abortReason(signal)
      }
      const { done, value } = await reader.read()
      if (signal && signal.aborted) {
        // Cancelling the reader on abort resolves the pending read as "done": that is no
        // normal end of the stream.
        throw abortReason(signal)
      }
      if (done) {
        buf += decoder.decode()
        if (first && buf.charCodeAt(0) === 0xfeff) buf = buf.slice(1)
        drain(true)
        if (buf !== '') { onLine(buf); buf = '' }
        // Lenient: dispatch a last event that lacked its terminating blank line.
        onLine('')
      } else {
        buf += decoder.decode(value, { stream: true })
        if (first && buf.length) {
          if (buf.charCodeAt(0) === 0xfeff) buf = buf.slice(1)
          first = false
        }
        drain(false)
      }
      while (ready.length) {
        if (signal && signal.aborted) {
          throw abortReason(signal)
        }
        const ev = /** @type {SSEEvent} */ (ready.shift())
        if (stopOnDone && ev.data === '[DONE]') {
          finished = true
          return
        }
        yield ev
      }
      if (done) {
        finished = true
        return
      }
    }
  } finally {
    if (signal) signal.removeEventListener('abort', onAbort)
    if (!finished) {
      // The consumer stopped early (break, throw, abort): close the connection so the relay
      // cancels the upstream generation at once.
      try { await reader.cancel() } catch (_) { /* already closed */ }
    }
    try { reader.releaseLock() } catch (_) { /* ignore */ }
  }
}

/**
 * The text delta carried by one streamed event (or a whole non-streamed answer), for
 * OpenAI-style chat chunks, Anthropic Messages events and Gemini candidates. `''` when none.
 * @param {any} json  Parsed event data (`ev.json`).
 * @returns {string}
 */
export function extractText (json) {
  if (!json || typeof json !== 'object') return ''
  // Anthropic: content_block_delta { delta: { type: 'text_delta', text } }
  if (json.type === 'content_block_delta') {
    return (json.delta && typeof json.delta.text === 'string') ? json.delta.text : ''
  }
  // Anthropic: non-streamed message { content: [{type:'text', text}] }
  if (json.type === 'message' && Array.isArray(json.content)) {
    return json.content.map((/** @type {any} */ b) => (b && typeof b.text === 'string' ? b.text : '')).join('')
  }
  // OpenAI-compatible chat: choices[].delta.content (stream) or choices[].message.content
  if (Array.isArray(json.choices) && json.choices.length) {
    const c = json.choices[0] || {}
    if (c.delta && typeof c.delta.content === 'string') return c.delta.content
    if (c.message && typeof c.message.content === 'string') return c.message.content
    if (typeof c.text === 'string') return c.text // legacy completions
    return ''
  }
  // OpenAI Responses API stream: { type: 'response.output_text.delta', delta }
  if (json.type === 'response.output_text.delta' && typeof json.delta === 'string') return json.delta
  // Gemini: candidates[].content.parts[].text
  if (Array.isArray(json.candidates) && json.candidates.length) {
    const parts = json.candidates[0] && json.candidates[0].content && json.candidates[0].content.parts
    if (Array.isArray(parts)) {
      return parts.map((/** @type {any} */ p) => (p && typeof p.text === 'string' && !p.thought ? p.text : '')).join('')
    }
  }
  return ''
}

/**
 * Browser client for a byok-relay server.
 */
export class RelayClient {
  /**
   * @param {object} options
   * @param {string} [options.baseUrl]  Relay origin (default: the page's origin).
   * @param {string} [options.appId]  Your app's id, sent on registration (default `'app'`).
   * @param {TokenStorage|null} [options.storage]  Where the token is kept (default `localStorage`,
   *   or memory where that is unavailable; `null` = memory).
   * @param {string} [options.storageKey]  Storage key (default `'byok-relay-token'`).
   * @param {typeof fetch} [options.fetch]  fetch implementation (default `globalThis.fetch`).
   * @param {string} [options.token]  Start with this token, e.g. a scoped token handed to the
   *   page by your backend (SPEC §9); kept in memory unless `storage` is given, so it never
   *   overwrites a relay token in localStorage.
   * @param {GetToken} [options.getToken]  Use the signed-in user's JWT from your identity
   *   provider as the credential (SPEC §10) instead of a relay token: called before every
   *   request, sent as `Authorization: Bearer <token>`, never stored. The relay creates the
   *   user on first use, so there is nothing to register: `register()`, `rotateToken()` and
   *   `revokeToken()` (without an id) throw a {@link RelayError} with `code`
   *   `'not_with_get_token'`, `ensureToken()` returns a fresh token from `getToken`, and
   *   `storage`/`storageKey` are unused (the client keeps no token). Not combinable with `token`.
   */
  constructor ({
    baseUrl,
    appId = 'app',
    storage,
    storageKey = DEFAULT_STORAGE_KEY,
    fetch: fetchImpl,
    token,
    getToken
  } = {}) {
    if (getToken != null) {
      if (typeof getToken !== 'function') throw new TypeError('RelayClient: getToken must be a function returning the token (or a promise of it)')
      if (token) throw new TypeError('RelayClient: pass either token or getToken, not both')
      storage = null // the identity provider's token is never stored
    }
    if (storage === undefined) storage = token ? createMemoryStorage() : defaultStorage()
    let base = baseUrl
    if (!base) {
      base = (typeof location !== 'undefined' && location.origin && location.origin !== 'null') ? location.origin : ''
    }
    /** @type {string} */
    this.baseUrl = String(base).replace(/\/+$/, '')
    /** @type {string} */
    this.appId = appId
    /** @type {TokenStorage} */
    this.storage = storage || createMemoryStorage()
    /** @type {string} */
    this.storageKey = storageKey
    const f = fetchImpl || globalThis.fetch
    if (typeof f !== 'function') throw new TypeError('RelayClient: no fetch implementation available')
    /** @type {typeof fetch} */
    this._fetch = (input, init) => f.call(globalThis, input, init)
    /** @type {string|null} token kept in memory when storage fails */
    this._memToken = null
    /** @type {number|null} */
    this.expiresAt = null
    /** @type {Promise<string>|null} */
    this._registering = null
    /** @type {GetToken|null} asked for the credential before every request, when set */
    this.getToken = getToken || null
    if (token) this.token = token
  }

  /** The current relay token, or `null`. @returns {string|null} */
  get token () {
    try {
      const t = this.storage.getItem(this.storageKey)
      if (t) return t
    } catch (_) { /* storage unavailable */ }
    return this._memToken
  }

  /** @param {string|null} value */
  set token (value) {
    this._memToken = value || null
    try {
      if (value) this.storage.setItem(this.storageKey, value)
      else this.storage.removeItem(this.storageKey)
    } catch (_) { /* storage unavailable: kept in memory */ }
  }

  /** Forget the stored token locally (the relay is not told; see {@link revokeToken}). */
  clearToken () { this.token = null }

  /**
   * Ask `getToken` for the current JWT; a RelayError (status 0) when it fails or gives none.
   * @returns {Promise<string>}
   */
  async _freshToken () {
    const getToken = /** @type {GetToken} */ (this.getToken)
    /** @type {any} */
    let t
    try {
      t = await getToken()
    } catch (err) {
      const why = err && /** @type {any} */ (err).message ? /** @type {any} */ (err).message : String(err)
      throw new RelayError(0, `getToken() failed, so the request was not sent: ${why}`, { cause: err, code: 'get_token_failed' })
    }
    if (typeof t === 'string') t = t.trim()
    if (!t || typeof t !== 'string') {
      const got = t === '' ? 'an empty string' : (t == null ? String(t) : `a value of type ${typeof t}`)
      throw new RelayError(0, `getToken() returned ${got} instead of a token (is the user signed in?), so the request was not sent`, { code: 'no_token' })
    }
    return t
  }

  /**
   * Refuse a relay-token operation in `getToken` mode.
   * @param {string} what
   */
  _notWithGetToken (what) {
    if (this.getToken) {
      throw new RelayError(0, `RelayClient: ${what} is not used with getToken: the identity provider owns the credential (the relay creates the user on first use)`, { code: 'not_with_get_token' })
    }
  }

  /** Before a call that needs a credential: register first if there is none (not with getToken). */
  async _ready () {
    if (!this.getToken) await this.ensureToken()
  }

  /**
   * @param {string} path
   * @returns {string}
   */
  _url (path) {
    if (/^https?:\/\//i.test(path)) return path
    return this.baseUrl + (path.startsWith('/') ? path : '/' + path)
  }

  /**
   * Map `request()`/`stream()`'s first argument to a relay path:
   * `null`/`''` → `/relay` (unified route); `'openai/v1/chat/completions'` → `/relay/openai/v1/chat/completions`;
   * a path starting with `/` (e.g. `/relay/anthropic/v1/messages`, `/stats`) is used as is.
   * @param {string|null|undefined} pathOrProvider
   * @returns {string}
   */
  _relayPath (pathOrProvider) {
    if (!pathOrProvider) return '/relay'
    if (pathOrProvider.startsWith('/') || /^https?:\/\//i.test(pathOrProvider)) return pathOrProvider
    return '/relay/' + pathOrProvider
  }

  /**
   * Low-level fetch against the relay; throws RelayError on a non-2xx answer.
   * @param {string} path
   * @param {any} body
   * @param {RequestOptions & { accept?: string }} [opts]
   * @returns {Promise<Response>}
   */
  async _send (path, body, opts = {}) {
    const { method, signal, headers = {}, auth = true, accept } = opts
    /** @type {Record<string, string>} */
    const h = {}
    /** @type {BodyInit|undefined} */
    let payload
    if (body !== undefined && body !== null) {
      const isRaw = (typeof body === 'string') ||
        (typeof Blob !== 'undefined' && body instanceof Blob) ||
        (typeof FormData !== 'undefined' && body instanceof FormData) ||
        (typeof URLSearchParams !== 'undefined' && body instanceof URLSearchParams) ||
        (typeof ArrayBuffer !== 'undefined' && (body instanceof ArrayBuffer || ArrayBuffer.isView(body)))
      if (isRaw) {
        payload = /** @type {BodyInit} */ (body)
      } else {
        payload = JSON.stringify(body)
        h['content-type'] = 'application/json'
      }
    }
    if (accept) h.accept = accept
    if (auth) {
      if (this.getToken) {
        h[BEARER_HEADER] = 'Bearer ' + await this._freshToken()
      } else {
        const t = this.token
        if (t) h[TOKEN_HEADER] = t
      }
    }
    for (const [k, v] of Object.entries(headers)) h[k.toLowerCase()] = v
    let res
    try {
      res = await this._fetch(this._url(path), {
        method: method || (payload === undefined ? 'GET' : 'POST'),
        headers: h,
        body: payload,
        signal,
        credentials: 'omit',
        cache: 'no-store'
      })
    } catch (err) {
      if (err && /** @type {any} */ (err).name === 'AbortError') throw err
      throw new RelayError(0, `network error talking to the relay: ${err && /** @type {any} */ (err).message ? /** @type {any} */ (err).message : err}`, { cause: err })
    }
    if (!res.ok) throw await errorFromResponse(res)
    return res
  }

  /**
   * @param {Response} res
   * @returns {Promise<any>}
   */
  async _parse (res) {
    const text = await res.text()
    if (!text) return null
    const ct = res.headers.get('content-type') || ''
    if (ct.includes('json')) return JSON.parse(text)
    const j = tryJSON(text)
    return j === null ? text : j
  }

  /**
   * Register a new relay user (`POST /users`) and store its token.
   * Throws a {@link RelayError} (`code` `'not_with_get_token'`) with `getToken`: then the
   * relay creates the user on first use.
   * @param {{ appId?: string, headers?: Record<string, string> }} [options]
   * @returns {Promise<string>} the new token
   */
  async register (options = {}) {
    this._notWithGetToken('register()')
    const res = await this._send('/users', { app_id: options.appId || this.appId }, {
      auth: false, headers: options.headers
    })
    const data = await this._parse(res)
    if (!data || typeof data.token !== 'string') throw new RelayError(res.status, 'relay answered /users without a token', { body: data })
    this.token = data.token
    this.expiresAt = data.expires_at == null ? null : Number(data.expires_at)
    return data.token
  }

  /**
   * Return the stored token, registering first only when none is stored.
   * Concurrent callers share one registration. With `getToken`: a fresh token from it
   * (nothing is registered or stored).
   * @returns {Promise<string>}
   */
  async ensureToken () {
    if (this.getToken) return this._freshToken()
    const t = this.token
    if (t) return t
    if (!this._registering) {
      this._registering = this.register().finally(() => { this._registering = null })
    }
    return this._registering
  }

  /**
   * Store (or replace) the user's key for a provider. `baseUrl` is for providers that take one
   * (e.g. `openai-compatible`).
   * @param {string} provider
   * @param {string} key
   * @param {{ baseUrl?: string, signal?: AbortSignal }} [options]
   * @returns {Promise<{ ok: boolean, provider: string }>}
   */
  async storeKey (provider, key, { baseUrl, signal } = {}) {
    await this._ready()
    /** @type {Record<string, string>} */
    const body = { key }
    if (baseUrl) body.base_url = baseUrl
    const res = await this._send(`/keys/${encodeURIComponent(provider)}`, body, { signal })
    return this._parse(res)
  }

  /**
   * Which providers have a stored key (values are never returned).
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<KeyList>}
   */
  async listKeys ({ signal } = {}) {
    const res = await this._send('/keys', undefined, { method: 'GET', signal })
    const data = await this._parse(res)
    return {
      ...(data && typeof data === 'object' ? data : {}),
      providers: Array.isArray(data && data.providers) ? data.providers : [],
      keys: Array.isArray(data && data.keys) ? data.keys : []
    }
  }

  /**
   * @param {string} provider
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<{ ok: boolean, deleted: boolean }>}
   */
  async deleteKey (provider, { signal } = {}) {
    const res = await this._send(`/keys/${encodeURIComponent(provider)}`, undefined, { method: 'DELETE', signal })
    return this._parse(res)
  }

  /**
   * Mint a scoped token (`POST /tokens`, SPEC §9) for one page, tab or job: limited to
   * `providers`, `models` (globs), `origins`, `ips` (CIDRs), a lifetime (`ttl_s`, default
   * 3600) and a `budget` (`{requests?, tokens?}` over its life). Needs the relay token;
   * the scoped token is returned, not stored: hand it to the page that needs it.
   * @param {{label?: string, providers?: string[], models?: string[], origins?: string[],
   *   ips?: string[], ttl_s?: number, budget?: {requests?: number, tokens?: number}}} [scope]
   * @returns {Promise<{token: string, id: string, label: string|null, scope: object, expires_at: number}>}
   */
  async createScopedToken (scope = {}, { signal } = {}) {
    return this._parse(await this._send('/tokens', scope, { method: 'POST', signal }))
  }

  /**
   * The live scoped tokens with their usage (`GET /tokens`); never their secrets.
   * @returns {Promise<{tokens: Array<{id: string, label: string|null, scope: object,
   *   created_at: number, expires_at: number, last_used_at: number|null,
   *   usage: {requests: number, input_tokens: number, output_tokens: number}}>}>}
   */
  async listTokens ({ signal } = {}) {
    return this._parse(await this._send('/tokens', undefined, { method: 'GET', signal }))
  }

  /** The owner budget and the current window's usage (`GET /budget`). @returns {Promise<any>} */
  async getBudget ({ signal } = {}) {
    return this._parse(await this._send('/budget', undefined, { method: 'GET', signal }))
  }

  /**
   * Set (replace) the owner budget (`PUT /budget`), e.g.
   * `{window: 'day', tokens: 200000, providers: {openai: {requests: 500}}}`; `null` removes it.
   * @param {{window: 'hour'|'day'|'month', requests?: number, tokens?: number,
   *   providers?: Record<string, {requests?: number, tokens?: number}>}|null} budget
   * @returns {Promise<any>}
   */
  async setBudget (budget, { signal } = {}) {
    if (budget === null) return this._parse(await this._send('/budget', undefined, { method: 'DELETE', signal }))
    return this._parse(await this._send('/budget', budget, { method: 'PUT', signal }))
  }

  /**
   * With a scoped token's `id`: revoke that scoped token (`DELETE /tokens/{id}`).
   * Without: kill the current relay token at once (and every scoped token it minted),
   * and forget it locally; not with `getToken` (sign the user out at the identity provider).
   * @param {string} [id]
   * @returns {Promise<any>}
   */
  async revokeToken (id) {
    if (id !== undefined) {
      return this._parse(await this._send(`/tokens/${encodeURIComponent(id)}`, undefined, { method: 'DELETE' }))
    }
    this._notWithGetToken('revokeToken() without a scoped token id')
    const res = await this._send('/tokens/revoke', undefined, { method: 'POST' })
    const data = await this._parse(res)
    this.clearToken()
    this.expiresAt = null
    return data
  }

  /**
   * Get a new token for the same user (keys kept); the old one stops working. Stores the new one.
   * Not with `getToken` (the identity provider refreshes its own tokens).
   * @returns {Promise<string>}
   */
  async rotateToken () {
    this._notWithGetToken('rotateToken()')
    const res = await this._send('/tokens/rotate', undefined, { method: 'POST' })
    const data = await this._parse(res)
    if (!data || typeof data.token !== 'string') throw new RelayError(res.status, 'relay answered /tokens/rotate without a token', { body: data })
    this.token = data.token
    this.expiresAt = data.expires_at == null ? null : Number(data.expires_at)
    return data.token
  }

  /**
   * Erase the user, every stored key and their request log on the relay; forget the token.
   * @returns {Promise<any>}
   */
  async deleteUser () {
    const res = await this._send('/users', undefined, { method: 'DELETE' })
    const data = await this._parse(res)
    this.clearToken()
    this.expiresAt = null
    return data
  }

  /** The caller's usage (`GET /stats`). @returns {Promise<any>} */
  async stats () {
    return this._parse(await this._send('/stats', undefined, { method: 'GET' }))
  }

  /** Routing table and model allowlist (`GET /models`). @returns {Promise<any>} */
  async models () {
    return this._parse(await this._send('/models', undefined, { method: 'GET', auth: false }))
  }

  /**
   * Send one request through the relay and return its parsed JSON answer.
   * `pathOrProvider`: `null` → `POST /relay` (unified route, `body.model` picks the provider);
   * `'openai/v1/chat/completions'` → `/relay/openai/v1/chat/completions`; `'/any/path'` as is.
   * @param {string|null} pathOrProvider
   * @param {any} [body]  JSON-serialisable object, or a raw body (FormData, Blob, string, …)
   * @param {RequestOptions} [options]
   * @returns {Promise<any>}
   */
  async request (pathOrProvider, body, options = {}) {
    await this._ready()
    const res = await this._send(this._relayPath(pathOrProvider), body, options)
    if (options.raw) return res
    return this._parse(res)
  }

  /**
   * Send a streaming request and iterate over the SSE events of the answer.
   * A JSON (non-SSE) answer is yielded as one `message` event. An `event: error` throws a
   * {@link RelayError} (unless `throwOnError: false`). Breaking out of the loop or aborting the
   * signal closes the connection, and the relay cancels the upstream request.
   * @param {string|null} pathOrProvider  as in {@link request}
   * @param {any} [body]
   * @param {StreamOptions} [options]
   * @returns {AsyncGenerator<SSEEvent, void, undefined>}
   */
  async * stream (pathOrProvider, body, options = {}) {
    const { signal, stopOnDone = true, throwOnError = true } = options
    await this._ready()
    const res = await this._send(this._relayPath(pathOrProvider), body, {
      method: options.method, signal, headers: options.headers, accept: 'text/event-stream'
    })
    const ct = (res.headers.get('content-type') || '').toLowerCase()
    if (!ct.includes('text/event-stream') || !res.body) {
      const data = await res.text()
      yield { event: 'message', data, json: tryJSON(data), id: null, retry: null }
      return
    }
    for await (const ev of parseSSE(res.body, { signal, stopOnDone })) {
      if (throwOnError && ev.event === 'error') {
        throw new RelayError(res.status === 200 ? 502 : res.status, errorMessage(ev.json ?? ev.data, 502), {
          body: ev.json ?? ev.data, headers: res.headers, requestId: res.headers.get('x-relay-request-id')
        })
      }
      yield ev
    }
  }

  /**
   * Non-streamed chat through the unified route (`POST /relay`). Extra fields pass through
   * unchanged (e.g. `max_tokens`, which Anthropic requires).
   * @param {{ model: string, messages?: any[], [field: string]: any }} params
   * @param {RequestOptions} [options]
   * @returns {Promise<any>}
   */
  chat (params, options = {}) {
    return this.request(null, { ...params }, options)
  }

  /**
   * Streamed chat through the unified route (`POST /relay` with `stream: true`).
   * Use {@link extractText} on each event's `json` for the text delta.
   * @param {{ model: string, messages?: any[], [field: string]: any }} params
   * @param {StreamOptions} [options]
   * @returns {AsyncGenerator<SSEEvent, void, undefined>}
   */
  streamChat (params, options = {}) {
    return this.stream(null, { ...params, stream: true }, options)
  }

  /**
   * Like {@link streamChat} but yields only the text deltas (strings).
   * @param {{ model: string, messages?: any[], [field: string]: any }} params
   * @param {StreamOptions} [options]
   * @returns {AsyncGenerator<string, void, undefined>}
   */
  async * streamText (params, options = {}) {
    for await (const ev of this.streamChat(params, options)) {
      const t = extractText(ev.json)
      if (t) yield t
    }
  }
}

export default RelayClient
