// {{name}}: a wasm-broker plugin in JavaScript (componentize-js).
//
// One service with one plan. Replace the bodies of provision, deprovision,
// bind and unbind with your backend's work, through the capabilities
// broker.toml grants this plugin (redis / sql / http of wasm-broker-sdk.js).
// Every call runs in a fresh instance: keep nothing in globals between calls.

import {
  badRequest,
  config,
  credentials,
  deleted,
  deriveName,
  done,
  log,
  offering,
  parameters,
  parametersSchema,
  password,
  plan,
  plugin,
} from './wasm-broker-sdk.js';

const VERSION = '0.1.0';
// Fixed forever: the platform knows the offering and the plan by these ids.
const SERVICE_ID = '{{service_id}}';
const PLAN_ID = '{{plan_id}}';

export const broker = plugin({
  // `name` must be the .wasm file's stem: {{name}}.wasm, [plugins.{{name}}].
  describe: () => ({ name: '{{name}}', version: VERSION, description: '{{name}}: describe your backend here' }),

  catalog: () => ({
    services: [
      offering(SERVICE_ID, '{{name}}', '{{name}} service', [
        plan(PLAN_ID, 'default', 'The only plan.', {
          maintenanceVersion: VERSION,
          createSchema: parametersSchema({ size_mb: { type: 'integer', minimum: 1, maximum: 1024 } }),
        }),
      ]),
    ],
  }),

  provision(instance) {
    const size = parameters(instance).size_mb ?? 64;
    if (size > 512 && config('allow_large') !== 'true') {
      // An OSB error: the platform gets 400 with this description.
      throw badRequest('parameters.size_mb: above 512 needs allow_large in broker.toml');
    }
    const resource = deriveName('r_', instance.id); // never use the platform id raw
    log(`would create ${resource} (${size} MB)`);
    return done();
  },

  // Must succeed when the resource is already gone or half made.
  deprovision: () => deleted(),

  bind(instance, binding) {
    const user = deriveName('u_', binding.id);
    return credentials('example', config('host', '127.0.0.1'), 1234, {
      username: user,
      password: password(32),
      name: deriveName('r_', instance.id),
    });
  },

  // Must succeed when the credentials are already gone.
  unbind: () => deleted(),
});
