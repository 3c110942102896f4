"""{{name}}: a wasm-broker plugin in Python (componentize-py).

One service with one plan. Replace the bodies of provision, deprovision,
bind and unbind with your backend's work, through the capabilities
broker.toml grants this plugin (wasm_broker_sdk.redis / sql / http ...).
Every call runs in a fresh instance: keep nothing in globals between calls.
"""

from wasm_broker_sdk import (
    BadRequest,
    Plugin,
    config,
    credentials,
    deleted,
    derive_name,
    done,
    log,
    offering,
    parameters,
    parameters_schema,
    password,
    plan,
)
from wit_world.imports import types as t

VERSION = "0.1.0"
# Fixed forever: the platform knows the offering and the plan by these ids.
SERVICE_ID = "{{service_id}}"
PLAN_ID = "{{plan_id}}"


class Broker(Plugin):
    def describe(self) -> t.PluginInfo:
        # `name` must be the .wasm file's stem: {{name}}.wasm, [plugins.{{name}}].
        return t.PluginInfo("{{name}}", VERSION, "{{name}}: describe your backend here")

    def catalog(self) -> t.Catalog:
        schema = parameters_schema({"size_mb": {"type": "integer", "minimum": 1, "maximum": 1024}})
        default = plan(PLAN_ID, "default", "The only plan.", maintenance_version=VERSION, create_schema=schema)
        return t.Catalog([offering(SERVICE_ID, "{{name}}", "{{name}} service", [default])])

    def provision(self, instance, info):
        size = parameters(instance).get("size_mb", 64)
        if size > 512 and config("allow_large") != "true":
            # An OSB error: the platform gets 400 with this description.
            raise BadRequest("parameters.size_mb: above 512 needs allow_large in broker.toml")
        resource = derive_name("r_", instance.id)  # never use the platform id raw
        log(f"would create {resource} ({size} MB)")
        return done()

    def deprovision(self, instance, info):
        # Must succeed when the resource is already gone or half made.
        return deleted()

    def bind(self, instance, binding, info):
        user = derive_name("u_", binding.id)
        return credentials(
            "example", config("host", "127.0.0.1"), 1234,
            username=user, password=password(32), name=derive_name("r_", instance.id),
        )

    def unbind(self, instance, binding, info):
        # Must succeed when the credentials are already gone.
        return deleted()
