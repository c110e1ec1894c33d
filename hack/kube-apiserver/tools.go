//go:build tools

// Package tools records the Kubernetes commands as dependencies of this
// helper module so that `go mod tidy` keeps every module they need. One
// module (and so one `go build`) serves the apiserver for test/kubeapi and
// the whole single-node cluster for test/nodee2e: the commands share most of
// their packages, so building them together costs little more than one.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
