// Drive the Vercel AI SDK (`ai` 7) against a stepline server and print what the
// application sees as one JSON object on stdout.
//
//   node run.mjs --base-url http://127.0.0.1:PORT --model NAME \
//       --provider openai|open-responses --scenario generate|stream|chat \
//       [--reasoning summary|summary-only|none]
//
// Scenarios:
//   generate  generateText with a client tool (local_time) and stopWhen stepCountIs(4)
//   stream    the same loop with streamText; also lists every fullStream part type
//   chat      two generateText calls; the second gets the first's response.messages
//
// `--reasoning summary` (the default) asks for reasoning the way an app on a
// self-hosted reasoning model has to: @ai-sdk/openai only sends `reasoning` for
// model ids it knows to reason, so it needs forceReasoning plus reasoningSummary;
// open-responses only needs reasoningSummary. `--reasoning summary-only` passes
// reasoningSummary alone (what the @ai-sdk/openai docs show; on an unknown model id
// it is dropped with a warning), `--reasoning none` passes nothing.
//
// The JSON always carries `http` (every request the SDK sent, its body as sent on
// the wire, the status and the answer's output items / stream event types),
// `endedSteps` (each step as it ended) and `executed` (the tool's calls); for
// `stream` also the part types and deltas seen. A failed run adds `error` and exits 1.

import { parseArgs } from 'node:util';
import { createOpenAI } from '@ai-sdk/openai';
import { createOpenResponses } from '@ai-sdk/open-responses';
import { generateText, stepCountIs, streamText, tool } from 'ai';
import { z } from 'zod';

const TIMEOUT_MS = 10_000;

const { values: args } = parseArgs({
  options: {
    'base-url': { type: 'string' },
    model: { type: 'string' },
    provider: { type: 'string', default: 'openai' },
    scenario: { type: 'string', default: 'generate' },
    reasoning: { type: 'string', default: 'summary' },
  },
});
if (!args['base-url'] || !args.model) {
  process.stderr.write('usage: run.mjs --base-url URL --model NAME [--provider] [--scenario]\n');
  process.exit(2);
}

// Every HTTP exchange of the SDK, recorded through the providers' `fetch` option:
// the request body as sent, and of the answer the output items (plus, for a
// stream, every event type in order), read from a clone the SDK never sees.
const http = [];
const reading = [];
async function recordingFetch(input, init) {
  const exchange = { method: init?.method ?? 'GET', url: String(input), status: null };
  if (typeof init?.body === 'string') exchange.body = parseJson(init.body);
  http.push(exchange);
  const response = await fetch(input, init);
  exchange.status = response.status;
  reading.push(recordAnswer(exchange, response.clone()));
  return response;
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

async function recordAnswer(exchange, response) {
  const text = await response.text().catch((error) => `<unread: ${error}>`);
  if (!(response.headers.get('content-type') ?? '').includes('text/event-stream')) {
    const body = parseJson(text);
    exchange.answer = body?.output !== undefined ? { output: body.output } : body;
    return;
  }
  const events = [];
  let output = null;
  for (const line of text.split('\n')) {
    if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
    const event = parseJson(line.slice(6));
    events.push(event?.type ?? null);
    if (event?.response?.output && event.type !== 'response.created') output = event.response.output;
  }
  exchange.answer = { events, output };
}

// --reasoning: what the app passes as the provider's reasoning options
const OPENAI_REASONING = {
  summary: { forceReasoning: true, reasoningSummary: 'auto' },
  'summary-only': { reasoningSummary: 'auto' },
  none: undefined,
};

function makeModel() {
  const base = args['base-url'].replace(/\/+$/, '');
  if (!(args.reasoning in OPENAI_REASONING)) throw new Error(`unknown --reasoning ${args.reasoning}`);
  const wantsSummary = args.reasoning !== 'none';
  if (args.provider === 'openai') {
    const provider = createOpenAI({ baseURL: `${base}/v1`, apiKey: 'test', fetch: recordingFetch });
    const options = OPENAI_REASONING[args.reasoning];
    return {
      model: provider.responses(args.model),
      providerOptions: options && { openai: options },
    };
  }
  if (args.provider === 'open-responses') {
    const provider = createOpenResponses({
      name: 'stepline',
      url: `${base}/v1/responses`,
      apiKey: 'test',
      fetch: recordingFetch,
    });
    return {
      model: provider(args.model),
      providerOptions: wantsSummary ? { stepline: { reasoningSummary: 'auto' } } : undefined,
    };
  }
  throw new Error(`unknown provider ${args.provider}`);
}

// The client tool: the SDK runs it itself, stepline hands it back as a function_call.
const executed = [];
const tools = {
  local_time: tool({
    description: 'The local time in a city.',
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => {
      executed.push({ city });
      return { city, time: '09:30' };
    },
  }),
};

function summariseStep(step) {
  return {
    text: step.text,
    reasoningText: step.reasoningText ?? null,
    reasoning: step.reasoning.map((part) => part.text ?? null),
    toolCalls: step.toolCalls.map((c) => ({
      toolCallId: c.toolCallId,
      toolName: c.toolName,
      input: c.input,
    })),
    toolResults: step.toolResults.map((r) => ({
      toolCallId: r.toolCallId,
      toolName: r.toolName,
      output: r.output,
    })),
    finishReason: step.finishReason,
    responseId: step.response?.id ?? null,
    warnings: step.warnings ?? [],
  };
}

async function summariseResult(result) {
  const steps = await result.steps;
  return {
    text: await result.text,
    reasoningText: (await result.reasoningText) ?? null,
    finishReason: await result.finishReason,
    steps: steps.map(summariseStep),
    responseMessages: (await result.response).messages,
  };
}

function describeError(error) {
  if (error == null || typeof error !== 'object') return { message: String(error) };
  return {
    name: error.name ?? null,
    message: error.message ?? String(error),
    statusCode: error.statusCode ?? null,
    responseBody: error.responseBody ?? null,
    url: error.url ?? null,
    cause: error.cause ? describeError(error.cause) : null,
  };
}

async function runGenerate({ model, providerOptions }) {
  const result = await generateText({
    model,
    tools,
    stopWhen: stepCountIs(4),
    prompt: 'What time is it in Lima?',
    providerOptions,
    abortSignal: AbortSignal.timeout(TIMEOUT_MS),
    onStepEnd,
  });
  return summariseResult(result);
}

async function runStream({ model, providerOptions }) {
  const streamErrors = [];
  const result = streamText({
    model,
    tools,
    stopWhen: stepCountIs(4),
    prompt: 'What time is it in Lima?',
    providerOptions,
    abortSignal: AbortSignal.timeout(TIMEOUT_MS),
    onStepEnd,
    onError: ({ error }) => streamErrors.push(describeError(error)),
  });
  // kept in `seen` so that a failed run still reports the parts it got
  Object.assign(seen, { partTypes: [], reasoningDeltas: '', textDeltas: '' });
  for await (const part of result.fullStream) {
    seen.partTypes.push(part.type);
    if (part.type === 'reasoning-delta') seen.reasoningDeltas += part.text;
    if (part.type === 'text-delta') seen.textDeltas += part.text;
    if (part.type === 'error') streamErrors.push(describeError(part.error));
  }
  if (streamErrors.length > 0) {
    const error = new Error(streamErrors[0].message);
    Object.assign(error, streamErrors[0]);
    throw error;
  }
  return summariseResult(result);
}

async function runChat({ model, providerOptions }) {
  const messages = [{ role: 'user', content: 'Hi, I am Ada.' }];
  const turns = [];
  for (const next of ['What is my name?', null]) {
    const result = await generateText({
      model,
      messages,
      providerOptions,
      abortSignal: AbortSignal.timeout(TIMEOUT_MS),
      onStepEnd,
    });
    turns.push(await summariseResult(result));
    messages.push(...result.response.messages);
    if (next !== null) messages.push({ role: 'user', content: next });
  }
  return { turns, text: turns.at(-1).text };
}

const scenarios = { generate: runGenerate, stream: runStream, chat: runChat };

// steps as they end, so a run that fails in step 2 still shows step 1
const ended = [];
const seen = {};
const onStepEnd = (step) => ended.push(summariseStep(step));

let output;
let code = 0;
try {
  const scenario = scenarios[args.scenario];
  if (scenario === undefined) throw new Error(`unknown scenario ${args.scenario}`);
  output = await scenario(makeModel());
} catch (error) {
  output = { error: describeError(error) };
  code = 1;
}
// a clone that never ends (a hung stream) must not hold the report back
await Promise.race([Promise.all(reading), new Promise((done) => setTimeout(done, 2_000).unref())]);
output = { ...seen, ...output, endedSteps: ended, executed, http };
process.stdout.write(`${JSON.stringify(output)}\n`, () => process.exit(code));
