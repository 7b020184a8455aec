// The Vercel AI SDK as a byok-relay client, by base URL and relay token only (SPEC §12).
//
//   RELAY_URL=http://127.0.0.1:8787 RELAY_TOKEN=<relay token> node tests/node/ai-sdk.mjs
//
// Runs generateText and streamText through each provider package (@ai-sdk/openai with its
// default Responses API model and with .chat() for Chat Completions, @ai-sdk/anthropic,
// @ai-sdk/google) and prints one JSON object per case on stdout; tests/test_ai_sdk.py
// starts the relay, runs this script and checks what the mock providers received.
// A case that throws is reported with its error instead of stopping the others; the exit
// code is 1 when any case failed.
import { generateText, streamText } from 'ai'
import { createAnthropic } from '@ai-sdk/anthropic'
import { createGoogleGenerativeAI } from '@ai-sdk/google'
import { createOpenAI } from '@ai-sdk/openai'

const relay = (process.env.RELAY_URL || '').replace(/\/+$/, '')
const token = process.env.RELAY_TOKEN || ''
if (!relay || !token) {
  console.error('set RELAY_URL and RELAY_TOKEN')
  process.exit(2)
}

// The whole integration: the relay's provider route as baseURL, the relay token as apiKey.
const openai = createOpenAI({ baseURL: `${relay}/relay/openai/v1`, apiKey: token })
const anthropic = createAnthropic({ baseURL: `${relay}/relay/anthropic/v1`, apiKey: token })
const google = createGoogleGenerativeAI({ baseURL: `${relay}/relay/google/v1beta`, apiKey: token })

const MODELS = {
  'openai-responses': () => openai('gpt-4o-mini'),
  'openai-chat': () => openai.chat('gpt-4o-mini'),
  anthropic: () => anthropic('claude-3-5-haiku-20241022'),
  google: () => google('gemini-2.0-flash')
}
const PROMPT = 'Say hello'

function describe (err) {
  return {
    name: err && err.name,
    message: String((err && err.message) || err),
    statusCode: err && typeof err.statusCode === 'number' ? err.statusCode : null,
    responseBody: err && typeof err.responseBody === 'string' ? err.responseBody : null
  }
}

function usageOf (usage) {
  return usage ? { inputTokens: usage.inputTokens ?? null, outputTokens: usage.outputTokens ?? null } : null
}

async function runGenerate (model) {
  const result = await generateText({ model, prompt: PROMPT, maxRetries: 0, maxOutputTokens: 64 })
  return { text: result.text, finishReason: result.finishReason, usage: usageOf(result.usage) }
}

async function runStream (model) {
  let streamError = null
  const result = streamText({
    model,
    prompt: PROMPT,
    maxRetries: 0,
    maxOutputTokens: 64,
    onError: ({ error }) => { streamError = error }
  })
  const chunks = []
  for await (const part of result.fullStream) {
    if (part.type === 'text-delta') chunks.push(part.text)
    if (part.type === 'error') streamError = part.error
  }
  if (streamError) throw streamError
  return {
    text: chunks.join(''),
    chunks,
    finishReason: await result.finishReason,
    usage: usageOf(await result.usage)
  }
}

const only = process.argv.slice(2)
let failed = 0
for (const [client, makeModel] of Object.entries(MODELS)) {
  for (const [call, run] of [['generateText', runGenerate], ['streamText', runStream]]) {
    const name = `${client}/${call}`
    if (only.length && !only.includes(name)) continue
    try {
      console.log(JSON.stringify({ case: name, ok: true, ...(await run(makeModel())) }))
    } catch (err) {
      failed++
      console.log(JSON.stringify({ case: name, ok: false, error: describe(err) }))
    }
  }
}

// A wrong relay token: the SDK's own error type carries the relay's status and message.
if (!only.length || only.includes('bad-token')) {
  const bad = createOpenAI({ baseURL: `${relay}/relay/openai/v1`, apiKey: 'not-a-relay-token' })
  try {
    await generateText({ model: bad('gpt-4o-mini'), prompt: PROMPT, maxRetries: 0 })
    failed++
    console.log(JSON.stringify({ case: 'bad-token', ok: false, error: { message: 'no error' } }))
  } catch (err) {
    console.log(JSON.stringify({ case: 'bad-token', ok: true, error: describe(err) }))
  }
}
process.exitCode = failed ? 1 : 0
