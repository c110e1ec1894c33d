package ipfixexport

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files.
type testPKI struct {
	caFile, serverCert, serverKey, clientCert, clientKey, otherCA string
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	serial := int64(1)
	newCA := func(cn string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		k := newKey()
		serial++
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c, k, der
	}
	ca, caKey, caDER := newCA("flowlens test CA")
	_, _, otherDER := newCA("another CA")
	issue := func(cn string, usage x509.ExtKeyUsage, ips []net.IP) ([]byte, *ecdsa.PrivateKey) {
		k := newKey()
		serial++
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	srvDER, srvKey := issue("collector", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	cliDER, cliKey := issue("agent", x509.ExtKeyUsageClientAuth, nil)
	return testPKI{
		caFile:     write("ca.pem", "CERTIFICATE", caDER),
		otherCA:    write("other-ca.pem", "CERTIFICATE", otherDER),
		serverCert: write("server.pem", "CERTIFICATE", srvDER),
		serverKey:  write("server-key.pem", "EC PRIVATE KEY", keyDER(srvKey)),
		clientCert: write("client.pem", "CERTIFICATE", cliDER),
		clientKey:  write("client-key.pem", "EC PRIVATE KEY", keyDER(cliKey)),
	}
}

func TestTLSExportRequiresAValidClientCertificate(t *testing.T) {
	pki := newTestPKI(t)
	cases := []struct {
		name        string
		client      TLSConfig
		wantRecords bool
	}{
		{"exporter with a client certificate from the CA is accepted",
			TLSConfig{CAFile: pki.caFile, CertFile: pki.clientCert, KeyFile: pki.clientKey}, true},
		{"exporter without a client certificate is refused",
			TLSConfig{CAFile: pki.caFile}, false},
		{"exporter that does not trust the collector's CA does not send",
			TLSConfig{CAFile: pki.otherCA, CertFile: pki.clientCert, KeyFile: pki.clientKey}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got collected
			addr, _ := startCollector(t, ipfixcollect.Config{
				Network: "tls", Address: "127.0.0.1:0",
				TLS: ipfixcollect.TLSConfig{CertFile: pki.serverCert, KeyFile: pki.serverKey, ClientCAFile: pki.caFile},
			}, &got)
			reg := prometheus.NewRegistry()
			e, stop := startExporter(t, Config{
				Address: addr, Transport: TLS, TLS: tc.client, FlushInterval: 20 * time.Millisecond,
				ReconnectMin: 20 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
			}, reg)
			for i := range 5 {
				r := testRecord(uint64(i), i%2 == 1)
				e.Export(&r)
			}
			if tc.wantRecords {
				waitFor(t, 5*time.Second, "5 records over TLS", func() bool { return len(got.snapshot()) == 5 })
				stop()
				return
			}
			waitFor(t, 5*time.Second, "failed connection attempts", func() bool {
				return metricValue(t, reg, "flowlens_ipfix_exporter_connection_errors_total", "stage", "dial")+
					metricValue(t, reg, "flowlens_ipfix_exporter_connection_errors_total", "stage", "peer_closed") >= 2
			})
			stop()
			if n := len(got.snapshot()); n != 0 {
				t.Errorf("collector delivered %d records from an exporter it should refuse", n)
			}
		})
	}
}
