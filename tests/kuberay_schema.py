"""JSON Schemas for the parts of the KubeRay `ray.io/v1` CRDs (RayCluster, RayJob) and of core
Kubernetes objects (ConfigMap, PVC, Service, batch/v1 Job) that `k8s/` uses, written from their
OpenAPI field definitions.

Objects list their known fields and refuse unknown ones, so a misspelt or misplaced key fails the
test the way `kubectl apply --validate=strict` would reject it; types and enums follow the CRDs.
"""

QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^[0-9.]+([EPTGMK]i?|[mkMGTPE]|e[0-9]+)?$"}]}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def closed(properties: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


METADATA = closed({"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}, "namespace": {"type": "string"},
                   "labels": STRING_MAP, "annotations": STRING_MAP})
ENV_VAR = closed({"name": {"type": "string"}, "value": {"type": "string"}, "valueFrom": {"type": "object"}}, ("name",))
CONTAINER = closed({
    "name": {"type": "string"}, "image": {"type": "string"}, "command": {"type": "array", "items": {"type": "string"}},
    "args": {"type": "array", "items": {"type": "string"}}, "env": {"type": "array", "items": ENV_VAR},
    "ports": {"type": "array", "items": closed({"containerPort": {"type": "integer"}, "name": {"type": "string"},
                                                "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}, ("containerPort",))},
    "resources": closed({"limits": {"type": "object", "additionalProperties": QUANTITY},
                         "requests": {"type": "object", "additionalProperties": QUANTITY}}),
    "volumeMounts": {"type": "array", "items": closed({"name": {"type": "string"}, "mountPath": {"type": "string"},
                                                        "readOnly": {"type": "boolean"}, "subPath": {"type": "string"}},
                                                       ("name", "mountPath"))},
    "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
}, ("name",))
VOLUME = closed({
    "name": {"type": "string"},
    "configMap": closed({"name": {"type": "string"}, "items": {"type": "array"}}),
    "persistentVolumeClaim": closed({"claimName": {"type": "string"}, "readOnly": {"type": "boolean"}}, ("claimName",)),
    "emptyDir": {"type": "object"},
}, ("name",))
POD_TEMPLATE = closed({
    "metadata": METADATA,
    "spec": closed({
        "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
        "volumes": {"type": "array", "items": VOLUME},
        "nodeSelector": STRING_MAP,
        "tolerations": {"type": "array", "items": closed({
            "key": {"type": "string"}, "operator": {"enum": ["Exists", "Equal"]}, "value": {"type": "string"},
            "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}, "tolerationSeconds": {"type": "integer"}})},
        "serviceAccountName": {"type": "string"},
        "subdomain": {"type": "string"},
        "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
    }, ("containers",)),
})
RAY_START_PARAMS = STRING_MAP  # the CRD types every value as a string
HEAD_GROUP = closed({"rayStartParams": RAY_START_PARAMS, "template": POD_TEMPLATE,
                     "serviceType": {"type": "string"}, "enableIngress": {"type": "boolean"}}, ("template",))
WORKER_GROUP = closed({
    "groupName": {"type": "string"}, "replicas": {"type": "integer", "minimum": 0},
    "minReplicas": {"type": "integer", "minimum": 0}, "maxReplicas": {"type": "integer", "minimum": 0},
    "idleTimeoutSeconds": {"type": "integer"}, "numOfHosts": {"type": "integer", "minimum": 1},
    "rayStartParams": RAY_START_PARAMS, "template": POD_TEMPLATE, "suspend": {"type": "boolean"},
}, ("groupName", "template"))
RAY_CLUSTER_SPEC = closed({
    "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
    "autoscalerOptions": closed({"idleTimeoutSeconds": {"type": "integer"},
                                 "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                                 "resources": {"type": "object"}, "image": {"type": "string"}}),
    "headGroupSpec": HEAD_GROUP, "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
    "suspend": {"type": "boolean"},
}, ("headGroupSpec",))


def resource(kind: str, spec: dict, api_version: str = "ray.io/v1") -> dict:
    return closed({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": METADATA, "spec": spec},
                  ("apiVersion", "kind", "metadata", "spec"))


SCHEMAS = {
    "RayCluster": resource("RayCluster", RAY_CLUSTER_SPEC),
    "RayJob": resource("RayJob", closed({
        "entrypoint": {"type": "string", "minLength": 1}, "clusterSelector": STRING_MAP, "rayClusterSpec": RAY_CLUSTER_SPEC,
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "activeDeadlineSeconds": {"type": "integer"}, "backoffLimit": {"type": "integer"},
        "shutdownAfterJobFinishes": {"type": "boolean"}, "ttlSecondsAfterFinished": {"type": "integer"},
        "runtimeEnvYAML": {"type": "string"}, "entrypointNumCpus": {"type": "number"},
        "entrypointNumGpus": {"type": "number"}, "suspend": {"type": "boolean"},
    })),
    "ConfigMap": closed({"apiVersion": {"const": "v1"}, "kind": {"const": "ConfigMap"}, "metadata": METADATA,
                         "data": STRING_MAP}, ("apiVersion", "kind", "metadata")),
    "PersistentVolumeClaim": resource("PersistentVolumeClaim", closed({
        "accessModes": {"type": "array", "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]}},
        "storageClassName": {"type": "string"},
        "resources": closed({"requests": closed({"storage": QUANTITY}, ("storage",))}, ("requests",)),
    }, ("accessModes", "resources")), api_version="v1"),
    "Service": resource("Service", closed({
        "clusterIP": {"type": "string"}, "selector": STRING_MAP, "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "ports": {"type": "array", "items": closed({"name": {"type": "string"}, "port": {"type": "integer"},
                                                    "targetPort": {"type": ["integer", "string"]},
                                                    "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}, ("port",))},
    }), api_version="v1"),
    "Job": resource("Job", closed({
        "completionMode": {"enum": ["NonIndexed", "Indexed"]}, "completions": {"type": "integer", "minimum": 1},
        "parallelism": {"type": "integer", "minimum": 1}, "backoffLimit": {"type": "integer", "minimum": 0},
        "activeDeadlineSeconds": {"type": "integer"}, "ttlSecondsAfterFinished": {"type": "integer"},
        "template": POD_TEMPLATE,
    }, ("template",)), api_version="batch/v1"),
}
