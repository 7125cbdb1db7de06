// The official TypeScript MCP SDK client (what Claude Desktop, Claude Code, Cursor and most IDE hosts embed) against
// the skillorchestra server, over stdio, streamable HTTP and SSE.
//
// Every call goes through the SDK's own Client, so its checks run as a host's would: zod parsing of every result,
// the negotiated protocol version, and ajv validation of each structuredContent against the tool's outputSchema
// (it throws on a mismatch). On top, every tool schema is compiled under ajv as the SDK configures it, under ajv's
// strict mode, and under the JSON Schema 2020-12 dialect (MCP 2025-11-25's default), and checked against its
// meta-schema; arguments are checked against each inputSchema both ways (what the server takes, the schema must
// admit; what the schema refuses, the server must refuse).
//
// Usage: node check.mjs [--venv DIR] [--transport stdio|http|sse|all] [--json FILE] [--verbose]
// Exit status: 0 when no check failed, 1 otherwise. One summary line per transport on stdout.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { Protocol } from '@modelcontextprotocol/sdk/shared/protocol.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { validateToolName } from '@modelcontextprotocol/sdk/shared/toolNameValidation.js';
import {
  CallToolResultSchema,
  ErrorCode,
  InitializeResultSchema,
  LATEST_PROTOCOL_VERSION,
  ListToolsResultSchema,
  LoggingMessageNotificationSchema,
  McpError,
  SUPPORTED_PROTOCOL_VERSIONS,
} from '@modelcontextprotocol/sdk/types.js';
import { Ajv } from 'ajv';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';

const addFormats = addFormatsModule.default ?? addFormatsModule;
const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const TOKEN = 'ts-interop-token-0123456789abcdef';
const STEP = 'write a python function that reverses a string';
const CALL_TIMEOUT_MS = 60_000;

// ---------------------------------------------------------------------------------------------------------------
// arguments, results

function parseArgs(argv) {
  const opts = { venv: path.join(REPO, '.venv'), transport: 'all', json: null, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--venv') opts.venv = path.resolve(argv[++i]);
    else if (a === '--transport') opts.transport = argv[++i];
    else if (a === '--json') opts.json = argv[++i];
    else if (a === '--verbose') opts.verbose = true;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!['stdio', 'http', 'sse', 'all'].includes(opts.transport)) throw new Error(`--transport: ${opts.transport}`);
  return opts;
}

const OPTS = parseArgs(process.argv.slice(2));
const results = []; // {transport, name, status: ok|fail|warn|skip, detail}

function record(transport, name, status, detail = '', ms = undefined) {
  results.push({ transport, name, status, detail: String(detail), ms });
  if (OPTS.verbose || status !== 'ok') {
    const mark = { ok: 'ok  ', fail: 'FAIL', warn: 'warn', skip: 'skip' }[status];
    console.log(`  [${transport}] ${mark} ${name}${detail ? ': ' + String(detail).slice(0, 600) : ''}`);
  }
}

function describe(error) {
  if (error instanceof McpError) return `McpError ${error.code}: ${error.message}`;
  if (error && error.name && error.message) return `${error.name}: ${error.message}`;
  return String(error);
}

class Check {
  constructor(transport) {
    this.transport = transport;
  }
  ok(name, detail) {
    record(this.transport, name, 'ok', detail);
  }
  fail(name, detail) {
    record(this.transport, name, 'fail', detail);
  }
  warn(name, detail) {
    record(this.transport, name, 'warn', detail);
  }
  skip(name, detail) {
    record(this.transport, name, 'skip', detail);
  }
  // run fn; a throw is a failure; fn returns a detail string (or nothing)
  async step(name, fn) {
    const began = Date.now();
    try {
      const detail = await fn();
      record(this.transport, name, 'ok', detail ?? '', Date.now() - began);
      return true;
    } catch (error) {
      record(this.transport, name, 'fail', describe(error), Date.now() - began);
      return false;
    }
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

// ---------------------------------------------------------------------------------------------------------------
// ajv: the SDK's configuration, strict mode, and the 2020-12 dialect

function ajvs() {
  const strictLog = [];
  const logger = { log() {}, warn: (...a) => strictLog.push(a.join(' ')), error: (...a) => strictLog.push(a.join(' ')) };
  const sdk = new Ajv({ strict: false, validateFormats: true, validateSchema: false, allErrors: true }); // as the SDK
  addFormats(sdk);
  const strict = new Ajv({ strict: true, allErrors: true, logger });
  addFormats(strict);
  const meta07 = new Ajv({ strict: false, validateSchema: true, allErrors: true });
  addFormats(meta07);
  const d2020 = new Ajv2020({ strict: false, allErrors: true });
  addFormats(d2020);
  const strict2020 = new Ajv2020({ strict: true, allErrors: true, logger });
  addFormats(strict2020);
  return { sdk, strict, meta07, d2020, strict2020, strictLog };
}

function checkSchema(check, A, toolName, kind, schema) {
  const label = `${toolName}.${kind}`;
  const found = [];
  if (!schema || schema.type !== 'object') found.push(`type is ${JSON.stringify(schema?.type)}, MCP wants "object"`);
  if (schema && '$schema' in schema) found.push(`$schema ${schema.$schema} (host validators pick their dialect from it)`);
  if (schema && JSON.stringify(schema).includes('"$ref"')) found.push('has $ref (some hosts reject it)');
  let sdkValidator = null;
  try {
    sdkValidator = A.sdk.compile(schema);
  } catch (error) {
    check.fail(`schema ${label} compiles as the SDK compiles it (ajv strict:false)`, describe(error));
  }
  if (sdkValidator) check.ok(`schema ${label} compiles as the SDK compiles it (ajv strict:false)`);
  for (const [name, ajv] of [
    ['ajv strict:true (draft-07)', A.strict],
    ['ajv strict:true (2020-12)', A.strict2020],
  ]) {
    A.strictLog.length = 0;
    try {
      ajv.compile(schema);
      if (A.strictLog.length) check.warn(`schema ${label} under ${name}`, `logged: ${A.strictLog.join(' | ')}`);
      else check.ok(`schema ${label} under ${name}`);
    } catch (error) {
      check.fail(`schema ${label} under ${name}`, describe(error));
    }
  }
  for (const [name, ajv] of [
    ['draft-07 meta-schema', A.meta07],
    ['2020-12 meta-schema', A.d2020],
  ]) {
    if (ajv.validateSchema(schema)) check.ok(`schema ${label} valid against the ${name}`);
    else check.fail(`schema ${label} valid against the ${name}`, A.sdk.errorsText(ajv.errors));
  }
  if (found.length) check.fail(`schema ${label} shape`, found.join('; '));
  else check.ok(`schema ${label} shape`);
  return sdkValidator;
}

// ---------------------------------------------------------------------------------------------------------------
// processes

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function childEnv(extra = {}) {
  // what a desktop host passes: little of the user's environment
  return { PATH: process.env.PATH, HOME: process.env.HOME ?? os.tmpdir(), LITELLM_LOCAL_MODEL_COST_MAP: 'True', HF_HUB_OFFLINE: '1', ...extra };
}

function startProcess(command, args, env) {
  const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.output = '';
  child.stdout.on('data', (d) => (child.output += d));
  child.stderr.on('data', (d) => (child.output += d));
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return child;
}

async function waitFor(predicate, ms, what) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await predicate()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

async function stopProcess(child, ms = 8000) {
  if (child.exitCode !== null || child.signalCode !== null) return child.exited;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  const status = await child.exited;
  clearTimeout(timer);
  return status;
}

async function startFakeOpenAI(python) {
  const child = startProcess(python, [path.join(REPO, 'tests', 'fake_openai.py'), '--port', '0'], childEnv());
  await waitFor(() => /ready (\S+)/.test(child.output), 20_000, 'tests/fake_openai.py to say ready');
  child.apiBase = /ready (\S+)/.exec(child.output)[1];
  return child;
}

function prepareDatabase(venv, dir, name, apiBase) {
  const db = path.join(dir, `${name}.db`);
  const cli = path.join(venv, 'bin', 'skillorchestra');
  // the shipped example, as a new user's server seeds it (agents load first would leave the file without it)
  execFileSync(cli, ['handbook', 'import', '--example', '--db', db], { env: childEnv(), stdio: 'pipe', timeout: 60_000 });
  if (apiBase) {
    const toml = path.join(dir, 'agents.toml');
    writeFileSync(
      toml,
      `[agents.cheap]\nmodel = "openai/cheap-model"\napi_base = "${apiBase}"\ninput_per_mtok = 0.2\noutput_per_mtok = 0.4\n`,
    );
    execFileSync(cli, ['agents', 'load', toml, '--db', db], {
      env: childEnv(),
      stdio: 'pipe',
      timeout: 60_000,
    });
  }
  return db;
}

// ---------------------------------------------------------------------------------------------------------------
// a transport that keeps every message it carries (the negotiated version, notifications, raw error shapes)

function tapped(inner, log) {
  const outer = {
    onclose: undefined,
    onerror: undefined,
    onmessage: undefined,
    start: () => inner.start(),
    close: () => inner.close(),
    send: (message, options) => {
      log.push({ dir: 'out', message });
      return inner.send(message, options);
    },
    get sessionId() {
      return inner.sessionId;
    },
  };
  if (inner.setProtocolVersion) outer.setProtocolVersion = (v) => inner.setProtocolVersion(v);
  inner.onmessage = (message, extra) => {
    log.push({ dir: 'in', message });
    outer.onmessage?.(message, extra);
  };
  inner.onclose = () => outer.onclose?.();
  inner.onerror = (error) => outer.onerror?.(error);
  return outer;
}

// ---------------------------------------------------------------------------------------------------------------
// the checks one connected client runs

function textOf(result) {
  return (result.content ?? [])
    .filter((c) => c.type === 'text')
    .map((c) => c.text)
    .join('\n');
}

class Session {
  constructor(check, client, log, A, canDelegate) {
    this.check = check;
    this.client = client;
    this.log = log;
    this.A = A;
    this.canDelegate = canDelegate;
    this.tools = new Map();
    this.inputValidators = new Map();
    this.outputValidators = new Map();
    this.progress = [];
  }

  // a call that must succeed: the SDK validates structuredContent (it throws on a mismatch); we check it again
  // with our own ajv, and that the text block carries the same JSON
  async call(name, args, { onprogress, timeout = CALL_TIMEOUT_MS, resetTimeoutOnProgress = false } = {}) {
    const inputValid = this.inputValidators.get(name);
    if (inputValid && !inputValid(args)) {
      this.check.fail(
        `${name}: the inputSchema admits arguments the server takes`,
        `${JSON.stringify(args).slice(0, 200)}: ${this.A.sdk.errorsText(inputValid.errors)}`,
      );
    }
    const result = await this.client.callTool({ name, arguments: args }, CallToolResultSchema, {
      timeout,
      onprogress,
      resetTimeoutOnProgress,
    });
    assert(!result.isError, `isError: ${textOf(result).slice(0, 400)}`);
    assert(result.structuredContent && typeof result.structuredContent === 'object', 'no structuredContent');
    const validate = this.outputValidators.get(name);
    if (validate && !validate(result.structuredContent)) {
      throw new Error(`structuredContent vs outputSchema (own ajv): ${this.A.sdk.errorsText(validate.errors)}`);
    }
    let parsed;
    try {
      parsed = JSON.parse(textOf(result));
    } catch {
      parsed = undefined;
    }
    if (!isDeepStrictEqual(parsed, result.structuredContent)) {
      this.check.warn(`${name}: text content is the JSON of structuredContent`, textOf(result).slice(0, 200));
    }
    return result.structuredContent;
  }

  // a call the server must refuse: an isError result with a message, or a JSON-RPC error (-32602); also compares
  // with what the inputSchema says of these arguments
  async refused(label, name, args, pattern, { schemaShouldRefuse = true } = {}) {
    const check = this.check;
    const title = `refuses ${name} ${label}`;
    const inputValid = this.inputValidators.get(name);
    if (inputValid && schemaShouldRefuse && inputValid(args)) {
      check.warn(`${name}: the inputSchema refuses ${label} as the server does`, 'the schema admits these arguments');
    }
    try {
      const result = await this.client.callTool({ name, arguments: args }, CallToolResultSchema, { timeout: CALL_TIMEOUT_MS });
      if (!result.isError) return check.fail(title, `not refused: ${textOf(result).slice(0, 300)}`);
      const text = textOf(result);
      if (!text.trim()) return check.fail(title, 'isError with no text');
      if (/Traceback|Internal Server Error|Error executing tool \w+$/.test(text)) return check.fail(title, `unclear: ${text}`);
      if (pattern && !pattern.test(text)) return check.fail(title, `message does not match ${pattern}: ${text}`);
      check.ok(title, `isError: ${text.split('\n')[0].slice(0, 160)}`);
    } catch (error) {
      if (error instanceof McpError && error.code === ErrorCode.InvalidParams) {
        if (pattern && !pattern.test(error.message)) return check.fail(title, `message does not match ${pattern}: ${error.message}`);
        return check.ok(title, `JSON-RPC ${error.code}: ${error.message.slice(0, 160)}`);
      }
      check.fail(title, `unexpected error shape: ${describe(error)}`);
    }
  }

  // a request that must be answered with a JSON-RPC error of `code`
  async rpcError(title, code, fn, pattern) {
    try {
      const value = await fn();
      this.check.fail(title, `answered instead of a ${code} error: ${JSON.stringify(value).slice(0, 200)}`);
    } catch (error) {
      if (!(error instanceof McpError)) return this.check.fail(title, `not a JSON-RPC error: ${describe(error)}`);
      if (error.code !== code) return this.check.fail(title, `code ${error.code}, expected ${code}: ${error.message}`);
      if (pattern && !pattern.test(error.message)) return this.check.fail(title, `message: ${error.message}`);
      this.check.ok(title, `${error.code}: ${error.message.slice(0, 160)}`);
    }
  }

  async run() {
    const { check, client } = this;
    await this.handshake();
    await check.step('ping', () => client.ping());
    await this.toolList();
    await this.routingTools();
    await this.catalogTools();
    await this.delegateTool();
    await this.learningTools();
    await this.invalidCalls();
    await this.resources();
    await this.prompts();
    await this.completions();
    await this.logging();
    this.notifications();
  }

  async handshake() {
    const { check, client, log } = this;
    const init = log.find((m) => m.dir === 'in' && m.message.result?.protocolVersion);
    const version = init?.message.result.protocolVersion;
    if (version === LATEST_PROTOCOL_VERSION) check.ok('protocol version', `${version} (the client's latest)`);
    else if (SUPPORTED_PROTOCOL_VERSIONS.includes(version)) check.warn('protocol version', `${version}, client asked ${LATEST_PROTOCOL_VERSION}`);
    else check.fail('protocol version', String(version));
    const caps = client.getServerCapabilities() ?? {};
    this.caps = caps;
    const wanted = ['tools', 'resources', 'prompts', 'completions'];
    const missing = wanted.filter((k) => !caps[k]);
    if (missing.length) check.fail('capabilities', `missing ${missing.join(', ')}: ${JSON.stringify(caps)}`);
    else check.ok('capabilities', JSON.stringify(caps));
    const info = client.getServerVersion();
    if (info?.name && info?.version) check.ok('serverInfo', `${info.name} ${info.version}`);
    else check.fail('serverInfo', JSON.stringify(info));
    if (client.getInstructions()) check.ok('instructions', `${client.getInstructions().length} characters`);
    else check.warn('instructions', 'none');
  }

  async toolList() {
    const { check, client, A } = this;
    let cursor;
    let pages = 0;
    const tools = [];
    do {
      const page = await client.listTools(cursor ? { cursor } : undefined);
      tools.push(...page.tools);
      cursor = page.nextCursor;
      pages += 1;
    } while (cursor && pages < 50);
    check.ok('tools/list', `${tools.length} tools on ${pages} page(s)`);
    if (pages > 1) {
      // the SDK's Client keeps the output validators of the LAST page only (cacheToolMetadata clears them)
      check.warn('tools/list pages', 'more than one page: the TS client validates only the last page\'s outputs');
    }
    const expected = ['consult_handbook', 'route_step', 'record_outcome', 'delegate', 'upsert_agent', 'upsert_skill',
      'upsert_mode', 'delete_agent', 'delete_skill', 'list_agents', 'list_skills', 'learn_handbook', 'learn_status'];
    const names = tools.map((t) => t.name);
    const absent = expected.filter((n) => !names.includes(n));
    if (absent.length) check.fail('tools/list names', `missing ${absent.join(', ')}`);
    for (const tool of tools) {
      this.tools.set(tool.name, tool);
      const naming = validateToolName(tool.name);
      if (!naming.isValid || naming.warnings.length) check.warn(`tool name ${tool.name}`, naming.warnings.join('; '));
      const input = checkSchema(check, A, tool.name, 'inputSchema', tool.inputSchema);
      if (input) this.inputValidators.set(tool.name, input);
      if (!tool.outputSchema) check.warn(`${tool.name}.outputSchema`, 'none: no structuredContent validation');
      else {
        const output = checkSchema(check, A, tool.name, 'outputSchema', tool.outputSchema);
        if (output) this.outputValidators.set(tool.name, output);
      }
      if (tool.inputSchema?.additionalProperties !== false) check.warn(`${tool.name}.inputSchema`, 'admits unknown arguments');
      if (!tool.annotations) check.warn(`${tool.name}.annotations`, 'none');
      if (!tool.description) check.fail(`${tool.name}.description`, 'none');
    }
    // a listing with a cursor we never got
    await this.rpcError('tools/list with a made-up cursor', ErrorCode.InvalidParams, () => client.listTools({ cursor: 'nope' }));
  }

  async routingTools() {
    const { check } = this;
    await check.step('consult_handbook', async () => {
      const first = await this.call('consult_handbook', { text: STEP });
      assert(Array.isArray(first.skills) && Array.isArray(first.agents), 'skills/agents lists');
      return `${first.skills.length} skills, ${first.agents.length} agent rows, next_cursor ${first.next_cursor ?? null}`;
    });
    await check.step('route_step + record_outcome', async () => {
      const decision = await this.call('route_step', { text: STEP, lambda_: 0.1 });
      assert(decision.decision_id && decision.agent_id, 'decision_id, agent_id');
      this.decisionId = decision.decision_id;
      const outcome = await this.call('record_outcome', { decision_id: decision.decision_id, success: true });
      assert(outcome.duplicate === false, 'duplicate false');
      const again = await this.call('record_outcome', { decision_id: decision.decision_id, success: true });
      assert(again.duplicate === true, 'the same report again: duplicate true');
      return `${decision.agent_id}, ${outcome.updated.length} skill(s) updated, repeat duplicate`;
    });
    await check.step('route_step thompson, every optional argument, then record_outcome with cost', async () => {
      const decision = await this.call('route_step', {
        text: 'prove that the square root of 2 is irrational',
        skills: null,
        mode: null,
        lambda_: 0.2,
        strategy: 'thompson',
        allowed_agents: null,
        max_cost_usd: 1.0,
        session_id: 'ts-session',
        budget_usd: 5.0,
        top_k: 3,
        seed: 7,
        orchestrator: null,
      });
      const outcome = await this.call('record_outcome', {
        decision_id: decision.decision_id,
        reward: 0.5,
        cost_usd: 0.001,
        prompt_tokens: 100,
        completion_tokens: 50,
        latency_s: 1.5,
        error_class: 'task',
      });
      this.secondDecision = decision.decision_id;
      return `${decision.agent_id} (propensity ${decision.propensity}), updated ${outcome.updated.length}`;
    });
    await check.step('route_step with null for optional arguments that do not admit null (lambda_, strategy, top_k)', async () => {
      // some hosts send every optional argument, null where the user gave none: the server takes null as left out
      const args = { text: STEP, lambda_: null, strategy: null, top_k: null };
      const valid = this.inputValidators.get('route_step');
      const decision = await this.client.callTool({ name: 'route_step', arguments: args }, CallToolResultSchema);
      assert(!decision.isError, textOf(decision));
      await this.call('record_outcome', { decision_id: decision.structuredContent.decision_id, error_class: 'timeout' });
      if (valid && !valid(args)) {
        return `server takes them; the inputSchema does not admit them (${this.A.sdk.errorsText(valid.errors)})`;
      }
      return 'server and schema take them';
    });
  }

  async catalogTools() {
    const { check } = this;
    await check.step('upsert_mode, upsert_skill (parent and child)', async () => {
      const mode = await this.call('upsert_mode', { mode_id: 'ts-mode', description: 'the TS client\'s mode', insights: ['prefer cheap'] });
      assert(mode.id === 'ts-mode' || mode.mode_id === 'ts-mode' || JSON.stringify(mode).includes('ts-mode'), 'mode');
      await this.call('upsert_skill', {
        skill_id: 'ts.parent',
        description: 'a parent skill from the TS client',
        mode: 'ts-mode',
        indicators: ['typescript', 'node'],
        examples: ['write a node script'],
      });
      const child = await this.call('upsert_skill', { skill_id: 'ts.parent/child', parent_id: 'ts.parent', description: 'a child' });
      return JSON.stringify(child).slice(0, 120);
    });
    await check.step('upsert_agent x14 (prices, modes, enabled, clear_prices)', async () => {
      for (let i = 0; i < 14; i++) {
        await this.call('upsert_agent', {
          agent_id: `ts/agent-${String(i).padStart(2, '0')}`,
          description: `agent ${i}`,
          input_per_mtok: 0.1 * (i + 1),
          output_per_mtok: 0.2 * (i + 1),
        });
      }
      await this.call('upsert_agent', { agent_id: 'ts/agent-00', enabled: false, modes: ['ts-mode'] });
      const cleared = await this.call('upsert_agent', { agent_id: 'ts/agent-01', clear_prices: true });
      return JSON.stringify(cleared).slice(0, 160);
    });
    for (const [tool, key, limit] of [
      ['list_agents', 'agent', 4],
      ['list_skills', 'skill', 3],
    ]) {
      await check.step(`${tool} paged (limit ${limit}) through next_cursor`, async () => {
        const seen = [];
        let cursor = null;
        let pages = 0;
        do {
          const page = await this.call(tool, cursor ? { limit, cursor } : { limit });
          assert(Array.isArray(page.items), 'items');
          assert(page.items.length <= limit, `page of ${page.items.length} > limit`);
          seen.push(...page.items.map((item) => item.id ?? item[`${key}_id`]));
          cursor = page.next_cursor;
          pages += 1;
        } while (cursor && pages < 100);
        assert(new Set(seen).size === seen.length, 'an item on two pages');
        const whole = await this.call(tool, { limit: 200 });
        assert(whole.items.length === seen.length, `paged ${seen.length} vs one page ${whole.items.length}`);
        return `${seen.length} ${key}s on ${pages} pages`;
      });
    }
    await check.step('list_skills mode filter', async () => {
      const page = await this.call('list_skills', { mode: 'ts-mode' });
      assert(page.items.length === 2, `${page.items.length} skills of ts-mode`);
    });
    await check.step('consult_handbook paged through next_cursor', async () => {
      const args = { text: 'sort a list of numbers in python', top_k: 5, agents_per_skill: 500 };
      let page = await this.call('consult_handbook', args);
      let rows = page.agents.length;
      let pages = 1;
      while (page.next_cursor && pages < 50) {
        page = await this.call('consult_handbook', { ...args, cursor: page.next_cursor });
        rows += page.agents.length;
        pages += 1;
      }
      if (pages === 1) return `one page only (${rows} rows): no cursor to follow`;
      return `${rows} agent rows on ${pages} pages`;
    });
    await check.step('delete_skill, delete_agent', async () => {
      const skill = await this.call('delete_skill', { skill_id: 'ts.parent/child' });
      const agent = await this.call('delete_agent', { agent_id: 'ts/agent-13' });
      return `${JSON.stringify(skill).slice(0, 80)} ${JSON.stringify(agent).slice(0, 80)}`;
    });
  }

  async delegateTool() {
    const { check } = this;
    if (!this.canDelegate) {
      check.skip('delegate', 'no fake OpenAI server');
      return;
    }
    await check.step('delegate (agent_id) with progress, then record_outcome', async () => {
      const before = this.progress.length;
      const result = await this.call(
        'delegate',
        { text: 'say hello', agent_id: 'cheap', context: 'be brief', max_tokens: 64, timeout_s: 30 },
        { onprogress: (p) => this.progress.push(p) },
      );
      assert(/answer\[cheap-model\]/.test(result.answer), `answer ${result.answer}`);
      const outcome = await this.call('record_outcome', { decision_id: result.decision_id, success: true });
      const ticks = this.progress.slice(before);
      const shaped = ticks.every((p) => typeof p.progress === 'number' && (p.total === undefined || p.progress <= p.total));
      assert(shaped, `progress shape ${JSON.stringify(ticks)}`);
      return `answer ok, ${ticks.length} progress notification(s), cost ${result.cost_usd}, updated ${outcome.updated.length}`;
    });
    await check.step('delegate routed (allowed_agents) and delegate(decision_id)', async () => {
      const routed = await this.call('delegate', { text: 'name a prime number', allowed_agents: ['cheap'], lambda_: 0 });
      assert(routed.agent_id === 'cheap', routed.agent_id);
      await this.call('record_outcome', { decision_id: routed.decision_id, reward: 1 });
      const decision = await this.call('route_step', { text: 'name an even number', allowed_agents: ['cheap'] });
      const carried = await this.call('delegate', { text: 'name an even number', decision_id: decision.decision_id });
      assert(carried.decision_id === decision.decision_id, 'same decision');
      await this.call('record_outcome', { decision_id: decision.decision_id, success: false });
      return 'both answered';
    });
    await check.step('delegate cut by the client\'s request timeout (sends notifications/cancelled), server carries on', async () => {
      // hosts on this SDK abandon any request after 60 s (DEFAULT_REQUEST_TIMEOUT_MSEC) unless they opt into
      // resetTimeoutOnProgress; delegate takes timeout_s up to 600: the same path, scaled down
      try {
        await this.client.callTool({ name: 'delegate', arguments: { text: 'SLOW:4 wait', agent_id: 'cheap', timeout_s: 30 } }, CallToolResultSchema, { timeout: 1000 });
        throw new Error('answered before the client timeout');
      } catch (error) {
        if (!(error instanceof McpError) || error.code !== ErrorCode.RequestTimeout) throw error;
      }
      const cancelled = this.log.some((m) => m.dir === 'out' && m.message.method === 'notifications/cancelled');
      assert(cancelled, 'the client sent notifications/cancelled');
      await this.client.ping();
      const after = await this.call('list_agents', { limit: 1 });
      assert(after.items.length === 1, 'a call after the cancellation');
      return 'RequestTimeout -32001 after 1 s, notifications/cancelled sent, next calls answered';
    });
    await check.step('delegate kept alive by progress when the host resets its timeout on progress', async () => {
      const ticks = [];
      const result = await this.call(
        'delegate',
        { text: 'SLOW:2.5 wait', agent_id: 'cheap', timeout_s: 30 },
        { onprogress: (p) => ticks.push(p), timeout: 1800, resetTimeoutOnProgress: true },
      );
      await this.call('record_outcome', { decision_id: result.decision_id, success: true });
      const rising = ticks.every((p, i) => i === 0 || p.progress >= ticks[i - 1].progress);
      assert(rising, `progress went backwards: ${JSON.stringify(ticks)}`);
      return `answered after ${ticks.length} progress notifications (client timeout 1.8 s, call 2.5 s)`;
    });
    await this.refused('with an unknown agent_id', 'delegate', { text: 'x', agent_id: 'no-such-agent' }, /agent/, { schemaShouldRefuse: false });
  }

  async learningTools() {
    const { check } = this;
    let job;
    try {
      const result = await this.client.callTool({ name: 'learn_handbook', arguments: { seed: 1 } }, CallToolResultSchema);
      if (result.isError) {
        check.ok('learn_handbook', `refused (clear): ${textOf(result).slice(0, 160)}`);
      } else {
        job = result.structuredContent;
        check.ok('learn_handbook', `job ${job.job_id} ${job.state}`);
      }
    } catch (error) {
      check.fail('learn_handbook', describe(error));
    }
    if (job) {
      await check.step('learn_status until done', async () => {
        let status = job;
        const until = Date.now() + 120_000;
        while (status.state === 'running' && Date.now() < until) {
          await new Promise((r) => setTimeout(r, 500));
          status = await this.call('learn_status', { job_id: job.job_id });
        }
        assert(status.state !== 'running', 'still running after 120 s');
        return `${status.state}${status.error ? ': ' + status.error : ''}`;
      });
    }
  }

  async invalidCalls() {
    const r = (label, name, args, pattern, opts) => this.refused(label, name, args, pattern, opts);
    await r('without its required text', 'consult_handbook', {}, /text/);
    await r('with a number as text', 'consult_handbook', { text: 5 }, /text/);
    await r('with a made-up cursor', 'consult_handbook', { text: STEP, cursor: 'garbage' }, /cursor/, { schemaShouldRefuse: false });
    await r('with lambda_ as a string', 'route_step', { text: STEP, lambda_: '0.5' }, /lambda_/);
    await r('with an unknown argument', 'route_step', { text: STEP, lamda: 0.5 }, /lamda/);
    await r('with an unknown strategy', 'route_step', { text: STEP, strategy: 'greedy' }, /strategy/);
    await r('with a negative lambda_', 'route_step', { text: STEP, lambda_: -1 }, /lambda_/);
    await r('with a 40,000-character text', 'route_step', { text: 'x'.repeat(40_000) }, /text/);
    await r('with a skill weight as a string', 'route_step', { text: STEP, skills: [{ skill_id: 'a', weight: 'high' }] }, /weight/);
    await r('of an unknown decision', 'record_outcome', { decision_id: 'no-such-decision', success: true }, /decision/, { schemaShouldRefuse: false });
    await r('with a reward of 7', 'record_outcome', { decision_id: this.decisionId ?? 'x', reward: 7 }, /reward/);
    await r('with reward and success both', 'record_outcome', { decision_id: this.secondDecision ?? 'x', reward: 0.5, success: true }, /reward|success/, { schemaShouldRefuse: false });
    await r('with a negative cost', 'record_outcome', { decision_id: this.secondDecision ?? 'x', success: true, cost_usd: -1 }, /cost_usd/);
    await r('with success as a string', 'record_outcome', { decision_id: this.secondDecision ?? 'x', success: 'yes' }, /success/);
    await r('with an empty agent_id', 'upsert_agent', { agent_id: '' }, /agent_id/);
    await r('with a connection field', 'upsert_agent', { agent_id: 'a', api_base: 'http://evil' }, /api_base/);
    await r('with a dot-dot skill_id', 'upsert_skill', { skill_id: 'org/../x' }, /skill_id/, { schemaShouldRefuse: false });
    await r('of an unknown skill', 'delete_skill', { skill_id: 'no-such-skill' }, /skill/, { schemaShouldRefuse: false });
    await r('of an unknown agent', 'delete_agent', { agent_id: 'no-such-agent' }, /agent/, { schemaShouldRefuse: false });
    await r('with limit 0', 'list_agents', { limit: 0 }, /limit/);
    await r('with a made-up cursor', 'list_skills', { cursor: 'garbage' }, /cursor/, { schemaShouldRefuse: false });
    await r('of an unknown job', 'learn_status', { job_id: 'no-such-job' }, /job/, { schemaShouldRefuse: false });
    await this.rpcError('an unknown tool is -32602', ErrorCode.InvalidParams, () =>
      this.client.callTool({ name: 'no_such_tool', arguments: {} }),
    );
    await this.rpcError('tools/call with a list as arguments is -32602', ErrorCode.InvalidParams, () =>
      this.client.request({ method: 'tools/call', params: { name: 'list_agents', arguments: [] } }, CallToolResultSchema),
    );
  }

  async resources() {
    const { check, client } = this;
    let listed = [];
    let templates = [];
    await check.step('resources/list', async () => {
      let cursor;
      do {
        const page = await client.listResources(cursor ? { cursor } : undefined);
        listed.push(...page.resources);
        cursor = page.nextCursor;
      } while (cursor);
      return listed.map((r) => r.uri).join(' ');
    });
    await check.step('resources/templates/list', async () => {
      const page = await client.listResourceTemplates();
      templates = page.resourceTemplates;
      assert(!page.nextCursor, 'one page');
      return templates.map((t) => t.uriTemplate).join(' ');
    });
    for (const resource of listed) {
      await check.step(`resources/read ${resource.uri}`, async () => {
        const read = await client.readResource({ uri: resource.uri });
        assert(read.contents.length === 1, `${read.contents.length} contents`);
        const content = read.contents[0];
        assert(content.uri === resource.uri, `content uri ${content.uri}`);
        if (resource.mimeType) assert(content.mimeType === resource.mimeType, `mimeType ${content.mimeType} vs listed ${resource.mimeType}`);
        if (content.mimeType === 'application/json') JSON.parse(content.text);
        return `${content.mimeType}, ${content.text.length} characters`;
      });
    }
    const ids = { skill_id: 'ts.parent', agent_id: 'ts/agent-02' };
    for (const template of templates) {
      const uri = template.uriTemplate.replace(/\{(\w+)\}/g, (_, name) => encodeURIComponent(ids[name] ?? 'x'));
      await check.step(`resources/read ${uri} (template ${template.uriTemplate})`, async () => {
        const read = await client.readResource({ uri });
        const content = read.contents[0];
        if (content.mimeType === 'application/json') JSON.parse(content.text);
        assert(content.text.includes(ids.skill_id) || content.text.includes(ids.agent_id), 'names the id');
        return `${content.mimeType}, ${content.text.length} characters`;
      });
      const missing = template.uriTemplate.replace(/\{(\w+)\}/g, 'no-such-id');
      // MCP 2025-11-25: "Resource not found" is -32002; the Python SDK answers -32602 (invalid params) with data.uri
      try {
        await client.readResource({ uri: missing });
        check.fail(`resources/read ${missing} (unknown id)`, 'answered');
      } catch (error) {
        if (!(error instanceof McpError)) check.fail(`resources/read ${missing} (unknown id)`, describe(error));
        else if (error.code === -32002) check.ok(`resources/read ${missing} (unknown id)`, `-32002 ${error.message}`);
        else if (error.code === ErrorCode.InvalidParams) {
          // SEP-2164 (the 2026-07-28 revision and mcp 2.x) makes it -32602; 2025-11-25's text says -32002
          check.ok(`resources/read ${missing} (unknown id)`, `-32602 (SEP-2164; 2025-11-25 said -32002): ${error.message}`);
        } else check.fail(`resources/read ${missing} (unknown id)`, `code ${error.code}: ${error.message}`);
      }
    }
    try {
      await client.readResource({ uri: 'handbook://nothing-here' });
      check.fail('resources/read of an unknown URI', 'answered');
    } catch (error) {
      if (error instanceof McpError && [-32002, ErrorCode.InvalidParams].includes(error.code)) {
        check.ok('resources/read of an unknown URI', `${error.code}: ${error.message}`);
      } else check.fail('resources/read of an unknown URI', describe(error));
    }
  }

  async prompts() {
    const { check, client } = this;
    await check.step('prompts/list', async () => {
      const page = await client.listPrompts();
      const prompt = page.prompts.find((p) => p.name === 'orchestrate');
      assert(prompt, 'orchestrate listed');
      const goal = prompt.arguments?.find((a) => a.name === 'goal');
      assert(goal?.required === true, 'goal required');
      return page.prompts.map((p) => `${p.name}(${(p.arguments ?? []).map((a) => a.name + (a.required ? '' : '?')).join(', ')})`).join(' ');
    });
    await check.step('prompts/get orchestrate', async () => {
      const got = await client.getPrompt({ name: 'orchestrate', arguments: { goal: 'plan a trip', orchestrator: 'claude' } });
      assert(got.messages.length >= 1 && got.messages[0].content.type === 'text', 'a text message');
      assert(got.messages[0].content.text.includes('plan a trip'), 'goal in the text');
      return `${got.messages.length} message(s)`;
    });
    await this.rpcError('prompts/get without goal is -32602', ErrorCode.InvalidParams, () =>
      client.getPrompt({ name: 'orchestrate', arguments: {} }), /goal/);
    await this.rpcError('prompts/get of an unknown prompt is -32602', ErrorCode.InvalidParams, () =>
      client.getPrompt({ name: 'nope', arguments: {} }), /nope/);
  }

  async completions() {
    const { check, client } = this;
    const cases = [
      ['skill ids', { type: 'ref/resource', uri: 'handbook://skills/{skill_id}' }, 'skill_id', 'ts', 'ts.parent'],
      ['agent ids', { type: 'ref/resource', uri: 'handbook://agents/{agent_id}' }, 'agent_id', 'ts/agent-0', 'ts/agent-02'],
      ['orchestrator names', { type: 'ref/prompt', name: 'orchestrate' }, 'orchestrator', '', null],
      ['goal (free text)', { type: 'ref/prompt', name: 'orchestrate' }, 'goal', 'pl', null],
    ];
    for (const [label, ref, name, value, expect] of cases) {
      await check.step(`completion/complete ${label}`, async () => {
        const answer = await client.complete({ ref, argument: { name, value } });
        const c = answer.completion;
        assert(Array.isArray(c.values) && c.values.length <= 100, 'values');
        if (c.total !== undefined) assert(c.total >= c.values.length, 'total >= values');
        if (expect) assert(c.values.includes(expect), `${expect} in ${JSON.stringify(c.values)}`);
        return `${c.values.length} value(s)${c.total !== undefined ? `, total ${c.total}` : ''}, hasMore ${c.hasMore}`;
      });
    }
    try {
      const answer = await client.complete({ ref: { type: 'ref/resource', uri: 'handbook://nope/{x}' }, argument: { name: 'x', value: '' } });
      check.ok('completion/complete of an unknown template', `${answer.completion.values.length} values`);
    } catch (error) {
      (error instanceof McpError ? check.ok : check.fail).call(check, 'completion/complete of an unknown template', describe(error));
    }
  }

  async logging() {
    const { check, client } = this;
    if (!this.caps.logging) {
      check.ok('logging capability', 'not advertised: setLoggingLevel skipped (hosts check the capability first)');
      await this.rpcError('logging/setLevel when not advertised', ErrorCode.MethodNotFound, () => client.setLoggingLevel('info'));
      return;
    }
    await check.step('logging/setLevel', () => client.setLoggingLevel('debug'));
  }

  notifications() {
    const { check, log } = this;
    const kinds = new Map();
    for (const { dir, message } of log) {
      if (dir === 'in' && message.method && message.id === undefined) kinds.set(message.method, (kinds.get(message.method) ?? 0) + 1);
      if (dir === 'in' && message.method && message.id !== undefined) {
        check.warn('server-to-client request', `${message.method}: a host without that capability answers an error`);
      }
    }
    check.ok('notifications received', [...kinds].map(([k, n]) => `${k} x${n}`).join(', ') || 'none');
    const unknown = [...kinds.keys()].filter((k) => !['notifications/progress', 'notifications/message', 'notifications/cancelled'].includes(k));
    if (unknown.length) check.warn('unexpected notifications', unknown.join(', '));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// older clients: hosts built on earlier SDKs propose earlier protocol versions; the server must answer with the
// version proposed (it supports it) and still serve tools

const OLD_VERSIONS = ['2025-06-18', '2025-03-26', '2024-11-05'];

async function negotiations(check, newTransport, versions) {
  for (const version of versions) {
    const transport = newTransport();
    if (!transport) return;
    const client = new Client({ name: 'older-host', version: '0.0.1' });
    client.closing = false;
    client.onerror = (error) => {
      if (!client.closing) check.warn(`client.onerror (protocol ${version})`, describe(error));
    };
    await check.step(`initialize proposing ${version}`, async () => {
      try {
        await Protocol.prototype.connect.call(client, transport); // without the SDK's own initialize
        const init = await client.request(
          { method: 'initialize', params: { protocolVersion: version, capabilities: {}, clientInfo: { name: 'older-host', version: '0.0.1' } } },
          InitializeResultSchema,
        );
        assert(init.protocolVersion === version, `answered ${init.protocolVersion}`);
        transport.setProtocolVersion?.(version);
        await client.notification({ method: 'notifications/initialized' });
        const listed = await client.request({ method: 'tools/list' }, ListToolsResultSchema);
        const called = await client.request(
          { method: 'tools/call', params: { name: 'list_agents', arguments: { limit: 1 } } },
          CallToolResultSchema,
        );
        assert(!called.isError, textOf(called));
        const output = listed.tools.filter((t) => t.outputSchema).length;
        return `answered ${version}; ${listed.tools.length} tools (${output} with outputSchema), tools/call ok`;
      } finally {
        client.closing = true;
        await client.close();
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// one transport

async function connectedClient(transport, log, check) {
  const client = new Client({ name: 'skillorchestra-ts-check', version: '1.0.0' }, { capabilities: {} });
  client.onerror = (error) => {
    if (!client.closing) check.warn('client.onerror', describe(error));
  };
  client.setNotificationHandler(LoggingMessageNotificationSchema, () => {});
  await client.connect(tapped(transport, log), { timeout: CALL_TIMEOUT_MS });
  return client;
}

function scanServerLog(check, output) {
  const lines = output.split('\n');
  const tracebacks = lines.filter((l) => l.startsWith('Traceback'));
  const errors = lines.filter((l) => /\bERROR\b|\bCRITICAL\b/.test(l));
  if (tracebacks.length) check.fail('server log', `${tracebacks.length} traceback(s):\n${output.slice(output.indexOf('Traceback'), output.indexOf('Traceback') + 2000)}`);
  else if (errors.length) check.warn('server log', errors.slice(0, 5).join(' | '));
  else check.ok('server log', 'no traceback, no ERROR line');
}

async function runTransport(name, ctx) {
  const check = new Check(name);
  const began = Date.now();
  const db = prepareDatabase(ctx.venv, ctx.dir, name, ctx.fake?.apiBase);
  const cli = path.join(ctx.venv, 'bin', 'skillorchestra');
  const log = [];
  let server = null;
  let serverOutput = () => '';
  let transport;
  try {
    if (name === 'stdio') {
      transport = new StdioClientTransport({ command: cli, args: ['serve', '--db', db], env: childEnv(), stderr: 'pipe' });
      let stderr = '';
      transport.stderr.on('data', (d) => (stderr += d));
      serverOutput = () => stderr;
      ctx = {
        ...ctx,
        newTransport: () => {
          const t = new StdioClientTransport({ command: cli, args: ['serve', '--db', db], env: childEnv(), stderr: 'pipe' });
          t.stderr.on('data', (d) => (stderr += d));
          return t;
        },
      };
    } else {
      const port = await freePort();
      const args = ['serve', '--transport', name, '--host', '127.0.0.1', '--port', String(port), '--db', db];
      server = startProcess(cli, args, childEnv({ SKILLORCHESTRA_TOKEN: TOKEN }));
      serverOutput = () => server.output;
      const base = `http://127.0.0.1:${port}`;
      await waitFor(async () => {
        if (server.exitCode !== null) throw new Error(`server exited: ${server.output}`);
        try {
          return (await fetch(`${base}/healthz`)).ok;
        } catch {
          return false;
        }
      }, 30_000, `${base}/healthz`);
      const endpoint = new URL(name === 'http' ? `${base}/mcp` : `${base}/sse`);
      const Transport = name === 'http' ? StreamableHTTPClientTransport : SSEClientTransport;
      // without the token: refused at connect, in a shape a host can tell
      try {
        const anonymous = new Client({ name: 'anonymous', version: '1.0.0' });
        await anonymous.connect(new Transport(endpoint), { timeout: 15_000 });
        check.fail('connect without the token is refused', 'connected');
        await anonymous.close();
      } catch (error) {
        const text = describe(error);
        // the host shows the refusal: streamable HTTP the OAuth-shaped body naming the token (server/http._unauthorized),
        // SSE only the status
        if (/SKILLORCHESTRA_TOKEN|\b401\b/.test(text)) check.ok('connect without the token is refused', text.slice(0, 160));
        else check.fail('connect without the token is refused', `not a 401: ${text}`);
      }
      const authorised = () => new Transport(endpoint, { requestInit: { headers: { Authorization: `Bearer ${TOKEN}` } } });
      transport = authorised();
      ctx = { ...ctx, newTransport: authorised };
    }
    const client = await connectedClient(transport, log, check);
    check.ok('initialize', `connected in ${Date.now() - began} ms`);
    const session = new Session(check, client, log, ajvs(), Boolean(ctx.fake));
    await session.run();
    await negotiations(check, ctx.newTransport ?? (() => null), name === 'stdio' ? ['2025-03-26'] : OLD_VERSIONS);
    if (name === 'http') {
      client.closing = true;
      await check.step('session termination (DELETE)', async () => {
        const id = transport.sessionId;
        assert(id, 'a session id');
        await transport.terminateSession();
        return `session ${id.slice(0, 8)}... ended`;
      });
    }
    client.closing = true;
    await client.close();
  } catch (error) {
    check.fail('session', `${describe(error)}\n${error?.stack ?? ''}`);
    try {
      await transport?.close();
    } catch {}
  }
  if (server) {
    const status = await stopProcess(server);
    if (status.code !== 0 && status.signal !== 'SIGTERM' && status.code !== 143) check.warn('server exit', JSON.stringify(status));
  } else {
    await new Promise((r) => setTimeout(r, 300));
  }
  scanServerLog(check, serverOutput());
  return (Date.now() - began) / 1000;
}

// ---------------------------------------------------------------------------------------------------------------

async function main() {
  const began = Date.now();
  const python = path.join(OPTS.venv, 'bin', 'python');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'skillorchestra-ts-'));
  const warnings = [];
  const warn = console.warn;
  console.warn = (...a) => {
    warnings.push(a.join(' '));
    warn(...a);
  };
  process.on('warning', (w) => warnings.push(`${w.name}: ${w.message}`));
  let fake = null;
  try {
    fake = await startFakeOpenAI(python);
  } catch (error) {
    record('setup', 'fake OpenAI server', 'skip', `delegate not checked: ${describe(error)}`);
  }
  const transports = OPTS.transport === 'all' ? ['stdio', 'http', 'sse'] : [OPTS.transport];
  const seconds = {};
  try {
    for (const name of transports) seconds[name] = await runTransport(name, { venv: OPTS.venv, dir, fake });
  } finally {
    if (fake) await stopProcess(fake);
    rmSync(dir, { recursive: true, force: true });
  }
  for (const w of warnings) record('node', 'console.warn / process warning', 'warn', w);
  const pkg = JSON.parse(readFileSync(path.join(HERE, 'node_modules', '@modelcontextprotocol', 'sdk', 'package.json'), 'utf8'));
  let failed = 0;
  console.log(`@modelcontextprotocol/sdk ${pkg.version} (protocol ${LATEST_PROTOCOL_VERSION}), ${((Date.now() - began) / 1000).toFixed(1)} s`);
  for (const name of [...transports, 'node', 'setup']) {
    const mine = results.filter((r) => r.transport === name);
    if (!mine.length) continue;
    const count = (s) => mine.filter((r) => r.status === s).length;
    failed += count('fail');
    const verdict = count('fail') ? 'FAIL' : 'PASS';
    const time = seconds[name] !== undefined ? ` in ${seconds[name].toFixed(1)} s` : '';
    console.log(`${name}: ${verdict} ${mine.length} checks, ${count('fail')} failed, ${count('warn')} warnings, ${count('skip')} skipped${time}`);
  }
  if (OPTS.json) writeFileSync(OPTS.json, JSON.stringify({ sdk: pkg.version, results }, null, 2));
  process.exitCode = failed ? 1 : 0;
}

main().catch((error) => {
  console.error(error?.stack ?? String(error));
  process.exitCode = 1;
});
