"""python-redis: a Redis key prefix per instance and an ACL user per binding
limited to it, written in Python (componentize-py), on the server broker.toml
maps to the alias `admin` (`[plugins.python-redis.connections]`).

The admin account needs PING, SCAN and UNLINK on keys `pyr_*`, and ACL
SETUSER / DELUSER / SAVE (tests/services/roles.sh makes `wasm_broker_redis_py`).
The names differ from the Rust redis plugin's (`inst_`, `u_`), so both can
share a server.
"""

from wasm_broker_sdk import (
    Internal,
    Plugin,
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
    redis,
    redis_server,
    sha256_hex,
)
from componentize_py_types import Err
from wit_world.imports import redis as r
from wit_world.imports.log import Level
from wit_world.imports import types as t

VERSION = "0.1.0"
ADMIN = "admin"
SERVICE_ID = "0e48da9c-86ab-4997-ae99-376a05a2ab4f"
PLAN_ID = "b2256af7-ff2a-4754-8bac-3a4a13c61032"

# What a binding may do: data commands on its own keys and channels; then
# the server-wide and keyspace-wide ones removed (the Rust plugin's rules).
COMMAND_RULES = [
    "-@all", "+@read", "+@write", "+@keyspace", "+@pubsub", "+@transaction",
    "+@connection", "-@dangerous", "-@admin", "-scan", "-randomkey", "-dbsize",
    "-pubsub", "-select", "-move", "-copy", "-function",
]


def key_prefix(instance: t.Instance) -> str:
    # Only [a-z0-9_]: no glob characters in SCAN MATCH or ACL patterns.
    return derive_name("pyr_", instance.id) + ":"


def user_name(binding: t.Binding) -> str:
    return derive_name("pyu_", binding.id)


class Broker(Plugin):
    def describe(self) -> t.PluginInfo:
        return t.PluginInfo(
            "python-redis", VERSION, "Python example: a Redis key prefix per instance, an ACL user per binding"
        )

    def catalog(self) -> t.Catalog:
        schema = parameters_schema(
            {"maxmemory_hint_mb": {"type": "integer", "minimum": 1, "maximum": 1024}}
        )
        shared = plan(
            PLAN_ID,
            "shared",
            "A key prefix on a shared Redis.",
            maintenance_version=VERSION,
            create_schema=schema,
            binding_rotatable=True,
        )
        return t.Catalog(
            [
                offering(
                    SERVICE_ID,
                    "python-redis",
                    "Redis key prefix (Python example plugin)",
                    [shared],
                    tags=["redis", "key-value", "example"],
                    metadata={"displayName": "Redis (Python example)"},
                )
            ]
        )

    def provision(self, instance, info):
        hint = parameters(instance).get("maxmemory_hint_mb")
        redis(ADMIN, "PING")  # the grant works: fail now rather than at bind
        log(f"reserved key prefix {key_prefix(instance)} (hint {hint} MB)")
        return done()

    def deprovision(self, instance, info):
        pattern = key_prefix(instance) + "*"
        cursor, removed = "0", 0
        while True:
            reply = redis(ADMIN, "SCAN", cursor, "MATCH", pattern, "COUNT", "500")
            cursor, keys = scan_page(reply)
            if keys:
                redis(ADMIN, "UNLINK", *keys)
                removed += len(keys)
            if cursor == "0":
                break
        log(f"deleted {removed} keys under {pattern}")
        return deleted()

    def bind(self, instance, binding, info):
        server = redis_server(ADMIN)
        prefix, user, secret = key_prefix(instance), user_name(binding), password(32)
        # `reset` first, so a retry replaces what a failed attempt set; the
        # password goes as its SHA-256, never in clear in the command.
        redis(
            ADMIN, "ACL", "SETUSER", user, "reset", "on", "#" + sha256_hex(secret),
            f"~{prefix}*", f"&{prefix}*", *COMMAND_RULES,
        )
        save_acl()
        log(f"created ACL user {user} for {prefix}*")
        return credentials(
            "rediss" if server.tls else "redis", server.host, server.port,
            username=user, password=secret, prefix=prefix,
        )

    def unbind(self, instance, binding, info):
        # DELUSER also disconnects the user's clients; 0 if already gone.
        redis(ADMIN, "ACL", "DELUSER", user_name(binding))
        save_acl()
        return deleted()


def scan_page(reply: r.Reply):
    """SCAN's `[cursor, [keys]]`, as the redis capability hands it over."""
    if not isinstance(reply, r.Reply_Array) or len(reply.value) != 2:
        raise Internal(f"unexpected SCAN reply {reply!r}")
    cursor, keys = reply.value
    return cursor.value.decode(), list(keys.value)


def save_acl() -> None:
    """Best effort: without an aclfile the server cannot save, and ACL users
    live until it restarts."""
    try:
        redis(ADMIN, "ACL", "SAVE")
    except Err as error:  # wasm_broker_sdk.redis raises Internal: Err(BrokerError_Internal(text))
        log(f"ACL users are not persisted (configure an aclfile): {error.value.value}", Level.WARN)
