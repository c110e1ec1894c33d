package kubeapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
)

var metav1CreateOptions = metav1.CreateOptions{}

// Apply creates (or replaces) the objects of a multi-document YAML file as
// admin. It knows the kinds our manifests use: Namespace, ServiceAccount,
// ClusterRole, ClusterRoleBinding, Role, RoleBinding. Namespaces an object
// names are created first if missing.
func (c *Cluster) Apply(ctx context.Context, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("kubeapi: apply: %w", err)
	}
	admin, err := c.AdminClient()
	if err != nil {
		return err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("kubeapi: apply %s: read document %d: %w", path, i, err)
		}
		if trimmed(doc) == "" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return fmt.Errorf("kubeapi: apply %s: decode document %d: %w", path, i, err)
		}
		if err := applyOne(ctx, admin, obj); err != nil {
			return fmt.Errorf("kubeapi: apply %s: document %d: %w", path, i, err)
		}
	}
}

// EnsureNamespace creates a namespace unless it exists.
func EnsureNamespace(ctx context.Context, cs kubernetes.Interface, name string) error {
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

func applyOne(ctx context.Context, cs kubernetes.Interface, obj any) error {
	co := metav1.CreateOptions{}
	uo := metav1.UpdateOptions{}
	switch o := obj.(type) {
	case *corev1.Namespace:
		return EnsureNamespace(ctx, cs, o.Name)
	case *corev1.ServiceAccount:
		if err := EnsureNamespace(ctx, cs, o.Namespace); err != nil {
			return err
		}
		return createOrUpdate(func() error { _, err := cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, co); return err },
			func() error { _, err := cs.CoreV1().ServiceAccounts(o.Namespace).Update(ctx, o, uo); return err })
	case *rbacv1.ClusterRole:
		return createOrUpdate(func() error { _, err := cs.RbacV1().ClusterRoles().Create(ctx, o, co); return err },
			func() error { _, err := cs.RbacV1().ClusterRoles().Update(ctx, o, uo); return err })
	case *rbacv1.ClusterRoleBinding:
		return createOrUpdate(func() error { _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, o, co); return err },
			func() error { _, err := cs.RbacV1().ClusterRoleBindings().Update(ctx, o, uo); return err })
	case *rbacv1.Role:
		if err := EnsureNamespace(ctx, cs, o.Namespace); err != nil {
			return err
		}
		return createOrUpdate(func() error { _, err := cs.RbacV1().Roles(o.Namespace).Create(ctx, o, co); return err },
			func() error { _, err := cs.RbacV1().Roles(o.Namespace).Update(ctx, o, uo); return err })
	case *rbacv1.RoleBinding:
		if err := EnsureNamespace(ctx, cs, o.Namespace); err != nil {
			return err
		}
		return createOrUpdate(func() error { _, err := cs.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, co); return err },
			func() error { _, err := cs.RbacV1().RoleBindings(o.Namespace).Update(ctx, o, uo); return err })
	}
	return fmt.Errorf("unsupported kind %T", obj)
}

func createOrUpdate(create, update func() error) error {
	err := create()
	if apierrors.IsAlreadyExists(err) {
		err = update()
	}
	return err
}

// tlsTransport trusts exactly the certificate(s) in caFile.
func tlsTransport(caFile string) (*http.Transport, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("no certificates in %s", caFile)
	}
	return &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}, nil
}
