"""Pure builders of the Kubernetes objects the operator keeps for a cell."""
