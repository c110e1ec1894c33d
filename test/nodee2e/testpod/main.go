// Command testpod is the one static binary behind every pod of the
// real-node end-to-end test (test/nodee2e), built into the flowlens-e2e
// image (hack/images, `make e2e-images`):
//
//	testpod pause                 the pod sandbox ("pause") image: sleeps until signalled
//	testpod iflink                prints the ifindex of eth0's peer (the pod's host-side veth)
//	testpod serve                 HTTP :8080, TLS :8443, DNS udp :53, sized TCP :9000
//	testpod client -case NAME ... one round of traffic to the given Service addresses,
//	                              run through `kubectl exec`; prints what it sent as JSON
//
// The sized TCP protocol makes the byte counts exact: the client sends an
// 8-byte big-endian reply size and then its payload, half-closes, and the
// server answers with exactly that many bytes once it has read everything.
// Both ends then know the application bytes of each direction, which the
// test compares with the octet counts flowlens stored.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testpod pause|serve|client [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "pause":
		pause()
	case "iflink":
		var b []byte
		if b, err = os.ReadFile("/sys/class/net/eth0/iflink"); err == nil {
			fmt.Print(string(b))
		}
	case "serve":
		err = serve(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "testpod:", err)
		os.Exit(1)
	}
}

func pause() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	answer := fs.String("dns-answer", "192.0.2.10", "A record every DNS query gets")
	if err := fs.Parse(args); err != nil {
		return err
	}
	errc := make(chan error, 4)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ok %s\n", r.URL.Path)
	})
	go func() { errc <- http.ListenAndServe(":8080", mux) }()
	cert, err := selfSigned()
	if err != nil {
		return err
	}
	tl, err := tls.Listen("tcp", ":8443", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		return fmt.Errorf("listen tls: %w", err)
	}
	go func() { errc <- http.Serve(tl, mux) }()
	pc, err := net.ListenPacket("udp", ":53")
	if err != nil {
		return fmt.Errorf("listen dns: %w", err)
	}
	go func() { errc <- serveDNS(pc, net.ParseIP(*answer).To4()) }()
	ln, err := net.Listen("tcp", ":9000")
	if err != nil {
		return fmt.Errorf("listen sized tcp: %w", err)
	}
	go func() { errc <- serveSized(ln) }()
	fmt.Println("serving: http :8080, tls :8443, dns udp :53, sized tcp :9000")
	return <-errc
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "flowlens-e2e"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"*.e2e.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// serveDNS answers every A query with one A record (and anything else with
// an empty answer): enough for Suricata to log query and answer.
func serveDNS(pc net.PacketConn, a net.IP) error {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		q := buf[:n]
		if n < 12 {
			continue
		}
		// The question ends after the name's zero label and QTYPE/QCLASS.
		i := 12
		for i < n && q[i] != 0 {
			i += int(q[i]) + 1
		}
		if i+5 > n {
			continue
		}
		qtype := binary.BigEndian.Uint16(q[i+1:])
		end := i + 5
		resp := append([]byte(nil), q[:end]...)
		resp[2] = 0x81 // QR, RD
		resp[3] = 0x80 // RA, NOERROR
		binary.BigEndian.PutUint16(resp[6:], 0)
		binary.BigEndian.PutUint16(resp[8:], 0)
		binary.BigEndian.PutUint16(resp[10:], 0)
		if qtype == 1 && a != nil {
			binary.BigEndian.PutUint16(resp[6:], 1)
			resp = append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4)
			resp = append(resp, a...)
		}
		if _, err := pc.WriteTo(resp, from); err != nil {
			fmt.Fprintln(os.Stderr, "dns reply:", err)
		}
	}
}

func serveSized(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			var hdr [8]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			if _, err := io.Copy(io.Discard, c); err != nil {
				return
			}
			if _, err := io.CopyN(c, zeros{}, int64(binary.BigEndian.Uint64(hdr[:]))); err != nil {
				fmt.Fprintln(os.Stderr, "sized reply:", err)
			}
		}()
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// Result is what one client round did, printed as one JSON line.
type Result struct {
	Case string `json:"case"`
	// HTTP is the path requested, TLS the SNI, DNS the query name ("" = not done).
	HTTP, TLS, DNS string
	// Sized: application bytes the client sent (header + payload) and received.
	SizedSent, SizedReceived int64
	// The client's address (ip:port) of each connection: the test finds
	// each connection's rows by it.
	HTTPLocal, TLSLocal, DNSLocal, SizedLocal string
}

func client(args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	name := fs.String("case", "", "name used in the path, SNI and query (required)")
	httpAddr := fs.String("http", "", "host:port of the HTTP Service")
	tlsAddr := fs.String("tls", "", "host:port of the TLS Service")
	dnsAddr := fs.String("dns", "", "host:port of the DNS Service (udp)")
	sizedAddr := fs.String("sized", "", "host:port of the sized TCP Service")
	send := fs.Int64("send", 0, "sized payload bytes to send")
	reply := fs.Int64("reply", 0, "sized reply bytes to ask for")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" {
		return errors.New("-case is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res := Result{Case: *name}
	// One connection per request: each case's records are their own.
	tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: *name + ".e2e.test"}} //nolint:gosec // a test server's throwaway certificate
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	get := func(url string, local *string) error {
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) { *local = ci.Conn.LocalAddr().String() }}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Host = *name + ".e2e.test"
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
	if *httpAddr != "" {
		res.HTTP = "/case/" + *name
		if err := get("http://"+*httpAddr+res.HTTP, &res.HTTPLocal); err != nil {
			return fmt.Errorf("http: %w", err)
		}
	}
	if *tlsAddr != "" {
		res.TLS = *name + ".e2e.test"
		if err := get("https://"+*tlsAddr+"/tls/"+*name, &res.TLSLocal); err != nil {
			return fmt.Errorf("tls: %w", err)
		}
	}
	if *dnsAddr != "" {
		res.DNS = *name + ".e2e.test"
		var err error
		if res.DNSLocal, err = queryDNS(ctx, *dnsAddr, res.DNS); err != nil {
			return fmt.Errorf("dns: %w", err)
		}
	}
	if *sizedAddr != "" {
		var err error
		if res.SizedSent, res.SizedReceived, res.SizedLocal, err = sized(ctx, *sizedAddr, *send, *reply); err != nil {
			return fmt.Errorf("sized: %w", err)
		}
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func queryDNS(ctx context.Context, addr, name string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	q := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	q = append(q, 0, 0, 1, 0, 1)
	buf := make([]byte, 1500)
	for try := 0; try < 3; try++ {
		if _, err := c.Write(q); err != nil {
			return "", err
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err == nil && n >= 12 && buf[0] == 0x12 && buf[1] == 0x34 {
			return c.LocalAddr().String(), nil
		}
	}
	return "", fmt.Errorf("no answer from %s for %s", addr, name)
}

func sized(ctx context.Context, addr string, send, reply int64) (sent, received int64, local string, err error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, 0, "", err
	}
	defer c.Close()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(reply))
	if _, err := c.Write(hdr[:]); err != nil {
		return 0, 0, "", err
	}
	n, err := io.CopyN(c, zeros{}, send)
	if err != nil {
		return 0, 0, "", err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, 0, "", err
	}
	received, err = io.Copy(io.Discard, c)
	if err != nil {
		return 0, 0, "", err
	}
	if received != reply {
		return 0, 0, "", fmt.Errorf("got %d reply bytes, asked for %d", received, reply)
	}
	return int64(len(hdr)) + n, received, c.LocalAddr().String(), nil
}
