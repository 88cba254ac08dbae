"""Renders deploy/helm/switchyard and checks what comes out; run by scripts/check-deploy.sh.

* Rendering: Helm's own Go engine (PyPI helm-python-sdk, no cluster, no helm binary), with the
  default values, each ci/*-values.yaml, and autoscaling off. The NATS dependency is not
  downloaded (no chart repository is reachable here), so its objects are not rendered; only
  the values this chart passes it are checked.
* Kubernetes objects: validated against the Kubernetes OpenAPI schemas, strictly (PyPI
  kubernetes-validate, which ships them). KEDA's ScaledObject has no schema there; it is checked
  field by field below against what KEDA's nats-jetstream scaler reads.
* Switchyard's rules: the consumer and stream names are ci/consumers.json's (themselves checked
  against switchyard_schemas::subject by tests/tests/deploy_manifests.rs); every SWITCHYARD_*
  variable is one a clap definition in the source declares; probes ask the paths and ports the
  parts serve; workers get a GPU, a read-only model volume and a grace period longer than their
  drain.
"""

import json
import pathlib
import re
import sys

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/switchyard"
K8S_VERSION = "1.30.0"
# Flags another part is adding; allowed until the source declares them.
PENDING_ENV = {"SWITCHYARD_METRICS_LISTEN"}

failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")


def declared_env():
    names = set()
    for path in ROOT.glob("**/*.rs"):
        if "target" in path.parts or ".switchyard" in path.parts:
            continue
        names.update(re.findall(r'(?:env\s*=\s*|from_env\(|env::var\()"(SWITCHYARD_[A-Z0-9_]+)"', path.read_text(errors="replace")))
    return names


def render(values, name="sy", namespace="ml"):
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name=name, namespace=namespace, is_install=True)
    docs = []
    for template, text in sorted(out.items()):
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((template, doc))
    return docs


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def check_probes(where, container, port, paths):
    for probe, path in paths.items():
        got = container.get(probe, {}).get("httpGet")
        if not got:
            fail(where, f"no {probe}")
            continue
        if got["path"] != path:
            fail(where, f"{probe} asks {got['path']}, not {path}")
        named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if named.get(got["port"], got["port"]) != port:
            fail(where, f"{probe} port {got['port']} is not the listen port {port}")


def seconds(text):
    match = re.fullmatch(r"(\d+)s", text or "")
    return int(match.group(1)) if match else None


def check(label, docs, golden, env_names, autoscaling):
    consumers = {(m["model"], m["kind"]): m["consumers"] for m in golden["models"]}
    deployments = {}
    scaled = []
    for template, doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        where = f"{label}: {kind}/{name} ({template})"
        if kind == "ScaledObject":
            scaled.append((where, doc))
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(where, f"schema: {e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError:
            fail(where, f"no Kubernetes {K8S_VERSION} schema for {doc.get('apiVersion')} {kind}")
        if kind in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for var in env_of(container):
                    if var.startswith("SWITCHYARD_") and var not in env_names and var not in PENDING_ENV:
                        fail(where, f"{var} is no flag's env in the source")
        if kind == "Deployment":
            deployments[name] = (where, doc)

    for name, (where, doc) in deployments.items():
        pod = doc["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = env_of(container)
        component = doc["metadata"]["labels"].get("app.kubernetes.io/component")
        if component == "api":
            check_probes(where, container, port_of(env["SWITCHYARD_LISTEN"]), {"livenessProbe": "/health", "readinessProbe": "/ready"})
        elif component == "scheduler":
            check_probes(where, container, port_of(env["SWITCHYARD_SCHEDULER_LISTEN"]), {"livenessProbe": "/health", "readinessProbe": "/health"})
        elif component == "worker":
            check_probes(where, container, port_of(env["SWITCHYARD_METRICS_LISTEN"]),
                         {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"})
            drain = seconds(env.get("SWITCHYARD_DRAIN_TIMEOUT"))
            if drain is None or pod.get("terminationGracePeriodSeconds", 30) <= drain:
                fail(where, f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds')} is not longer than the drain {drain}")
            if "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {}):
                fail(where, "requests no nvidia.com/gpu")
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            if not env.get("SWITCHYARD_MODEL_PATH", "").startswith("/models") or not mounts.get("/models", {}).get("readOnly"):
                fail(where, "model folder not from the read-only /models volume")
            if ("replicas" in doc["spec"]) == autoscaling:
                fail(where, "replicas must be left to KEDA exactly when autoscaling is on")
        else:
            fail(where, f"unexpected component {component}")

    workers = {n for n, (_, d) in deployments.items() if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"}
    targets = set()
    for where, doc in scaled:
        if doc.get("apiVersion") != "keda.sh/v1alpha1":
            fail(where, f"apiVersion {doc.get('apiVersion')}")
        spec = doc["spec"]
        target = spec["scaleTargetRef"]["name"]
        if target not in workers:
            fail(where, f"scales {target}, which is no worker Deployment")
        if target in targets:
            fail(where, f"a second ScaledObject on {target} (KEDA allows one)")
        targets.add(target)
        if not 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]:
            fail(where, "minReplicaCount/maxReplicaCount")
        annotations = doc["metadata"]["annotations"]
        model, kind, lane = annotations["switchyard.dev/model"], annotations["switchyard.dev/kind"], doc["metadata"]["labels"]["switchyard.dev/lane"]
        [trigger] = spec["triggers"]
        meta = trigger["metadata"]
        if trigger["type"] != "nats-jetstream":
            fail(where, f"trigger {trigger['type']}")
        for key in ("natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold", "activationLagThreshold", "useHttps"):
            if not isinstance(meta.get(key), str):
                fail(where, f"trigger metadata {key} must be a string")
        for key in ("lagThreshold", "activationLagThreshold"):
            if not str(meta.get(key, "")).isdigit():
                fail(where, f"{key} {meta.get(key)!r} is no integer")
        if not re.fullmatch(r"[^:/]+:8222", meta["natsServerMonitoringEndpoint"]):
            fail(where, f"monitoring endpoint {meta['natsServerMonitoringEndpoint']} (host:port, the NATS monitor port)")
        if meta.get("stream") != golden["stream"]:
            fail(where, f"stream {meta['stream']}, not {golden['stream']}")
        expected = consumers.get((model, kind))
        if expected is None:
            fail(where, f"model {model!r} ({kind}) is not in ci/consumers.json")
        elif meta["consumer"] != expected[lane]:
            fail(where, f"consumer {meta['consumer']}, not {expected[lane]}")
        worker_env = env_of(deployments[target][1]["spec"]["template"]["spec"]["containers"][0]) if target in deployments else {}
        if worker_env.get("SWITCHYARD_MODEL_NAME") != model:
            fail(where, f"its workers serve {worker_env.get('SWITCHYARD_MODEL_NAME')!r}, not {model!r}")
    if autoscaling and targets != workers:
        fail(label, f"worker Deployments without a ScaledObject: {sorted(workers - targets)}")
    if not autoscaling and scaled:
        fail(label, "ScaledObjects rendered with autoscaling off")
    return len(docs)


def main():
    golden = json.loads((CHART / "ci/consumers.json").read_text())
    env_names = declared_env()
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    cases = [("defaults", {}, True), ("autoscaling off", {"autoscaling": {"enabled": False}}, False)]
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        cases.append((f"ci/{path.name}", yaml.safe_load(path.read_text()), True))
    passed = failed = 0

    def case(label, run):
        nonlocal passed, failed
        before = len(failures)
        try:
            note = run()
        except helm.HelmError as e:
            fail(label, f"rendering failed: {e}")
            note = None
        if len(failures) == before:
            passed += 1
            print(f"ok   {label}{f': {note}' if note else ''}")
        else:
            failed += 1
            for line in failures[before:]:
                print(f"FAIL {line}")

    for label, values, autoscaling in cases:
        case(label, lambda: f"{check(label, render(values), golden, env_names, autoscaling)} objects")

    def refuses_tool_kind():
        try:
            render({"models": [{"id": "x", "name": "x", "kind": "tool", "volume": {"claimName": "m"}, "lanes": {"interactive": {}}}]})
            fail("kind: tool", "rendered; the chart must refuse kinds a torch worker cannot serve")
        except helm.HelmError:
            pass

    case("a model of kind tool is refused", refuses_tool_kind)

    def lint():
        report = helm.lint(str(CHART), strict=True)
        for message in report.get("messages", []):
            # 1 info, 2 warning, 3 error. The missing NATS dependency is expected here.
            if message["severity"] >= 2 and "nats" not in message["error"]:
                fail(f"helm lint {message['path']}", message["error"])

    def nats_values():
        nats = defaults["nats"]["config"]
        if not (nats["jetstream"]["enabled"] and nats["cluster"]["enabled"] and nats["cluster"]["replicas"] == 3
                and nats["monitor"]["enabled"] and nats["monitor"]["port"] == 8222):
            fail("values.yaml", "nats: JetStream, a 3-node cluster and monitoring on 8222")

    case("NATS values: JetStream, 3 replicas, monitoring on 8222", nats_values)
    case("helm lint", lint)
    print(f"check-deploy: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
