package kubeapi

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestStartFailsNamingWhatIsMissing(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		opts Options
		want []string
	}{
		{"no directory", Options{}, []string{"Options.Dir"}},
		{"no kube-apiserver binary", Options{Dir: dir, APIServer: filepath.Join(dir, "none")},
			[]string{"kube-apiserver", "hack/build-kube-apiserver.sh"}},
		{"no etcd binary", Options{Dir: dir, APIServer: "/bin/true", Etcd: filepath.Join(dir, "no-etcd")},
			[]string{"etcd"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Start(context.Background(), tt.opts)
			if err == nil {
				c.Stop()
				t.Fatal("Start succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %q, want it to name %q", err, w)
				}
			}
		})
	}
	for _, o := range []Options{
		{Dir: dir, APIServer: filepath.Join(dir, "none")},
		{Dir: dir, APIServer: "/bin/true", Etcd: filepath.Join(dir, "no-etcd")},
	} {
		if _, err := Start(context.Background(), o); !errors.Is(err, ErrMissingComponent) {
			t.Errorf("Start(%+v): err = %v, want ErrMissingComponent", o, err)
		}
	}
}
