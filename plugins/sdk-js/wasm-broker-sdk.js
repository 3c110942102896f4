// Helpers for wasm-broker plugins written in JavaScript (componentize-js).
//
// The JavaScript counterpart of the Rust SDK's helpers (plugins/sdk/src):
// the WIT records with their optional fields defaulted, OSB errors thrown
// the way the generated bindings want them, names derived from platform
// ids, passwords, credentials, and the capabilities with their errors
// turned into OSB errors. No dependencies: one file to put beside a
// plugin's `app.js` (componentize-js follows relative imports).
//
// How the bindings map WIT to JavaScript: records are objects with
// camelCase fields (`instancesRetrievable`), `option<T>` is `T` or
// `undefined`, variants are `{tag: 'kebab-name', val}`, enums are their
// kebab-case names as strings, `list<u8>` is a Uint8Array. An export whose
// WIT result is `result<T, broker-error>` returns `T`, and fails by
// throwing an object whose own `payload` is the error value (or the error
// value itself); any other thrown Error traps the call, which the host
// answers with an OSB 500 naming the plugin.

import { log as hostLog } from 'wasm-broker:plugin/log@0.1.0';
import { get as configGet } from 'wasm-broker:plugin/config@0.1.0';
import * as redisHost from 'wasm-broker:plugin/redis@0.1.0';
import * as httpHost from 'wasm-broker:plugin/http@0.1.0';
import * as sqlHost from 'wasm-broker:plugin/sql@0.1.0';

export const JSON_SCHEMA_DRAFT_07 = 'http://json-schema.org/draft-07/schema#';

// --- errors ----------------------------------------------------------------

/** An OSB error: `throw new BrokerError('bad-request', 'parameters.x: ...')`. */
export class BrokerError extends Error {
  constructor(tag, description) {
    super(`${tag}: ${description}`);
    // The bindings take the thrown value's own `payload` as the WIT error.
    Object.defineProperty(this, 'payload', { value: { tag, val: description }, enumerable: true });
  }
}

/** 400: invalid input; name the offending field. */
export const badRequest = (text) => new BrokerError('bad-request', text);
/** 409: the resource exists with different attributes. */
export const conflict = (text) => new BrokerError('conflict', text);
/** 410: the resource to delete does not exist (any more). */
export const gone = (text) => new BrokerError('gone', text);
/** 404: the resource to fetch does not exist. */
export const notFound = (text) => new BrokerError('not-found', text);
/** 422 without an error code: understood, but not possible. */
export const unprocessable = (text) => new BrokerError('unprocessable', text);
/** 500: the backend failed. Never put a secret in the description. */
export const internal = (text) => new BrokerError('internal', text);

/** `error` with every occurrence of `secret` masked. */
export function redact(error, secret) {
  if (!(error instanceof BrokerError) || !secret) return error;
  return new BrokerError(error.payload.tag, error.payload.val.split(secret).join('[redacted]'));
}

/** Runs a capability call; its error (`{tag, val}` in the thrown value's
 * `payload`) becomes an OSB 500 naming the connection. */
function capability(name, connection, call) {
  try {
    return call();
  } catch (error) {
    const payload = error && error.payload;
    if (!payload || typeof payload.tag !== 'string') throw error;
    const detail = payload.val === undefined ? '' : `: ${payload.val}`;
    const text =
      payload.tag === 'denied'
        ? `refused by the grant's policy${detail}`
        : payload.tag === 'not-granted'
          ? `not granted to this plugin (broker.toml [plugins.<name>.connections])${detail}`
          : `${payload.tag}${detail}`;
    throw internal(`${name} connection '${connection}': ${text}`);
  }
}

// --- names and secrets -----------------------------------------------------

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** The SHA-256 of `text` (UTF-8) in lower-case hex. Synchronous, unlike
 * `crypto.subtle.digest`, which an export cannot await. */
export function sha256Hex(text) {
  const data = new TextEncoder().encode(text);
  const length = ((data.length + 9 + 63) >> 6) << 6;
  const bytes = new Uint8Array(length);
  bytes.set(data);
  bytes[data.length] = 0x80;
  const view = new DataView(bytes.buffer);
  view.setUint32(length - 8, Math.floor(data.length / 0x20000000));
  view.setUint32(length - 4, (data.length << 3) >>> 0);
  const h = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const w = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let offset = 0; offset < length; offset += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(offset + i * 4);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    let [a, b, c, d, e, f, g, k] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
      const t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      k = g; g = f; f = e; e = (d + t1) >>> 0;
      d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
  }
  return Array.from(h, (word) => word.toString(16).padStart(8, '0')).join('');
}

/** `prefix` + the first 16 hex digits of the id's SHA-256, only `[a-z0-9_]`,
 * at most `maxLen` characters (the prefix is shortened, never the hash): the
 * Rust SDK's `derive_name`, the same for the same id, so retries and deletes
 * find what a first call made. */
export function deriveName(prefix, id, maxLen = 64) {
  const hashLen = Math.min(16, maxLen);
  const cleaned = prefix.toLowerCase().replace(/[^a-z0-9_]/g, '_');
  return cleaned.slice(0, maxLen - hashLen) + sha256Hex(id).slice(0, hashLen);
}

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/** `length` characters of `[A-Za-z0-9]` from the host's CSPRNG
 * (`crypto.getRandomValues` reads `wasi:random`); bytes of 248 and above are
 * dropped so every character is equally likely. */
export function password(length = 32) {
  let out = '';
  const random = new Uint8Array(64);
  while (out.length < length) {
    crypto.getRandomValues(random);
    for (const byte of random) {
      if (byte < 248 && out.length < length) out += ALPHABET[byte % 62];
    }
  }
  return out;
}

/** `text` percent-encoded as one URL path segment (`/` included). */
export const encodeSegment = (text) => encodeURIComponent(text);

// --- parameters --------------------------------------------------------------

/** The parameters of an instance, binding or changes as an object (`{}` when
 * none were sent); the host has validated them against the plan's schema. */
export function parameters(record) {
  if (record.parameters === undefined || record.parameters === null) return {};
  let value;
  try {
    value = JSON.parse(record.parameters);
  } catch (error) {
    throw badRequest(`parameters: not JSON: ${error.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw badRequest('parameters: must be a JSON object');
  }
  return value;
}

/** A draft-07 schema for a parameters object with these properties and no
 * others, as the JSON text WIT wants. */
export function parametersSchema(properties) {
  return JSON.stringify({
    $schema: JSON_SCHEMA_DRAFT_07,
    type: 'object',
    additionalProperties: false,
    properties,
  });
}

// --- the catalog, every optional field defaulted -------------------------------

export function plan(id, name, description, options = {}) {
  const { createSchema, updateSchema, bindingSchema } = options;
  return {
    id,
    name,
    description,
    metadata: options.metadata === undefined ? undefined : JSON.stringify(options.metadata),
    free: options.free ?? true,
    bindable: options.bindable,
    planUpdateable: options.planUpdateable,
    bindingRotatable: options.bindingRotatable ?? false,
    schemas:
      createSchema || updateSchema || bindingSchema
        ? { instanceCreate: createSchema, instanceUpdate: updateSchema, bindingCreate: bindingSchema }
        : undefined,
    maximumPollingDuration: undefined,
    maintenanceInfo:
      options.maintenanceVersion === undefined
        ? undefined
        : { version: options.maintenanceVersion, description: 'plugin build' },
  };
}

/** A bindable offering, instances and bindings retrievable, context updates
 * allowed: what `plugin()`'s defaults honour. */
export function offering(id, name, description, plans, options = {}) {
  return {
    id,
    name,
    description,
    tags: options.tags ?? [],
    requires: [],
    bindable: true,
    instancesRetrievable: true,
    bindingsRetrievable: true,
    allowContextUpdates: true,
    planUpdateable: options.planUpdateable ?? false,
    metadata: options.metadata === undefined ? undefined : JSON.stringify(options.metadata),
    dashboardClient: undefined,
    plans,
  };
}

// --- outcomes ----------------------------------------------------------------

/** A provision or update finished now. */
export const done = () => ({ tag: 'done', val: { dashboardUrl: undefined, metadata: undefined } });
/** A deprovision or unbind finished now. */
export const deleted = () => ({ tag: 'done' });

/** A finished bind handing out `uri` (every part percent-encoded),
 * `hostname`/`host`, `port`, `name`, `username`, `password` and `fields`,
 * with `host:port` as the binding's endpoint: the Rust SDK's `Credentials`. */
export function credentials(scheme, host, port, { username, password: secret, name, ...fields } = {}) {
  const userinfo =
    username === undefined ? '' : `${encodeSegment(username)}:${encodeSegment(secret ?? '')}@`;
  const authority = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  const path = name === undefined ? '' : `/${encodeSegment(name)}`;
  const body = { uri: `${scheme}://${userinfo}${authority}${path}`, hostname: host, host, port };
  if (name !== undefined) body.name = name;
  if (username !== undefined) Object.assign(body, { username, password: secret });
  Object.assign(body, fields);
  return {
    tag: 'done',
    val: {
      credentials: JSON.stringify(body),
      metadata: undefined,
      syslogDrainUrl: undefined,
      routeServiceUrl: undefined,
      volumeMounts: [],
      endpoints: [{ host, ports: [String(port)], protocol: 'tcp' }],
    },
  };
}

// --- capabilities, errors as OSB 500s ------------------------------------------

/** To the broker's log, tagged with the plugin and the request. Never log credentials. */
export const log = (message, level = 'info') => hostLog(level, message);

/** `[plugins.<name>.config] key`: strings as they are, other TOML values as JSON text. */
export const config = (key, fallback) => configGet(key) ?? fallback;

/** One Redis command, e.g. `redis('admin', 'ACL', 'DELUSER', user)`. */
export function redis(connection, ...args) {
  const encoder = new TextEncoder();
  const encoded = args.map((arg) => (typeof arg === 'string' ? encoder.encode(arg) : arg));
  return capability('redis', connection, () => redisHost.command(connection, encoded));
}

/** One SQL statement (its own transaction and session). */
export const sql = (connection, statement, params = []) =>
  capability('sql', connection, () => sqlHost.query(connection, statement, params));

/** One request below the connection's base URL; `body` is sent as JSON. Any
 * status comes back (`{status, headers, body}`): check `status`, and read
 * the body with `text(response)` or `json(response)`. */
export function http(connection, method, path, body) {
  const headers = [['accept', 'application/json']];
  let data;
  if (body !== undefined) {
    headers.push(['content-type', 'application/json']);
    data = new TextEncoder().encode(JSON.stringify(body));
  }
  const request = { method: method.toLowerCase(), path, headers, body: data };
  return capability('http', connection, () => httpHost.send(connection, request));
}

export const httpServer = (connection) =>
  capability('http', connection, () => httpHost.getServerInfo(connection));

export const text = (response) => new TextDecoder().decode(response.body);

// --- the exports, with the Rust SDK's defaults ----------------------------------

/** The `broker` export of a synchronous plugin: `export const broker =
 * plugin({describe, catalog, provision, deprovision, bind, unbind})`. The
 * defaults: `update` accepts context-only and maintenance-only changes and
 * answers 422 to plan or parameter changes; `getInstance` shows the recorded
 * parameters; the asynchronous calls answer 500. */
export function plugin(functions) {
  const noAsync = () => {
    throw internal('this plugin does not run asynchronous operations');
  };
  return {
    update(instance, changes) {
      if (changes.planId === undefined && changes.parameters === undefined) return done();
      throw unprocessable(
        `plugin ${functions.describe().name} cannot change the plan or the parameters of an instance`,
      );
    },
    lastOperation: noAsync,
    lastBindingOperation: noAsync,
    getInstance: (instance) => ({
      dashboardUrl: undefined,
      parameters: instance.parameters,
      metadata: undefined,
    }),
    getBinding: noAsync,
    ...functions,
  };
}
