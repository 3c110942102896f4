// js-rabbitmq: a RabbitMQ virtual host per instance and a user per binding
// with permissions on it only, written in JavaScript (componentize-js),
// through the management API the operator maps to the alias `admin`
// (`[plugins.js-rabbitmq.connections]`, an `http` connection).
//
// It needs PUT and DELETE on /api/vhosts/, /api/users/ and /api/permissions/
// (an `administrator` user of the management API). Its names (`jsvh_`,
// `jsu_`) differ from the Rust rabbitmq plugin's, so both can share a server.

import {
  badRequest,
  config,
  credentials,
  deleted,
  deriveName,
  done,
  encodeSegment,
  http,
  internal,
  log,
  offering,
  parameters,
  parametersSchema,
  password,
  plan,
  plugin,
  redact,
  text,
} from './wasm-broker-sdk.js';

const VERSION = '0.1.0';
const ADMIN = 'admin';
const SERVICE_ID = 'cf2d7d30-f6ef-49cd-aa0c-ed289883847f';
const PLAN_ID = '85ec1b69-8cef-4d3d-ae33-b20a9cc59ce8';

const vhostName = (instance) => deriveName('jsvh_', instance.id);
const userName = (binding) => deriveName('jsu_', binding.id);

/** A PUT or DELETE that must succeed; `gone` accepts 404 (a delete of
 * something already deleted, or never made: orphan mitigation). */
function call(method, path, body, what, { gone = false } = {}) {
  const response = http(ADMIN, method, path, body);
  if ((response.status >= 200 && response.status < 300) || (gone && response.status === 404)) {
    return response;
  }
  throw internal(`${what}: the management API answered ${response.status}: ${text(response).slice(0, 200)}`);
}

export const broker = plugin({
  describe: () => ({
    name: 'js-rabbitmq',
    version: VERSION,
    description: 'JavaScript example: a RabbitMQ virtual host per instance, a user per binding',
  }),

  catalog: () => ({
    services: [
      offering(
        SERVICE_ID,
        'js-rabbitmq',
        'RabbitMQ virtual host (JavaScript example plugin)',
        [
          plan(PLAN_ID, 'vhost', 'A virtual host on a shared RabbitMQ.', {
            maintenanceVersion: VERSION,
            createSchema: parametersSchema({
              max_queues: { type: 'integer', minimum: 1, maximum: 10000 },
            }),
          }),
        ],
        { tags: ['rabbitmq', 'amqp', 'example'], metadata: { displayName: 'RabbitMQ (JavaScript example)' } },
      ),
    ],
  }),

  provision(instance) {
    const { max_queues: maxQueues } = parameters(instance);
    if (maxQueues !== undefined && !Number.isInteger(maxQueues)) {
      throw badRequest('parameters.max_queues: must be an integer');
    }
    const vhost = vhostName(instance);
    // PUT is idempotent: a retry finds the virtual host and changes nothing.
    call('PUT', `/api/vhosts/${encodeSegment(vhost)}`, { description: 'wasm-broker js-rabbitmq' }, 'creating the virtual host');
    log(`created virtual host ${vhost}`);
    return done();
  },

  deprovision(instance) {
    const vhost = vhostName(instance);
    // Deleting a virtual host closes its connections and drops its queues.
    call('DELETE', `/api/vhosts/${encodeSegment(vhost)}`, undefined, 'deleting the virtual host', { gone: true });
    log(`deleted virtual host ${vhost}`);
    return deleted();
  },

  bind(instance, binding) {
    const vhost = vhostName(instance);
    const user = userName(binding);
    const secret = password(32);
    try {
      call('PUT', `/api/users/${encodeSegment(user)}`, { password: secret, tags: '' }, 'creating the user');
    } catch (error) {
      throw redact(error, secret);
    }
    call(
      'PUT',
      `/api/permissions/${encodeSegment(vhost)}/${encodeSegment(user)}`,
      { configure: '.*', write: '.*', read: '.*' },
      'granting the user the virtual host',
    );
    log(`created user ${user} on virtual host ${vhost}`);
    const host = config('amqp_host', '127.0.0.1');
    const port = Number(config('amqp_port', '5672'));
    return credentials('amqp', host, port, { username: user, password: secret, name: vhost, vhost });
  },

  unbind(instance, binding) {
    const user = userName(binding);
    // Deleting a user closes its connections.
    call('DELETE', `/api/users/${encodeSegment(user)}`, undefined, 'deleting the user', { gone: true });
    log(`deleted user ${user}`);
    return deleted();
  },
});
