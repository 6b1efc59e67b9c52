//go:build tools

// Package tools pins the control-plane binaries that scripts/controlplane.sh
// builds from source. Nothing imports this file in a normal build.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"

	_ "go.etcd.io/etcd/server/v3/etcdmain"
)
