"""Helpers for wasm-broker plugins written in Python (componentize-py).

The Python counterpart of the Rust SDK's helpers (plugins/sdk/src): the
WIT records with their optional fields defaulted, OSB errors raised the
way the generated bindings want them, names derived from platform ids,
passwords, credentials, and the capabilities with their errors turned
into OSB errors. It imports only the bindings componentize-py generates
for the world `service-plugin` (package `wit_world`) and the standard
library, so it is one file to put beside a plugin's `app.py`.

    from wasm_broker_sdk import Plugin, BadRequest, derive_name, password, credentials

    class Broker(Plugin):   # componentize-py looks for the class `Broker` in the app module
        def provision(self, instance, info):
            params = parameters(instance)
            ...
            return done()
"""

import hashlib
import json
import secrets
import urllib.parse
from typing import Any, Dict, List, Optional, Sequence, Union

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config as _config
from wit_world.imports import http as _http
from wit_world.imports import kv as _kv
from wit_world.imports import log as _log
from wit_world.imports import redis as _redis
from wit_world.imports import sql as _sql
from wit_world.imports import types as t

JSON_SCHEMA_DRAFT_07 = "http://json-schema.org/draft-07/schema#"

# --- errors -------------------------------------------------------------------
# An export returning `result<_, broker-error>` fails by raising
# `componentize_py_types.Err(<a BrokerError_* case>)`; any other exception
# traps the call, which the host answers with an OSB 500 naming the plugin.
# These build that `Err`, one function per OSB error:
#     raise BadRequest("parameters.size: must be at most 64")


def BadRequest(description: str) -> Err:  # noqa: N802 (reads as an exception)
    """400: invalid input; name the offending field."""
    return Err(t.BrokerError_BadRequest(description))


def Conflict(description: str) -> Err:  # noqa: N802
    """409: the resource exists with different attributes."""
    return Err(t.BrokerError_Conflict(description))


def Gone(description: str) -> Err:  # noqa: N802
    """410: the resource to delete does not exist (any more)."""
    return Err(t.BrokerError_Gone(description))


def NotFound(description: str) -> Err:  # noqa: N802
    """404: the resource to fetch does not exist."""
    return Err(t.BrokerError_NotFound(description))


def Unprocessable(description: str) -> Err:  # noqa: N802
    """422 without an error code: understood, but not possible."""
    return Err(t.BrokerError_Unprocessable(description))


def Internal(description: str) -> Err:  # noqa: N802
    """500: the backend failed. Never put a secret in the description."""
    return Err(t.BrokerError_Internal(description))


def redact(error: Err, secret: str) -> Err:
    """`error` with every occurrence of `secret` masked (a backend may quote a
    password back in its error message)."""
    value = error.value
    if not secret or not hasattr(value, "value") or not isinstance(value.value, str):
        return error
    return Err(type(value)(value.value.replace(secret, "[redacted]")))


def _capability_error(capability: str, connection: str, error: Err) -> Err:
    """A capability's error (`Err(<capability>.Error_*)`) as an OSB 500 naming
    the connection, as the Rust SDK's capability wrappers do."""
    case = error.value
    kind = type(case).__name__.removeprefix("Error_")
    detail = getattr(case, "value", None)
    if kind == "Denied":
        text = f"refused by the grant's policy: {detail}"
    elif kind == "NotGranted":
        text = f"not granted to this plugin (broker.toml [plugins.<name>.connections]): {detail}"
    else:
        text = f"{kind}: {detail}" if detail is not None else kind
    return Internal(f"{capability} connection {connection!r}: {text}")


# --- names and secrets --------------------------------------------------------


def sha256_hex(text: str) -> str:
    """The SHA-256 of `text` in lower-case hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def derive_name(prefix: str, id: str, max_len: int = 64) -> str:
    """`prefix` + the first 16 hex digits of the id's SHA-256, only
    `[a-z0-9_]`, at most `max_len` characters (the prefix is shortened, never
    the hash): the same name as the Rust SDK's `derive_name`, the same for
    the same id, so retries and deletes find what a first call made."""
    hash_len = min(16, max_len)
    cleaned = "".join(
        c if ("a" <= c <= "z" or "0" <= c <= "9" or c == "_") else "_"
        for c in prefix.lower()
    )
    return cleaned[: max_len - hash_len] + sha256_hex(id)[:hash_len]


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def password(length: int = 32) -> str:
    """`length` characters of `[A-Za-z0-9]` from the host's CSPRNG
    (`secrets` reads `wasi:random`): safe in a URI, JSON, SQL or a shell."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def encode_segment(text: str) -> str:
    """`text` percent-encoded as one URL path segment (`/` included)."""
    return urllib.parse.quote(text, safe="")


# --- parameters ---------------------------------------------------------------


def parameters(record: Union[t.Instance, t.Binding, t.InstanceChanges]) -> Dict[str, Any]:
    """The record's parameters as a dict (`{}` when none were sent). The host
    has validated them against the plan's schema already."""
    if record.parameters is None:
        return {}
    try:
        value = json.loads(record.parameters)
    except ValueError as error:
        raise BadRequest(f"parameters: not JSON: {error}")
    if not isinstance(value, dict):
        raise BadRequest("parameters: must be a JSON object")
    return value


def parameters_schema(properties: Dict[str, Any]) -> str:
    """A draft-07 schema for a parameters object with these properties and no
    others (a typo is a 400, not silently ignored), as the JSON text WIT wants."""
    return json.dumps(
        {
            "$schema": JSON_SCHEMA_DRAFT_07,
            "type": "object",
            "additionalProperties": False,
            "properties": properties,
        }
    )


# --- the catalog, every optional field defaulted ------------------------------


def plan(
    id: str,
    name: str,
    description: str,
    *,
    maintenance_version: Optional[str] = None,
    create_schema: Optional[str] = None,
    update_schema: Optional[str] = None,
    binding_schema: Optional[str] = None,
    metadata: Optional[Dict[str, Any]] = None,
    free: bool = True,
    bindable: Optional[bool] = None,
    plan_updateable: Optional[bool] = None,
    binding_rotatable: bool = False,
) -> t.ServicePlan:
    schemas = None
    if create_schema or update_schema or binding_schema:
        schemas = t.Schemas(create_schema, update_schema, binding_schema)
    return t.ServicePlan(
        id=id,
        name=name,
        description=description,
        metadata=None if metadata is None else json.dumps(metadata),
        free=free,
        bindable=bindable,
        plan_updateable=plan_updateable,
        binding_rotatable=binding_rotatable,
        schemas=schemas,
        maximum_polling_duration=None,
        maintenance_info=None
        if maintenance_version is None
        else t.MaintenanceInfo(maintenance_version, "plugin build"),
    )


def offering(
    id: str,
    name: str,
    description: str,
    plans: List[t.ServicePlan],
    *,
    tags: Sequence[str] = (),
    metadata: Optional[Dict[str, Any]] = None,
    plan_updateable: bool = False,
) -> t.ServiceOffering:
    """A bindable offering, instances and bindings retrievable, context
    updates allowed: what `Plugin`'s defaults honour."""
    return t.ServiceOffering(
        id=id,
        name=name,
        description=description,
        tags=list(tags),
        requires=[],
        bindable=True,
        instances_retrievable=True,
        bindings_retrievable=True,
        allow_context_updates=True,
        plan_updateable=plan_updateable,
        metadata=None if metadata is None else json.dumps(metadata),
        dashboard_client=None,
        plans=plans,
    )


# --- outcomes -----------------------------------------------------------------


def done() -> t.InstanceOutcome:
    """A provision or update finished now."""
    return t.InstanceOutcome_Done(t.InstanceResult(None, None))


def deleted() -> t.DeletionOutcome:
    """A deprovision or unbind finished now."""
    return t.DeletionOutcome_Done()


def credentials(
    scheme: str,
    host: str,
    port: int,
    *,
    username: Optional[str] = None,
    password: Optional[str] = None,
    name: Optional[str] = None,
    **fields: Any,
) -> t.BindOutcome:
    """A finished bind handing out `uri` (every part percent-encoded),
    `hostname`/`host`, `port`, `name`, `username`, `password` and `fields`,
    with `host:port` as the binding's endpoint: the Rust SDK's `Credentials`."""
    userinfo = ""
    if username is not None:
        userinfo = f"{encode_segment(username)}:{encode_segment(password or '')}@"
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    path = "" if name is None else "/" + encode_segment(name)
    body: Dict[str, Any] = {
        "uri": f"{scheme}://{userinfo}{authority}{path}",
        "hostname": host,
        "host": host,
        "port": port,
    }
    if name is not None:
        body["name"] = name
    if username is not None:
        body["username"] = username
        body["password"] = password
    body.update(fields)
    endpoint = t.Endpoint(host, [str(port)], t.EndpointProtocol.TCP)
    return t.BindOutcome_Done(t.BindingResult(json.dumps(body), None, None, None, [], [endpoint]))


# --- capabilities, errors as OSB 500s -----------------------------------------


def log(message: str, level: _log.Level = _log.Level.INFO) -> None:
    """To the broker's log, tagged with the plugin and the request. Never log
    credentials."""
    _log.log(level, message)


def config(key: str, default: Optional[str] = None) -> Optional[str]:
    """`[plugins.<name>.config] key` of broker.toml: strings as they are,
    other TOML values as JSON text."""
    value = _config.get(key)
    return default if value is None else value


def redis(connection: str, *args: Union[str, bytes]) -> _redis.Reply:
    """One Redis command, e.g. `redis("admin", "ACL", "DELUSER", user)`."""
    encoded = [arg.encode() if isinstance(arg, str) else arg for arg in args]
    try:
        return _redis.command(connection, encoded)
    except Err as error:
        raise _capability_error("redis", connection, error)


def redis_server(connection: str) -> _redis.ServerInfo:
    try:
        return _redis.get_server_info(connection)
    except Err as error:
        raise _capability_error("redis", connection, error)


def sql(connection: str, statement: str, params: Sequence[_sql.Value] = ()) -> _sql.QueryResult:
    """One SQL statement (its own transaction and session)."""
    try:
        return _sql.query(connection, statement, list(params))
    except Err as error:
        raise _capability_error("sql", connection, error)


_METHODS = {m.name: m for m in _http.Method}


def http(
    connection: str, method: str, path: str, body: Any = None
) -> _http.Response:
    """One request below the connection's base URL; `body` is sent as JSON.
    Any status comes back: check `response.status`."""
    headers = [("accept", "application/json")]
    data = None
    if body is not None:
        headers.append(("content-type", "application/json"))
        data = json.dumps(body).encode()
    request = _http.Request(_METHODS[method.upper()], path, headers, data)
    try:
        return _http.send(connection, request)
    except Err as error:
        raise _capability_error("http", connection, error)


def http_server(connection: str) -> _http.ServerInfo:
    try:
        return _http.get_server_info(connection)
    except Err as error:
        raise _capability_error("http", connection, error)


def kv_get(key: str) -> Optional[bytes]:
    try:
        return _kv.get(key)
    except Err as error:
        raise _capability_error("kv", "kv", error)


def kv_set(key: str, value: bytes) -> None:
    try:
        _kv.set(key, value)
    except Err as error:
        raise _capability_error("kv", "kv", error)


# --- the exports, with the Rust SDK's defaults --------------------------------


class Plugin(exports.Broker):
    """Base class of a synchronous plugin: subclass it as `Broker` and
    implement `describe`, `catalog`, `provision`, `deprovision`, `bind` and
    `unbind`. The defaults: `update` accepts context-only and
    maintenance-only changes and answers 422 to plan or parameter changes;
    `get_instance` shows the recorded parameters; the asynchronous calls
    answer 500."""

    def update(self, instance, changes, info):
        if changes.plan_id is None and changes.parameters is None:
            return done()
        raise Unprocessable(
            f"plugin {self.describe().name} cannot change the plan or the parameters of an instance"
        )

    def last_operation(self, instance, kind, operation):
        raise Internal("this plugin does not run asynchronous operations")

    def last_binding_operation(self, instance, binding, kind, operation):
        raise Internal("this plugin does not run asynchronous operations")

    def get_instance(self, instance):
        return t.InstanceDetails(None, instance.parameters, None)

    def get_binding(self, instance, binding):
        raise Internal("this plugin does not run asynchronous operations")
