package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/flowlens/flowlens/pkg/flow"
)

// printTable writes one row per connection the demo made: the 5-tuple as
// the agent reported it, the Service it went through, bytes and packets in
// both directions, how it ended, and what the client itself counted.
// Connections without a record show as missing, unless latest is nil (no
// collector ran). It returns how many rows had no record.
func printTable(w io.Writer, want []expected, latest map[flowKey]record, podName func(netip.Addr) string) int {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONNECTION\tPROTO\tSOURCE\tDESTINATION\tSERVICE\tBYTES >\tPKTS >\tBYTES <\tPKTS <\tEND\tL7\tCLIENT PAYLOAD > / <")
	missing, noRecord := 0, "NO RECORD"
	if latest == nil {
		noRecord = "-"
	}
	for _, e := range want {
		payload := fmt.Sprintf("%s / %s", size(e.Sent), size(e.Received))
		r, ok := latest[e.key()]
		if !ok {
			missing++
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t-\t-\t-\t-\t%s\t-\t%s\n",
				e.What, flow.ProtoName(e.Proto), endpoint(e.Src, podName), endpoint(e.Dst(), podName), e.Service.Addr(), noRecord, payload)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			e.What, flow.ProtoName(r.proto()),
			recordEndpoint(r.src(), r.str("sourcePodName"), podName),
			recordEndpoint(r.dst(), r.str("destinationPodName"), podName),
			service(r), bytesField(r, "octetTotalCount"), packetsField(r, "packetTotalCount"),
			bytesField(r, "reverseOctetTotalCount"), packetsField(r, "reversePacketTotalCount"),
			orDash(r.endReason()), l7Summary(r), payload)
	}
	tw.Flush()
	return missing
}

// l7Summary is the compact L7 column: the application protocol, then per
// HTTP transaction "METHOD host+URL status", the DNS question, rcode and
// answer, or the TLS server name and version; "-" when the record has none.
func l7Summary(r record) string {
	parts := []string{r.str("appProtocolName")}
	if hv := r.str("httpVals"); hv != "" {
		var vals map[string]struct {
			Method string `json:"http_method"`
			Host   string `json:"hostname"`
			URL    string `json:"url"`
			Status int    `json:"status"`
		}
		if err := json.Unmarshal([]byte(hv), &vals); err != nil {
			parts = append(parts, "httpVals: "+err.Error())
		}
		ids := make([]string, 0, len(vals))
		for id := range vals {
			ids = append(ids, id)
		}
		// Transaction ids are decimal: order by number.
		sort.Slice(ids, func(i, j int) bool {
			return len(ids[i]) < len(ids[j]) || len(ids[i]) == len(ids[j]) && ids[i] < ids[j]
		})
		for _, id := range ids {
			v := vals[id]
			parts = append(parts, fmt.Sprintf("%s %s%s %d", v.Method, v.Host, v.URL, v.Status))
		}
	}
	if q := r.str("dnsQueryName"); q != "" {
		parts = append(parts, r.str("dnsQueryType"), q, r.str("dnsResponseCode"), r.str("dnsAnswers"))
	}
	parts = append(parts, r.str("tlsServerName"), r.str("tlsVersion"))
	var kept []string
	for _, p := range parts {
		if p != "" {
			kept = append(kept, p)
		}
	}
	return orDash(strings.Join(kept, " "))
}

// service is the Service VIP:port a record names, or "-" for none. The
// ClusterIP elements need Kubernetes context to know a VIP is a ClusterIP;
// destinationServiceIPv4/6 carry any DNATed destination, so they are the
// fallback.
func service(r record) string {
	vip := r.addr("destinationClusterIPv4", "destinationClusterIPv6")
	if !vip.IsValid() || vip.IsUnspecified() {
		vip = r.addr("destinationServiceIPv4", "destinationServiceIPv6")
	}
	if !vip.IsValid() || vip.IsUnspecified() {
		return "-"
	}
	port, _ := r.num("destinationServicePort")
	s := netip.AddrPortFrom(vip, uint16(port)).String()
	if name := r.str("destinationServicePortName"); name != "" {
		s += " (" + name + ")"
	}
	return s
}

// recordEndpoint shows an address with the pod name the agent exported,
// else the one the demo knows.
func recordEndpoint(a netip.AddrPort, exported string, podName func(netip.Addr) string) string {
	if exported != "" {
		return exported + " " + a.String()
	}
	return endpoint(a, podName)
}

func endpoint(a netip.AddrPort, podName func(netip.Addr) string) string {
	if name := podName(a.Addr()); name != "" {
		return name + " " + a.String()
	}
	return a.String()
}

func bytesField(r record, key string) string {
	n, ok := r.num(key)
	if !ok {
		return "-"
	}
	return size(int64(n))
}

func packetsField(r record, key string) string {
	n, ok := r.num(key)
	if !ok {
		return "-"
	}
	return fmt.Sprint(n)
}

// size prints a count the way people read byte counts: exact below 10k.
func size(n int64) string {
	switch {
	case n >= 10<<20:
		return fmt.Sprintf("%.0fMi", float64(n)/(1<<20))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMi", float64(n)/(1<<20))
	case n >= 10000:
		return fmt.Sprintf("%.0fKi", float64(n)/(1<<10))
	}
	return fmt.Sprint(n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
