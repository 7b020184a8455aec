/**
 * TypeScript declarations for `byok-relay-client` (the module the relay serves at
 * `GET /client.js`). Hand-written to match client.js; test/client.test.js checks that
 * every export and public method declared here exists at run time and the other way round.
 *
 * Uses the Fetch API's global types (`Response`, `Headers`, `ReadableStream`, `AbortSignal`):
 * from TypeScript's `DOM` lib in a browser project, or from `@types/node` (v18+) in Node.
 */

/** Default storage key under which the relay token is kept. */
export declare const DEFAULT_STORAGE_KEY: 'byok-relay-token'

/** Header that carries the relay token. */
export declare const TOKEN_HEADER: 'x-relay-token'

/** Header that carries the token returned by `getToken` (as `Bearer <token>`). */
export declare const BEARER_HEADER: 'authorization'

/**
 * Returns the signed-in user's current JWT from your identity provider, e.g.
 * `() => auth0.getTokenSilently()`, `() => clerk.session.getToken()` or
 * `() => auth.currentUser.getIdToken()`. Called before every request that needs a
 * credential; sent as `Authorization: Bearer <token>` and never stored. Throwing, or
 * returning an empty value, fails that call with a {@link RelayError} of status 0 and
 * `code` `'get_token_failed'` / `'no_token'` before anything is sent.
 */
export type GetToken = () => string | null | undefined | Promise<string | null | undefined>

/** Minimal Web Storage subset (`localStorage`, `sessionStorage` or your own object). */
export interface TokenStorage {
  getItem(key: string): string | null
  setItem(key: string, value: string): void
  removeItem(key: string): void
}

/** One Server-Sent Event. */
export interface SSEEvent {
  /** Event type (`'message'` when the stream named none). */
  event: string
  /** The data lines joined with `'\n'`. */
  data: string
  /** `data` parsed as JSON, or `null` when it is not JSON. */
  json: any
  /** Last event id seen so far, if the stream sent one. */
  id: string | null
  /** Reconnection time (ms), if the stream sent one. */
  retry: number | null
}

export interface RequestOptions {
  /** HTTP method; default `POST` with a body, `GET` without. */
  method?: string
  /** Abort the request (and, for streams, the upstream generation). */
  signal?: AbortSignal
  /** Extra headers (e.g. `anthropic-version`). */
  headers?: Record<string, string>
  /** `request()` only: resolve with the `Response` instead of parsed JSON. */
  raw?: boolean
  /** Send the credential: the relay token, or `getToken`'s (default `true`). */
  auth?: boolean
}

export interface StreamOptions {
  method?: string
  signal?: AbortSignal
  headers?: Record<string, string>
  /** Stop at a `data: [DONE]` line (default `true`). */
  stopOnDone?: boolean
  /** Throw a {@link RelayError} on an `event: error` (default `true`). */
  throwOnError?: boolean
}

/** Options of the calls that take only an abort signal. */
export interface SignalOption {
  signal?: AbortSignal
}

export interface KeyInfo {
  provider: string
  /** Last 4 characters of the stored key. */
  hint: string
  created_at: number | string | null
  updated_at: number | string | null
  last_used_at: number | string | null
}

export interface KeyList {
  providers: string[]
  keys: KeyInfo[]
  [field: string]: unknown
}

/** Limits of a scoped token (`POST /tokens`). */
export interface TokenScope {
  label?: string
  providers?: string[]
  /** Model name globs. */
  models?: string[]
  origins?: string[]
  /** CIDRs. */
  ips?: string[]
  /** Lifetime in seconds (default 3600). */
  ttl_s?: number
  /** Over the token's whole life. */
  budget?: { requests?: number; tokens?: number }
}

export interface ScopedToken {
  token: string
  id: string
  label: string | null
  scope: object
  expires_at: number
}

export interface ScopedTokenInfo {
  id: string
  label: string | null
  scope: object
  created_at: number
  expires_at: number
  last_used_at: number | null
  usage: { requests: number; input_tokens: number; output_tokens: number }
}

export interface Limits {
  requests?: number
  tokens?: number
}

/** The owner budget (`PUT /budget`). */
export interface OwnerBudget extends Limits {
  window: 'hour' | 'day' | 'month'
  providers?: Record<string, Limits>
}

/** Body of a chat call through the unified route: `model` picks the provider. */
export interface ChatParams {
  model: string
  messages?: unknown[]
  [field: string]: unknown
}

/** Machine-readable reasons carried by {@link RelayError#code}. */
export type RelayErrorCode =
  | 'get_token_failed'
  | 'no_token'
  | 'not_with_get_token'
  | 'budget_exceeded'
  | 'scope_refused'
  | 'jwt_invalid'
  | (string & {})

export interface RelayErrorExtra {
  body?: unknown
  headers?: Headers
  requestId?: string | null
  cause?: unknown
  code?: string
}

/**
 * Thrown for every non-2xx answer (from the relay or passed through from a provider), for
 * an `event: error` inside a stream, and for a call the client refused to send.
 */
export declare class RelayError extends Error {
  /**
   * @param status  HTTP status; 0 when there was no answer (a network failure, or a call the
   *   client did not send).
   * @param message  The relay's `{"error": "..."}` text, or the provider's message.
   */
  constructor(status: number, message: string, extra?: RelayErrorExtra)
  name: 'RelayError'
  /** HTTP status; 0 when nothing was answered. */
  status: number
  /** Parsed error body (or text) as received; `null` when there was none. */
  body: any
  headers: Headers | null
  /** The relay's `X-Relay-Request-Id`, when exposed. */
  requestId: string | null
  /** The relay's `body.code`, or the client's own reason; `null` when there is none. */
  code: RelayErrorCode | null
}

/** A {@link TokenStorage} kept in memory. */
export declare function createMemoryStorage(): TokenStorage

/**
 * Incremental Server-Sent-Events parser (WHATWG rules). Stops at a `data: [DONE]` line
 * unless `stopOnDone` is false; cancels the stream's reader when the consumer stops early.
 */
export declare function parseSSE(
  readableStream: ReadableStream<Uint8Array>,
  options?: { signal?: AbortSignal; stopOnDone?: boolean }
): AsyncGenerator<SSEEvent, void, undefined>

/**
 * The text delta carried by one streamed event (or a whole non-streamed answer), for
 * OpenAI chat chunks and Responses API events, Anthropic Messages events and Gemini
 * candidates. `''` when none.
 */
export declare function extractText(json: unknown): string

export interface RelayClientOptions {
  /** Relay origin (default: the page's origin). */
  baseUrl?: string
  /** Your app's id, sent on registration (default `'app'`). */
  appId?: string
  /** Where the token is kept (default `localStorage`, or memory; `null` = memory). */
  storage?: TokenStorage | null
  /** Storage key (default `'byok-relay-token'`). */
  storageKey?: string
  /** fetch implementation (default `globalThis.fetch`). */
  fetch?: typeof fetch
  /** Start with this token, e.g. a scoped token handed to the page by your backend. */
  token?: string
  /**
   * Use the signed-in user's JWT as the credential instead of a relay token (not with
   * `token`). `register()`, `rotateToken()` and `revokeToken()` without an id then throw a
   * {@link RelayError} with `code` `'not_with_get_token'`.
   */
  getToken?: GetToken
}

/** Client for a byok-relay server. */
export declare class RelayClient {
  constructor(options?: RelayClientOptions)
  /** Relay origin, without a trailing slash. */
  baseUrl: string
  appId: string
  storage: TokenStorage
  storageKey: string
  /** When the relay token expires (epoch seconds), if the relay said. */
  expiresAt: number | null
  getToken: GetToken | null
  /** The current relay token, or `null`; setting it stores it (`null` removes it). */
  get token(): string | null
  set token(value: string | null)
  /** Forget the stored token locally (the relay is not told; see {@link revokeToken}). */
  clearToken(): void
  /** Register a new relay user (`POST /users`) and store its token. */
  register(options?: { appId?: string; headers?: Record<string, string> }): Promise<string>
  /** The stored token, registering first only when none is stored (or `getToken`'s). */
  ensureToken(): Promise<string>
  /** Store (or replace) the user's key for a provider. */
  storeKey(
    provider: string,
    key: string,
    options?: { baseUrl?: string; signal?: AbortSignal }
  ): Promise<{ ok: boolean; provider: string }>
  /** Which providers have a stored key (values are never returned). */
  listKeys(options?: SignalOption): Promise<KeyList>
  deleteKey(provider: string, options?: SignalOption): Promise<{ ok: boolean; deleted: boolean }>
  /** Mint a scoped token (`POST /tokens`); returned, not stored. */
  createScopedToken(scope?: TokenScope, options?: SignalOption): Promise<ScopedToken>
  /** The live scoped tokens with their usage (`GET /tokens`); never their secrets. */
  listTokens(options?: SignalOption): Promise<{ tokens: ScopedTokenInfo[] }>
  /** The owner budget and the current window's usage (`GET /budget`). */
  getBudget(options?: SignalOption): Promise<any>
  /** Set (replace) the owner budget (`PUT /budget`); `null` removes it. */
  setBudget(budget: OwnerBudget | null, options?: SignalOption): Promise<any>
  /** With an id: revoke that scoped token. Without: kill the current relay token. */
  revokeToken(id?: string): Promise<any>
  /** A new token for the same user (keys kept); the old one stops working. */
  rotateToken(): Promise<string>
  /** Erase the user, every stored key and their request log; forget the token. */
  deleteUser(): Promise<any>
  /** The caller's usage (`GET /stats`). */
  stats(): Promise<any>
  /** Routing table and model allowlist (`GET /models`). */
  models(): Promise<any>
  /**
   * One request through the relay. `null` → `POST /relay` (unified route);
   * `'openai/v1/chat/completions'` → `/relay/openai/v1/chat/completions`; `'/any/path'` as is.
   */
  request(
    pathOrProvider: string | null,
    body: unknown,
    options: RequestOptions & { raw: true }
  ): Promise<Response>
  request(pathOrProvider: string | null, body?: unknown, options?: RequestOptions): Promise<any>
  /** A streaming request: the SSE events of the answer. */
  stream(
    pathOrProvider: string | null,
    body?: unknown,
    options?: StreamOptions
  ): AsyncGenerator<SSEEvent, void, undefined>
  /** Non-streamed chat through the unified route (`POST /relay`). */
  chat(params: ChatParams, options?: RequestOptions): Promise<any>
  /** Streamed chat through the unified route; use {@link extractText} on each `ev.json`. */
  streamChat(params: ChatParams, options?: StreamOptions): AsyncGenerator<SSEEvent, void, undefined>
  /** Like {@link streamChat} but yields only the text deltas. */
  streamText(params: ChatParams, options?: StreamOptions): AsyncGenerator<string, void, undefined>
}

export default RelayClient
