"""Unit tests of the helpers, natively (cargo xtask test runs them): with the
bindings componentize-py generates on the module path, and the host's
functions replaced by stubs.

    componentize-py -d wit/v0.1.0 -w service-plugin bindings /tmp/bindings
    PYTHONPATH=/tmp/bindings:plugins/sdk-python python3 -m unittest discover -s plugins/sdk-python
"""

import hashlib
import json
import re
import unittest

import wasm_broker_sdk as sdk
from componentize_py_types import Err
from wit_world.imports import http as host_http
from wit_world.imports import types as t


class Names(unittest.TestCase):
    def test_derive_name_gives_the_rust_sdk_names(self):
        digest = hashlib.sha256(b"inst-1").hexdigest()[:16]
        self.assertEqual(sdk.derive_name("pyr_", "inst-1"), "pyr_" + digest)
        self.assertEqual(sdk.derive_name("A-b", "inst-1"), "a_b" + digest)
        self.assertEqual(sdk.derive_name("long_prefix_", "inst-1", 20), "long" + digest)
        self.assertRegex(sdk.derive_name("x", "any id / ; *"), r"^x[0-9a-f]{16}$")

    def test_passwords_have_the_length_and_alphabet_and_differ(self):
        for length in (0, 1, 32, 200):
            self.assertRegex(sdk.password(length), rf"^[A-Za-z0-9]{{{length}}}$")
        self.assertNotEqual(sdk.password(32), sdk.password(32))


class Errors(unittest.TestCase):
    def test_helpers_build_the_err_the_bindings_want(self):
        with self.assertRaises(Err) as raised:
            raise sdk.BadRequest("parameters.x: bad")
        self.assertEqual(raised.exception.value, t.BrokerError_BadRequest("parameters.x: bad"))

    def test_redact_masks_every_occurrence_and_keeps_the_kind(self):
        masked = sdk.redact(sdk.Internal("near pw1 and pw1"), "pw1")
        self.assertEqual(masked.value, t.BrokerError_Internal("near [redacted] and [redacted]"))

    def test_a_capability_error_becomes_internal_naming_the_connection(self):
        def refused(connection, request):
            raise Err(host_http.Error_Denied("GET /api/overview"))

        original, host_http.send = host_http.send, refused
        try:
            with self.assertRaises(Err) as raised:
                sdk.http("admin", "GET", "/api/overview")
        finally:
            host_http.send = original
        error = raised.exception.value
        self.assertIsInstance(error, t.BrokerError_Internal)
        self.assertIn("'admin'", error.value)
        self.assertIn("policy", error.value)


class Records(unittest.TestCase):
    def test_credentials_percent_encode_the_uri_and_list_the_endpoint(self):
        outcome = sdk.credentials("amqp", "mq.example", 5672, username="u/1", password="p w", name="v/h", vhost="v/h")
        self.assertIsInstance(outcome, t.BindOutcome_Done)
        self.assertEqual(
            json.loads(outcome.value.credentials),
            {
                "uri": "amqp://u%2F1:p%20w@mq.example:5672/v%2Fh",
                "hostname": "mq.example",
                "host": "mq.example",
                "port": 5672,
                "name": "v/h",
                "username": "u/1",
                "password": "p w",
                "vhost": "v/h",
            },
        )
        self.assertEqual(outcome.value.endpoints, [t.Endpoint("mq.example", ["5672"], t.EndpointProtocol.TCP)])
        ipv6 = json.loads(sdk.credentials("redis", "::1", 6379).value.credentials)
        self.assertEqual(ipv6["uri"], "redis://[::1]:6379")

    def test_parameters_default_to_empty_and_refuse_non_objects(self):
        record = t.InstanceChanges(None, None, None, None)
        self.assertEqual(sdk.parameters(record), {})
        record.parameters = '{"a": 1}'
        self.assertEqual(sdk.parameters(record), {"a": 1})
        record.parameters = "[1]"
        with self.assertRaises(Err) as raised:
            sdk.parameters(record)
        self.assertIsInstance(raised.exception.value, t.BrokerError_BadRequest)

    def test_schema_forbids_unknown_parameters(self):
        schema = json.loads(sdk.parameters_schema({"a": {"type": "integer"}}))
        self.assertEqual(schema["additionalProperties"], False)
        self.assertTrue(re.match(r"http://json-schema.org/draft-07", schema["$schema"]))

    def test_default_update_refuses_parameter_changes(self):
        class Demo(sdk.Plugin):
            def describe(self):
                return t.PluginInfo("demo", "0.1.0", "")

            catalog = provision = deprovision = bind = unbind = None

        self.assertIsInstance(Demo().update(None, t.InstanceChanges(None, None, "{}", None), None), t.InstanceOutcome_Done)
        with self.assertRaises(Err) as raised:
            Demo().update(None, t.InstanceChanges(None, "{}", None, None), None)
        self.assertIsInstance(raised.exception.value, t.BrokerError_Unprocessable)


if __name__ == "__main__":
    unittest.main()
