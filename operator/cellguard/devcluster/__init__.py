"""A local real Kubernetes control plane (etcd, kube-apiserver, controllers, kwok)."""
