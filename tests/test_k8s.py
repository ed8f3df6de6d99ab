"""The manifests in k8s/ (KubeRay pipeline, training Job) validate as the cluster would take them, fit
together, and run the same CLI.

What "validate" means here, layer by layer:

- RayCluster and RayJob: the real KubeRay v1.7 CRDs (their served `openAPIV3Schema`, kept in
  `tests/kuberay_v1_7_schemas.json.gz` without their descriptions, so the tests need no folder
  beside the repository; `test_the_kept_schemas_are_the_crds` compares them with `../shared/kuberay/`
  where that is present, and `python tests/test_k8s.py` writes them again from it), read the way the API server reads a structural schema: an unknown field is an
  error (the server would prune it, or refuse it under `kubectl apply`'s strict field validation)
  unless its object says `x-kubernetes-preserve-unknown-fields`; `nullable`, int-or-string,
  `format: int32/int64` bounds, list-map keys and sets, the CRDs' CEL rules; `metadata` as ObjectMeta.
- Plain kinds (Job, Service, ConfigMap, PersistentVolumeClaim): `kubernetes-validate`'s strict
  schemas, and again through the same reader for what that library leaves out (int32 bounds,
  list-map keys, the quantity grammar, which it takes as any string).
- Rules no schema holds: the KubeRay operator's (ray-operator/controllers/ray/utils/validation.go
  at the CRDs' commit: name lengths, replicas, backoffLimit with clusterSelector, ...) and the
  Pod ones the API server checks when the operator creates the pods (unique port names, mounts
  of declared volumes).
"""

import copy
import functools
import gzip
import json
import re
import shlex
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from sylm_data.cli import app
from sylm_data.pipeline import config as config_module

K8S = Path(__file__).resolve().parents[1] / "k8s"
CRDS = Path(__file__).resolve().parents[2] / "shared" / "kuberay"  # where the release's CRD files are, when present
KEPT_SCHEMAS = Path(__file__).resolve().parent / "kuberay_v1_7_schemas.json.gz"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
K8S_VERSION = kubernetes_validate.latest_version()
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2.3 MB of YAML: libyaml reads them 10x faster

# What the KubeRay operator requires (constant.go / validation.go, v1.7): its Services append up to
# "-serve-svc" to a RayCluster's name, and a RayJob's cluster is named after the job plus 6 characters.
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")  # rayjob_types.go
QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ---------------------------------------------------------------- the API server's reading of a schema

FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**63) <= value < 2**63


def _list_type(validator, list_type, instance, schema):
    """`x-kubernetes-list-type`: a `set` holds no item twice, a `map` no two items with the same keys."""
    if not isinstance(instance, list) or list_type not in ("set", "map"):
        return
    names = schema.get("x-kubernetes-list-map-keys", [])
    fields = schema.get("items", {}).get("properties", {})
    seen = set()
    for item in instance:
        if list_type == "set":
            key = json.dumps(item, sort_keys=True)
        elif isinstance(item, dict):
            # a key left out takes its default, as the server applies defaults before it compares
            key = tuple(item.get(name, fields.get(name, {}).get("default", "TCP" if name == "protocol" else None)) for name in names)
        else:
            continue
        if key in seen:
            shown = item if list_type == "set" else dict(zip(names, key))
            yield jsonschema.ValidationError(f"duplicate entry {shown} in a list-type {list_type}")
        seen.add(key)


# The CRDs' CEL rules, in Python. A rule this table does not know fails the test rather than pass unread.
CEL_RULES = {
    "self in ['ray.io/kuberay-operator', 'kueue.x-k8s.io/multikueue']":
        lambda self: self in ("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"),
    "!((has(self.onSuccess) || has(self.onFailure)) && has(self.deletionRules))":
        lambda self: not (("onSuccess" in self or "onFailure" in self) and "deletionRules" in self),
    "((has(self.onSuccess) && has(self.onFailure)) || has(self.deletionRules))":
        lambda self: ("onSuccess" in self and "onFailure" in self) or "deletionRules" in self,
    "!(has(self.jobStatus) && has(self.jobDeploymentStatus))":
        lambda self: not ("jobStatus" in self and "jobDeploymentStatus" in self),
    "has(self.jobStatus) || has(self.jobDeploymentStatus)":
        lambda self: "jobStatus" in self or "jobDeploymentStatus" in self,
}


def _cel(validator, rules, instance, schema):
    for rule in rules:
        if "oldSelf" in rule["rule"]:
            continue  # a transition rule: it compares with the stored object, so applies to updates only
        check = CEL_RULES.get(rule["rule"])
        if check is None:
            yield jsonschema.ValidationError(f"CEL rule not translated into CEL_RULES: {rule['rule']}")
        elif not check(instance):
            yield jsonschema.ValidationError(rule.get("message", rule["rule"]))


def _int_or_string(validator, flag, instance, schema):
    # controller-gen also spells it as anyOf [integer, string]; a schema may carry the flag alone
    if flag and not (isinstance(instance, str) or (isinstance(instance, int) and not isinstance(instance, bool))):
        yield jsonschema.ValidationError(f"{instance!r} is neither an integer nor a string (x-kubernetes-int-or-string)")


def _openapi_type(validator, types, instance, schema):
    if instance is None and schema.get("nullable"):
        return
    yield from jsonschema.Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)


KUBE_KEYWORDS = {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel}
# OpenAPI v3.0 (the CRDs) is JSON Schema draft 4 with `nullable`; kubernetes-validate writes draft 2020-12.
CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {**KUBE_KEYWORDS, "type": _openapi_type, "x-kubernetes-int-or-string": _int_or_string})
PlainValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, KUBE_KEYWORDS)


def _refuse_unknown_fields(schema: dict) -> None:
    """Make pruning explicit: an object schema that neither maps (`additionalProperties`) nor keeps
    unknown fields (`x-kubernetes-preserve-unknown-fields`) admits only its `properties`."""
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "object" and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            for child in value.values():
                _refuse_unknown_fields(child)
        elif key in ("items", "additionalProperties", "not"):
            _refuse_unknown_fields(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            for child in value:
                _refuse_unknown_fields(child)


def _without_descriptions(node):
    if isinstance(node, dict):
        return {key: _without_descriptions(value) for key, value in node.items() if key != "description"}
    if isinstance(node, list):
        return [_without_descriptions(value) for value in node]
    return node


def schemas_of_crds(folder: Path) -> dict:
    """{kind: {group, versions: [{name, served, openAPIV3Schema}]}} from the CRD files in `folder`."""
    found = {}
    for kind, name in CRD_FILES.items():
        crd = yaml.load((folder / name).read_text(), Loader=SafeLoader)
        assert crd["spec"]["names"]["kind"] == kind, f"{folder / name} defines {crd['spec']['names']['kind']}, not {kind}"
        found[kind] = {"group": crd["spec"]["group"], "versions": [
            {"name": version["name"], "served": version["served"],
             "openAPIV3Schema": _without_descriptions(version["schema"]["openAPIV3Schema"])}
            for version in crd["spec"]["versions"]]}
    return found


@functools.cache
def kept_schemas() -> str:
    return gzip.decompress(KEPT_SCHEMAS.read_bytes()).decode()


@functools.cache
def crd_validators(kind: str) -> dict[str, jsonschema.protocols.Validator]:
    """{apiVersion: validator} for every served version of the KubeRay CRD of `kind`."""
    crd = json.loads(kept_schemas())[kind]
    found = {}
    for version in crd["versions"]:
        if not version["served"]:
            continue
        schema = version["openAPIV3Schema"]
        _refuse_unknown_fields(schema)
        schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: the server checks it itself (plain_validator)
        schema["properties"]["status"] = {"not": {}}  # the status subresource: not the user's to write
        found[f"{crd['group']}/{version['name']}"] = CrdValidator(schema, format_checker=FORMATS)
    return found


def _strict_schema_file(name: str):
    return resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict" / name


@functools.cache
def _definitions() -> Registry:
    top = json.loads(_strict_schema_file("_definitions.json").read_text())
    # kubernetes-validate takes a quantity as any string; the API server parses it with the grammar
    # that the CRDs spell as a pattern.
    top["$defs"]["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {"type": ["string", "number"], "pattern": quantity_pattern()}
    return Resource.from_contents(top) @ Registry()


@functools.cache
def quantity_pattern() -> str:
    validator = crd_validators("RayCluster")["ray.io/v1"]
    container = validator.schema["properties"]["spec"]["properties"]["headGroupSpec"]["properties"]["template"]["properties"]["spec"]["properties"]["containers"]["items"]
    return container["properties"]["resources"]["properties"]["limits"]["additionalProperties"]["pattern"]


def plain_validator(schema: dict) -> jsonschema.protocols.Validator:
    return PlainValidator(schema, registry=_definitions(), format_checker=FORMATS)


@functools.cache
def plain_kind_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # batch/v1 -> batch-v1, as kubernetes-validate names its files
    path = _strict_schema_file(f"{kind.lower()}-{group_version}.json")
    return plain_validator(json.loads(path.read_text()))


def definition(name: str) -> dict:
    return {"$id": f"https://kubernetes.io/api/test/{name}", "$ref": f"/api/_definitions.json#/$defs/{name}"}


@functools.cache
def object_meta_validator() -> jsonschema.protocols.Validator:
    return plain_validator(definition("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"))


@functools.cache
def pod_template_validator() -> jsonschema.protocols.Validator:
    return plain_validator(definition("io.k8s.api.core.v1.PodTemplateSpec"))


def _where(error: jsonschema.ValidationError, prefix: str = "") -> str:
    return prefix + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)


def schema_problems(document: dict) -> list[str]:
    kind = document.get("kind")
    if kind in CRD_FILES:
        validators = crd_validators(kind)
        if document.get("apiVersion") not in validators:
            return [f"{kind}: apiVersion {document.get('apiVersion')!r} is not served (served: {sorted(validators)})"]
        problems = [f"{kind} {_where(error)}: {error.message}" for error in validators[document["apiVersion"]].iter_errors(document)]
        problems += [f"{kind} {_where(error, '.metadata')}: {error.message}" for error in object_meta_validator().iter_errors(document.get("metadata", {}))]
        return problems
    try:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        problems = []
    except kubernetes_validate.ValidationError as error:
        problems = [f"{kind} {_where(error)}: {error.message} (kubernetes-validate)"]
    validator = plain_kind_validator(document["apiVersion"], kind)
    return problems + [f"{kind} {_where(error)}: {error.message}" for error in validator.iter_errors(document)]


# ---------------------------------------------------------------- rules that no schema holds


def pod_templates(document: dict) -> list[tuple[str, dict]]:
    spec = document.get("spec", {})
    if document["kind"] == "Job":
        return [(".spec.template", spec.get("template", {}))]
    if document["kind"] == "RayJob":
        found = [(".spec.submitterPodTemplate", spec["submitterPodTemplate"])] if "submitterPodTemplate" in spec else []
        return found + [(".spec.rayClusterSpec" + where, pod) for where, pod in cluster_pod_templates(spec.get("rayClusterSpec"))]
    if document["kind"] == "RayCluster":
        return [(".spec" + where, pod) for where, pod in cluster_pod_templates(spec)]
    return []


def cluster_pod_templates(spec: dict | None) -> list[tuple[str, dict]]:
    if not spec:
        return []
    found = [(".headGroupSpec.template", spec.get("headGroupSpec", {}).get("template", {}))]
    return found + [(f".workerGroupSpecs[{i}].template", group.get("template", {})) for i, group in enumerate(spec.get("workerGroupSpecs", []))]


def pod_problems(where: str, template: dict, kind: str) -> list[str]:
    """What the API server checks when the operator (or the Job controller) creates these pods."""
    problems = label_problems(f"{where}.metadata", template.get("metadata", {}))
    if kind in CRD_FILES:  # the CRD embeds an older PodSpec than the cluster validates the pods with
        problems += [f"{_where(error, where)}: {error.message} (as a Pod)" for error in pod_template_validator().iter_errors(template)]
    pod = template.get("spec", {})
    volumes = [volume.get("name") for volume in pod.get("volumes", [])]
    if len(set(volumes)) != len(volumes):
        problems.append(f"{where}.spec.volumes: duplicate volume names {volumes}")
    port_names = []
    for i, container in enumerate([*pod.get("initContainers", []), *pod.get("containers", [])]):
        at = f"{where}.spec.containers[{i}]"
        numbers = [(port.get("containerPort"), port.get("protocol", "TCP")) for port in container.get("ports", [])]
        if len(set(numbers)) != len(numbers):
            problems.append(f"{at}.ports: duplicate containerPort/protocol {numbers}")
        for port in container.get("ports", []):
            if "name" in port:
                port_names.append(port["name"])
                if not (len(port["name"]) <= 15 and IANA_SVC_NAME.match(port["name"])):
                    problems.append(f"{at}.ports: port name {port['name']!r} is not an IANA_SVC_NAME (≤ 15 of a-z0-9-, a letter)")
            if not isinstance(port.get("containerPort"), int) or not 0 < port["containerPort"] < 65536:
                problems.append(f"{at}.ports: containerPort {port.get('containerPort')!r} is not in 1..65535")
        for side in ("limits", "requests"):
            for resource, amount in container.get("resources", {}).get(side, {}).items():
                if str(amount).startswith("-"):
                    problems.append(f"{at}.resources.{side}.{resource}: {amount!r} is negative")
        for mount in container.get("volumeMounts", []):
            if mount.get("name") not in volumes:
                problems.append(f"{at}.volumeMounts: {mount.get('name')!r} is not a volume of the pod")
    if len(set(port_names)) != len(port_names):
        problems.append(f"{where}.spec: duplicate port names {port_names} (each named port in a pod must be unique)")
    return problems


def cluster_spec_problems(where: str, spec: dict) -> list[str]:
    """ValidateRayClusterSpec's rules that a manifest can break (KubeRay v1.7)."""
    problems = []
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    head = spec.get("headGroupSpec", {})
    groups = [("headGroupSpec", "Head", head), *((f"workerGroupSpecs[{i}]", g.get("groupName"), g) for i, g in enumerate(spec.get("workerGroupSpecs", [])))]
    for at, name, group in groups:
        if not group.get("template", {}).get("spec", {}).get("containers"):
            problems.append(f"{where}.{at}: a group needs at least one container")
        params = group.get("rayStartParams", {})
        if any(params.get(key) for key in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
            problems.append(f"{where}.{at}: resources set in both rayStartParams and resources for group {name}")
        if "labels" in params:
            problems.append(f"{where}.{at}: rayStartParams['labels'] is not supported; use the group's labels field")
    names = [group.get("groupName") for group in spec.get("workerGroupSpecs", [])]
    if len(set(names)) != len(names):
        problems.append(f"{where}.workerGroupSpecs: duplicate groupName {names}")
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        at = f"{where}.workerGroupSpecs[{i}] ({group.get('groupName')})"
        low, high, replicas = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas")
        if not autoscaling and (low is None or high is None):
            problems.append(f"{at}: minReplicas and maxReplicas are required when autoscaling is disabled")
        for key, value in (("minReplicas", low), ("maxReplicas", high), ("replicas", replicas)):
            if isinstance(value, int) and value < 0:
                problems.append(f"{at}: negative {key} {value}")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            problems.append(f"{at}: minReplicas {low} greater than maxReplicas {high}")
        # The operator clamps replicas into [minReplicas, maxReplicas] without a word: a value outside is a typo here.
        elif isinstance(replicas, int) and not (low or 0) <= replicas <= (2**31 - 1 if high is None else high):
            problems.append(f"{at}: replicas {replicas} outside [minReplicas {low}, maxReplicas {high}]")
        if "idleTimeoutSeconds" in group and (spec.get("autoscalerOptions") or {}).get("version") != "v2":
            problems.append(f"{at}: idleTimeoutSeconds needs autoscalerOptions.version v2")
        if group.get("suspend") and autoscaling:
            problems.append(f"{at}: a worker group cannot be suspended with the autoscaler enabled")
    idle = (spec.get("autoscalerOptions") or {}).get("idleTimeoutSeconds")
    if isinstance(idle, int) and idle < 0:
        problems.append(f"{where}.autoscalerOptions.idleTimeoutSeconds: must be non-negative, got {idle}")
    return problems


def rayjob_spec_problems(spec: dict) -> list[str]:
    """ValidateRayJobSpec's rules that a manifest can break (KubeRay v1.7)."""
    problems = []
    selector = spec.get("clusterSelector") or {}
    backoff = spec.get("backoffLimit")
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:  # the CRD takes any string; the controller acts only on these
        problems.append(f"RayJob .spec.submissionMode: {mode!r} is not one of {SUBMISSION_MODES}")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        problems.append("RayJob .spec.suspend: a RayJob with shutdownAfterJobFinishes false cannot be suspended")
    if not spec.get("shutdownAfterJobFinishes") and (spec.get("ttlSecondsAfterFinished") or 0) > 0:
        problems.append("RayJob .spec.ttlSecondsAfterFinished: needs shutdownAfterJobFinishes")
    if (spec.get("ttlSecondsAfterFinished") or 0) < 0:
        problems.append("RayJob .spec.ttlSecondsAfterFinished: must be non-negative")
    if not selector and not spec.get("rayClusterSpec"):
        problems.append("RayJob .spec: one of rayClusterSpec or clusterSelector must be set")
    if selector:
        if not selector.get("ray.io/cluster"):
            problems.append("RayJob .spec.clusterSelector: the cluster name (ray.io/cluster) must not be empty")
        if spec.get("suspend"):
            problems.append("RayJob .spec.suspend: the clusterSelector mode does not support suspend")
        if mode == "SidecarMode":
            problems.append("RayJob .spec.submissionMode: clusterSelector is not supported in SidecarMode")
        if isinstance(backoff, int) and backoff > 0:
            problems.append(f"RayJob .spec.backoffLimit: {backoff} is incompatible with clusterSelector (retries would re-create a cluster it does not own)")
    if mode == "InteractiveMode" and isinstance(backoff, int) and backoff > 0:
        problems.append("RayJob .spec.backoffLimit: incompatible with InteractiveMode")
    if isinstance(backoff, int) and backoff < 0:
        problems.append("RayJob .spec.backoffLimit: must be non-negative")
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if isinstance(spec.get(key), int) and spec[key] <= 0:
            problems.append(f"RayJob .spec.{key}: must be a positive integer")
    if spec.get("rayClusterSpec"):
        problems += cluster_spec_problems("RayJob .spec.rayClusterSpec", spec["rayClusterSpec"])
    return problems


def label_problems(where: str, metadata: dict) -> list[str]:
    problems = []
    for key, value in (metadata.get("labels") or {}).items():
        prefix, _, name = key.rpartition("/")
        if not (QUALIFIED_NAME.match(name) and len(name) <= 63 and (not prefix or (DNS1123_SUBDOMAIN.match(prefix) and len(prefix) <= 253))):
            problems.append(f"{where}.labels: {key!r} is not a valid label key")
        if not (isinstance(value, str) and len(value) <= 63 and (value == "" or QUALIFIED_NAME.match(value))):
            problems.append(f"{where}.labels.{key}: {value!r} is not a valid label value")
    return problems


def rule_problems(document: dict) -> list[str]:
    kind, name, spec = document.get("kind"), document.get("metadata", {}).get("name", ""), document.get("spec", {})
    problems = []
    limits = {"RayCluster": MAX_RAYCLUSTER_NAME, "RayJob": MAX_RAYJOB_NAME, "Service": 63}
    if kind in limits:  # these names become DNS labels of Services (and, for a RayJob, of its cluster)
        if len(name) > limits[kind]:
            problems.append(f"{kind} .metadata.name: {name!r} is {len(name)} characters, more than {limits[kind]}")
        if not DNS1035_LABEL.match(name):
            problems.append(f"{kind} .metadata.name: {name!r} is not a DNS-1035 label")
    elif not (len(name) <= 253 and DNS1123_SUBDOMAIN.match(name)):
        problems.append(f"{kind} .metadata.name: {name!r} is not a DNS-1123 subdomain")
    if kind == "Job" and len(name) > 63:
        problems.append(f"Job .metadata.name: {name!r} is longer than 63 (it becomes the pods' job-name label)")
    if kind == "RayCluster":
        problems += cluster_spec_problems("RayCluster .spec", spec)
    if kind == "RayJob":
        problems += rayjob_spec_problems(spec)
    if kind == "Job" and spec.get("template", {}).get("spec", {}).get("restartPolicy") not in ("Never", "OnFailure"):
        problems.append("Job .spec.template.spec.restartPolicy: must be Never or OnFailure")
    problems += [f"{kind} {problem}" for problem in label_problems(".metadata", document.get("metadata", {}))]
    if kind == "ConfigMap":
        problems += [f"ConfigMap .data: {key!r} is not a valid ConfigMap key" for key in document.get("data", {}) if not CONFIG_KEY.match(key)]
    if kind == "PersistentVolumeClaim":
        storage_class = spec.get("storageClassName")
        if storage_class and not DNS1123_SUBDOMAIN.match(storage_class):  # ValidatePersistentVolumeClaimSpec
            problems.append(f"PersistentVolumeClaim .spec.storageClassName: {storage_class!r} is not a DNS-1123 subdomain")
        if str(spec.get("resources", {}).get("requests", {}).get("storage", "")).lstrip("+").startswith(("-", "0")):
            problems.append("PersistentVolumeClaim .spec.resources.requests.storage: must be positive")
    if kind == "Service":
        ports = spec.get("ports", [])
        port_names = [port.get("name") for port in ports]
        if len(ports) > 1 and (None in port_names or len(set(port_names)) != len(port_names)):
            problems.append(f"Service .spec.ports: names must be set and unique with more than one port {port_names}")
    for where, template in pod_templates(document):
        problems += [f"{kind} {problem}" for problem in pod_problems(where, template, kind)]
    return problems


def problems(document: dict) -> list[str]:
    return schema_problems(document) + rule_problems(document)


# ---------------------------------------------------------------- the manifests


def documents() -> dict[str, dict]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


def test_every_manifest_validates_against_the_real_schemas_and_the_operators_rules():
    found = documents()
    assert set(found) == {"RayCluster", "RayJob", "ConfigMap", "PersistentVolumeClaim", "Service", "Job"}
    for kind, document in found.items():
        assert problems(document) == [], kind


def _set(*path, value):
    def edit(document):
        node = document
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


HEAD = ("spec", "headGroupSpec", "template", "spec", "containers", 0)
CPU_GROUP = ("spec", "workerGroupSpecs", 0)
GPU_POD = ("spec", "workerGroupSpecs", 1, "template", "spec")
TRAIN_POD = ("spec", "template", "spec")
FIELD_REF = {"fieldRef": {"fieldPath": "metadata.name"}}

# (id, kind, edit, the path and words of the problem it must raise)
MUTATIONS = [
    ("gpus-misplaced-on-a-container", "RayCluster", _set(*GPU_POD, "containers", 0, "gpus", value=1), ".containers[0]: Additional properties"),
    ("rayStartParams-not-a-string", "RayCluster", _set(*CPU_GROUP, "rayStartParams", value={"num-cpus": 16}), "rayStartParams.num-cpus: 16 is not of type 'string'"),
    ("valueFrom-misspelt-key", "Job", lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"][1]["valueFrom"].update(fieldref={"fieldPath": "x"}),
     ".env[1].valueFrom: Additional properties are not allowed ('fieldref' was unexpected)"),
    ("valueFrom-misspelt-key-in-a-ray-pod", "RayCluster", _set(*GPU_POD, "containers", 0, "env", value=[{"name": "POD", "valueFrom": {**FIELD_REF, "feildRef": {}}}]),
     ".env[0].valueFrom: Additional properties are not allowed ('feildRef' was unexpected)"),
    ("emptyDir-misspelt-key", "Job", _set(*TRAIN_POD, "volumes", 2, "emptyDir", value={"medium": "Memory", "sizelimit": "64Gi"}),
     ".volumes[2].emptyDir: Additional properties are not allowed ('sizelimit' was unexpected)"),
    ("emptyDir-misspelt-key-in-a-ray-pod", "RayCluster", lambda d: d["spec"]["workerGroupSpecs"][1]["template"]["spec"]["volumes"].append({"name": "shm", "emptyDir": {"Medium": "Memory"}}),
     ".volumes[2].emptyDir: Additional properties are not allowed ('Medium' was unexpected)"),
    ("duplicate-port-names", "RayCluster", _set(*HEAD, "ports", 2, "name", value="gcs"), "duplicate port names"),
    ("duplicate-port-numbers", "RayCluster", _set(*HEAD, "ports", 2, "containerPort", value=6379), "duplicate entry {'containerPort': 6379, 'protocol': 'TCP'}"),
    ("duplicate-service-ports", "Service", lambda d: d["spec"]["ports"].append({"name": "rendezvous", "port": 29501}), "names must be set and unique"),
    ("duplicate-container-names", "RayCluster", lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"].append(copy.deepcopy(d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0])),
     "duplicate entry {'name': 'ray-head'}"),
    ("int64-replicas", "RayCluster", _set(*CPU_GROUP, "maxReplicas", value=2**32), ".maxReplicas: 4294967296 is not a 'int32'"),
    ("int64-containerPort", "RayCluster", _set(*HEAD, "ports", 0, "containerPort", value=2**31), ".containerPort: 2147483648 is not a 'int32'"),
    ("int64-rayjob-deadline", "RayJob", _set("spec", "activeDeadlineSeconds", value=2**31), ".spec.activeDeadlineSeconds: 2147483648 is not a 'int32'"),
    ("int64-job-backoff", "Job", _set("spec", "backoffLimit", value=2**40), ".spec.backoffLimit: 1099511627776 is not a 'int32'"),
    ("quantity-neither-int-nor-string", "RayCluster", _set(*HEAD, "resources", "limits", "cpu", value=[4]), ".resources.limits.cpu: [4] is neither an integer nor a string"),
    ("bad-quantity-memory", "RayCluster", _set(*HEAD, "resources", "limits", "memory", value="16GB"), ".resources.limits.memory: '16GB' does not match"),
    ("bad-quantity-sizeLimit", "Job", _set(*TRAIN_POD, "volumes", 2, "emptyDir", "sizeLimit", value="64 GiB"), ".emptyDir.sizeLimit: '64 GiB' does not match"),
    ("bad-quantity-storage", "PersistentVolumeClaim", _set("spec", "resources", "requests", "storage", value="2TB"), ".requests.storage: '2TB' does not match"),
    ("backoffLimit-with-clusterSelector", "RayJob", _set("spec", "backoffLimit", value=2), ".spec.backoffLimit: 2 is incompatible with clusterSelector"),
    ("minReplicas-over-maxReplicas", "RayCluster", _set(*CPU_GROUP, "minReplicas", value=40), "minReplicas 40 greater than maxReplicas 32"),
    ("replicas-over-maxReplicas", "RayCluster", _set(*CPU_GROUP, "replicas", value=33), "replicas 33 outside"),
    ("raycluster-name-too-long", "RayCluster", _set("metadata", "name", value="s" * 54), "is 54 characters, more than 53"),
    ("rayjob-name-too-long", "RayJob", _set("metadata", "name", value="s" * 48), "is 48 characters, more than 47"),
    ("rayjob-name-not-dns1035", "RayJob", _set("metadata", "name", value="1-run"), "is not a DNS-1035 label"),
    ("unknown-metadata-field", "RayJob", _set("metadata", "label", value={"a": "b"}), ".metadata: Additional properties are not allowed ('label' was unexpected)"),
    ("rayjob-unknown-spec-field", "RayJob", _set("spec", "backOffLimit", value=0), ".spec: Additional properties are not allowed ('backOffLimit' was unexpected)"),
    ("rayjob-unknown-submissionMode", "RayJob", _set("spec", "submissionMode", value="K8sJob"), ".spec.submissionMode: 'K8sJob' is not one of"),
    ("cel-rule", "RayJob", _set("spec", "managedBy", value="someone"), ".spec.managedBy: the managedBy field value must be either"),
    ("mount-of-no-volume", "Job", _set(*TRAIN_POD, "containers", 0, "volumeMounts", 0, "name", value="cfg"), "'cfg' is not a volume of the pod"),
    ("storage-class-not-a-dns-name", "PersistentVolumeClaim", _set("spec", "storageClassName", value="STORAGE_CLASS"), "'STORAGE_CLASS' is not a DNS-1123 subdomain"),
    ("negative-quantity", "Job", _set(*TRAIN_POD, "containers", 0, "resources", "limits", "cpu", value="-64"), ".resources.limits.cpu: '-64' is negative"),
    ("bad-label-value", "Job", _set("spec", "template", "metadata", "labels", "app", value="sylm train"), "'sylm train' is not a valid label value"),
    ("configmap-data-not-a-string", "ConfigMap", _set("data", "replicas", value=3), ".data.replicas: 3 is not of type 'string'"),
]


@pytest.mark.parametrize(("kind", "edit", "expected"), [case[1:] for case in MUTATIONS], ids=[case[0] for case in MUTATIONS])
def test_the_validators_refuse_what_the_cluster_would(kind, edit, expected):
    document = copy.deepcopy(documents()[kind])
    edit(document)
    found = problems(document)
    assert any(expected in problem for problem in found), found


def test_the_kept_schemas_are_the_crds():
    if not CRDS.is_dir():
        pytest.skip(f"no {CRDS} to compare the kept schemas with")
    assert json.loads(kept_schemas()) == schemas_of_crds(CRDS), "the CRDs changed: run `python tests/test_k8s.py`"


def test_the_limits_are_inclusive():
    found = documents()
    cluster, job = copy.deepcopy(found["RayCluster"]), copy.deepcopy(found["RayJob"])
    cluster["metadata"]["name"], job["metadata"]["name"] = "s" * MAX_RAYCLUSTER_NAME, "s" * MAX_RAYJOB_NAME
    cluster["spec"]["workerGroupSpecs"][0].update(minReplicas=4, replicas=4, maxReplicas=4)
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 65535
    cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = 2**31 - 1  # an int quantity
    assert problems(cluster) == [] and problems(job) == []


# ---------------------------------------------------------------- how the manifests fit together


def test_the_cluster_has_cpu_and_gpu_groups_and_mounts_what_the_job_uses():
    found = documents()
    spec = found["RayCluster"]["spec"]
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert "nvidia.com/gpu" in groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    pods = [spec["headGroupSpec"]["template"]["spec"], *(group["template"]["spec"] for group in groups.values())]
    for pod in pods:  # every pod sees the same config and output paths
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes["config"]["configMap"]["name"] == found["ConfigMap"]["metadata"]["name"]
        assert volumes["output"]["persistentVolumeClaim"]["claimName"] == found["PersistentVolumeClaim"]["metadata"]["name"]
        mounts = {mount["name"]: mount["mountPath"] for mount in pod["containers"][0]["volumeMounts"]}
        assert mounts == {"config": "/etc/sylm", "output": "/data"}
    assert found["RayJob"]["spec"]["clusterSelector"]["ray.io/cluster"] == found["RayCluster"]["metadata"]["name"]


def test_the_job_runs_the_local_cli_with_the_configmap_config(tmp_path):
    import typer.main

    found = documents()
    words = shlex.split(found["RayJob"]["spec"]["entrypoint"])
    assert words[:2] == ["sylm-data", "run"]
    command = typer.main.get_command(app)
    context = command.make_context("sylm-data", words[1:], resilient_parsing=True)
    run = command.get_command(context, "run")
    parsed = run.make_context("run", words[2:])  # the options exist and parse as on a laptop
    assert parsed.params["output"] == Path("/data/out")
    config_path = Path(parsed.params["config"])
    assert config_path.parent == Path("/etc/sylm")
    local = tmp_path / config_path.name
    local.write_text(found["ConfigMap"]["data"][config_path.name])
    loaded = config_module.load(local)  # every key is one the pipeline knows
    assert loaded.stages["tokenize"].encoder == "sylreg" and loaded.stages["align"].gpus_per_actor == 1.0


def test_the_training_job_runs_torchrun_over_its_nodes_with_the_configmap_config(tmp_path):
    import typer.main

    from sylm_data.train import config as train_config

    found = documents()
    job, service = found["Job"], found["Service"]
    pod = job["spec"]["template"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert service["spec"]["clusterIP"] == "None" and pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    words = shlex.split(container["command"][-1])
    options = dict(word.removeprefix("--").split("=", 1) for word in words if word.startswith("--") and "=" in word)
    assert words[0] == "torchrun" and options["node-rank"] == "$JOB_COMPLETION_INDEX"
    assert int(options["nnodes"]) == job["spec"]["completions"] == job["spec"]["parallelism"]
    assert int(options["nproc-per-node"]) == container["resources"]["limits"]["nvidia.com/gpu"]
    assert options["master-addr"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert any(env["name"] == "JOB_COMPLETION_INDEX" for env in container["env"])
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["config"] == "/etc/sylm" and mounts["output"] == "/data"

    module = words.index("-m")
    assert words[module + 1 : module + 3] == ["sylm_data.cli", "train"]
    command = typer.main.get_command(app)
    context = command.make_context("sylm-data", words[module + 2 :], resilient_parsing=True)
    parsed = command.get_command(context, "train").make_context("train", words[module + 3 :])
    config_path = Path(parsed.params["config"])
    local = tmp_path / config_path.name
    local.write_text(found["ConfigMap"]["data"][config_path.name])
    loaded = train_config.load(local)  # every key is one the trainer knows
    pipeline_words = shlex.split(found["RayJob"]["spec"]["entrypoint"])
    pipeline_output = pipeline_words[pipeline_words.index("--output") + 1]
    assert loaded.data.shards == [f"{pipeline_output}/shards"]  # what the pipeline's interleave stage writes
    assert loaded.run.output.startswith(mounts["output"] + "/")


if __name__ == "__main__":  # write the kept schemas again from ../shared/kuberay/
    text = json.dumps(schemas_of_crds(CRDS), sort_keys=True, separators=(",", ":"))
    KEPT_SCHEMAS.write_bytes(gzip.compress(text.encode(), mtime=0))
