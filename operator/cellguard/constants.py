"""Names shared by every part of cellguard: API group, labels, annotations, condition types.

One module so that the webhook, the reconciler, the builders, the chart and the tests can
never disagree on a spelling.
"""

from typing import Final

GROUP: Final = "cellguard.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

# Kinds and plural resource names.
STREAMCELL_KIND: Final = "StreamCell"
STREAMCELL_PLURAL: Final = "streamcells"
POLICY_KIND: Final = "ThreadBudgetPolicy"
POLICY_PLURAL: Final = "threadbudgetpolicies"
NODEBUDGET_KIND: Final = "NodeBudget"
NODEBUDGET_PLURAL: Final = "nodebudgets"

DEFAULT_POLICY_NAME: Final = "default"

# Labels put on every object the operator creates for a cell (and on the cell's pods).
LABEL_CELL: Final = f"{GROUP}/cell"
LABEL_SERVICE: Final = f"{GROUP}/service"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "cellguard"

# The leader labels its own pod with this ("true"); the webhook Service selects it, so
# admission reaches the replica whose caches are live while every replica is Ready.
LABEL_LEADER: Final = f"{GROUP}/leader"

# Annotations.
ANNOTATION_THREADS_PER_POD: Final = f"{GROUP}/threads-per-pod"
ANNOTATION_APPROVED_REPLICAS: Final = f"{GROUP}/approved-replicas"

# Condition types on StreamCell.status.conditions.
CONDITION_READY: Final = "Ready"
CONDITION_WITHIN_BUDGET: Final = "WithinBudget"
CONDITION_SCALE_REFUSED: Final = "ScaleRefused"
CONDITION_THREAD_MODEL_ACCURATE: Final = "ThreadModelAccurate"

# Field managers (server-side apply) and kopf storage prefixes.
FIELD_MANAGER_OPERATOR: Final = "cellguard-operator"
FIELD_MANAGER_AGENT: Final = "cellguard-agent"
KOPF_PREFIX: Final = GROUP

# Admission webhooks: kopf serves each handler at /<handler id>; the chart and the local
# registration build their ValidatingWebhookConfiguration from these same ids.
WEBHOOK_CONFIGURATION_NAME: Final = "cellguard"
WEBHOOK_STREAMCELL: Final = "validate-streamcell"
WEBHOOK_STREAMCELL_SCALE: Final = "validate-streamcell-scale"
WEBHOOK_DEPLOYMENT: Final = "validate-cell-deployment"
WEBHOOK_DEPLOYMENT_SCALE: Final = "validate-cell-deployment-scale"
WEBHOOK_REPLICASET: Final = "validate-cell-replicaset"
WEBHOOK_REPLICASET_SCALE: Final = "validate-cell-replicaset-scale"

# Who may change a cell's ReplicaSets besides the operator: the deployment controller (its
# own service account with --use-service-account-credentials, else the controller manager).
DEPLOYMENT_CONTROLLER_USERS: Final = (
    "system:serviceaccount:kube-system:deployment-controller",
    "system:kube-controller-manager",
)

# Namespace label set by the API server on every namespace (used to exempt namespaces).
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
# A namespace labelled with this, "true", is exempt from every cellguard webhook (as if
# listed in webhook.exemptNamespaces): for platform namespaces created after the install.
LABEL_EXEMPT: Final = f"{GROUP}/exempt"

# The webhooks that see every Deployment's and ReplicaSet's /scale in the cluster (a Scale
# carries no labels to select cells' own by) fail open and wait no longer than this, so an
# unreachable operator cannot add the full webhook timeout to every scale in the cluster.
SCALE_WEBHOOK_TIMEOUT_SECONDS: Final = 3
