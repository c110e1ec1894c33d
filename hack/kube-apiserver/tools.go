//go:build tools

// Package tools records the kube-apiserver command as a dependency of this
// helper module so that `go mod tidy` keeps every module it needs.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
