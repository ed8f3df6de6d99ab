"""The manifests in k8s/ (KubeRay pipeline, training Job) validate against their schemas, fit together, and run the same CLI."""

import copy
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from sylm_data.cli import app
from sylm_data.pipeline import config as config_module
from tests.kuberay_schema import SCHEMAS

K8S = Path(__file__).resolve().parents[1] / "k8s"


def documents() -> dict[str, dict]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


def test_every_manifest_validates_against_its_schema():
    found = documents()
    assert set(found) == {"RayCluster", "RayJob", "ConfigMap", "PersistentVolumeClaim", "Service", "Job"}
    for kind, document in found.items():
        jsonschema.validate(document, SCHEMAS[kind])


def test_the_schema_catches_misplaced_and_mistyped_keys():
    cluster = documents()["RayCluster"]
    misplaced = copy.deepcopy(cluster)
    misplaced["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["gpus"] = 1
    mistyped = copy.deepcopy(cluster)
    mistyped["spec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-cpus": 16}  # must be a string
    for broken in (misplaced, mistyped):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMAS["RayCluster"])


def test_the_cluster_has_cpu_and_gpu_groups_and_mounts_what_the_job_uses():
    found = documents()
    spec = found["RayCluster"]["spec"]
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
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
