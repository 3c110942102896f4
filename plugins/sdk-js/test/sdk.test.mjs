// Unit tests of the helpers, natively: `node --import ./test/register.mjs --test test/`
// (cargo xtask test runs them).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';

import {
  BrokerError,
  badRequest,
  credentials,
  deriveName,
  http,
  offering,
  parameters,
  password,
  plan,
  plugin,
  redact,
  sha256Hex,
} from '../wasm-broker-sdk.js';

test('sha256Hex matches SHA-256 across block boundaries and UTF-8', () => {
  for (const text of ['', 'abc', 'x'.repeat(55), 'x'.repeat(56), 'x'.repeat(64), 'é'.repeat(99)]) {
    assert.equal(sha256Hex(text), createHash('sha256').update(text).digest('hex'));
  }
});

test('deriveName gives the Rust SDK names', () => {
  // plugins/sdk/src/names.rs: prefix + 16 hex digits of the id's SHA-256.
  const hash = createHash('sha256').update('inst-1').digest('hex').slice(0, 16);
  assert.equal(deriveName('jsvh_', 'inst-1'), `jsvh_${hash}`);
  assert.equal(deriveName('A-b', 'inst-1'), `a_b${hash}`);
  assert.equal(deriveName('long_prefix_', 'inst-1', 20), `long${hash}`);
  assert.match(deriveName('x', 'any id / with ; characters'), /^x[0-9a-f]{16}$/);
});

test('passwords have the length and alphabet, and differ', () => {
  for (const length of [0, 1, 32, 200]) {
    assert.match(password(length), new RegExp(`^[A-Za-z0-9]{${length}}$`));
  }
  assert.notEqual(password(32), password(32));
});

test('errors carry the WIT error as payload, and redact masks secrets', () => {
  const error = badRequest('parameters.x: bad');
  assert.ok(error instanceof BrokerError);
  assert.deepEqual(error.payload, { tag: 'bad-request', val: 'parameters.x: bad' });
  const masked = redact(new BrokerError('internal', 'near pw1 and pw1'), 'pw1');
  assert.deepEqual(masked.payload, { tag: 'internal', val: 'near [redacted] and [redacted]' });
});

test('credentials percent-encode the uri and list the endpoint', () => {
  const outcome = credentials('amqp', 'mq.example', 5672, {
    username: 'u/1',
    password: 'p w',
    name: 'v/h',
    vhost: 'v/h',
  });
  assert.equal(outcome.tag, 'done');
  assert.deepEqual(JSON.parse(outcome.val.credentials), {
    uri: 'amqp://u%2F1:p%20w@mq.example:5672/v%2Fh',
    hostname: 'mq.example',
    host: 'mq.example',
    port: 5672,
    name: 'v/h',
    username: 'u/1',
    password: 'p w',
    vhost: 'v/h',
  });
  assert.deepEqual(outcome.val.endpoints, [{ host: 'mq.example', ports: ['5672'], protocol: 'tcp' }]);
  const ipv6 = JSON.parse(credentials('redis', '::1', 6379).val.credentials);
  assert.equal(ipv6.uri, 'redis://[::1]:6379');
});

test('parameters: {} when none, 400 when not an object', () => {
  assert.deepEqual(parameters({ parameters: undefined }), {});
  assert.deepEqual(parameters({ parameters: '{"a":1}' }), { a: 1 });
  assert.throws(() => parameters({ parameters: '[1]' }), (e) => e.payload.tag === 'bad-request');
});

test('the catalog builders give every field', () => {
  const p = plan('p', 'n', 'd', { maintenanceVersion: '1.0.0' });
  assert.deepEqual(Object.keys(p).sort(), [
    'bindable', 'bindingRotatable', 'description', 'free', 'id', 'maintenanceInfo',
    'maximumPollingDuration', 'metadata', 'name', 'planUpdateable', 'schemas',
  ]);
  const o = offering('s', 'n', 'd', [p]);
  assert.equal(o.bindable, true);
  assert.equal(o.planUpdateable, false);
});

test('a capability error becomes an internal error naming the connection', () => {
  globalThis.hostAnswers = { send: Object.assign(new Error('x'), { payload: { tag: 'denied', val: 'GET /api' } }) };
  assert.throws(
    () => http('admin', 'GET', '/api/overview'),
    (e) => e.payload.tag === 'internal' && e.payload.val.includes("'admin'") && e.payload.val.includes('policy'),
  );
  globalThis.hostAnswers = {};
});

test('plugin() defaults update to 422 for parameter changes', () => {
  const broker = plugin({ describe: () => ({ name: 'demo' }) });
  assert.equal(broker.update({}, { planId: undefined, parameters: undefined }).tag, 'done');
  assert.throws(() => broker.update({}, { parameters: '{}' }), (e) => e.payload.tag === 'unprocessable');
  assert.throws(() => broker.getBinding(), (e) => e.payload.tag === 'internal');
});
