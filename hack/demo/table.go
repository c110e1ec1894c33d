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

// printTable writes one row per connection the demo made, from the rows
// the aggregator stored: the 5-tuple, the Service it went through, bytes
// and packets in both directions, how it ended, L7, how the aggregator
// correlated it and how many rows it wrote, the connection's RTT (mean
// and largest sample), packets the kernel dropped each way and why, the
// DNS name the client resolved the destination from, and what the client
// itself counted. Connections without a row show as missing, unless view is nil
// (no aggregator ran). It returns how many had no row.
func printTable(w io.Writer, want []expected, view *sinkView, podName func(netip.Addr) string) int {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONNECTION\tPROTO\tSOURCE\tDESTINATION\tSERVICE\tBYTES >\tPKTS >\tBYTES <\tPKTS <\tEND\tL7\tRTT AVG/MAX\tDROPS\tNAME\tCORRELATION\tROWS\tCLIENT PAYLOAD > / <")
	missing, noRecord := 0, "NO ROW"
	if view == nil {
		noRecord = "-"
	}
	for _, e := range want {
		payload := fmt.Sprintf("%s / %s", size(e.Sent), size(e.Received))
		var r *row
		if view != nil {
			r = view.latest[e.key()]
		}
		if r == nil {
			missing++
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t-\t-\t-\t-\t%s\t-\t-\t-\t-\t-\t0\t%s\n",
				e.What, flow.ProtoName(e.Proto), endpoint(e.Src, podName), endpoint(e.Dst(), podName), e.Service.Addr(), noRecord, payload)
			continue
		}
		h := view.health[e.key()]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n",
			e.What, flow.ProtoName(r.proto()),
			recordEndpoint(r.src(), r.Str("sourcePodName"), podName),
			recordEndpoint(r.dst(), r.Str("destinationPodName"), podName),
			service(r), size(int64(r.Num("octetTotalCount"))), r.Num("packetTotalCount"),
			size(int64(r.Num("reverseOctetTotalCount"))), r.Num("reversePacketTotalCount"),
			endName(r), l7Summary(r), h.rtt(), h.drops(), h.destName(), orDash(r.Str("correlation")), view.rows[e.key()], payload)
	}
	tw.Flush()
	if view == nil {
		return 0
	}
	return missing
}

// l7Summary is the compact L7 column: the application protocol, then per
// HTTP transaction "METHOD host+URL status", the DNS question, rcode and
// answer, or the TLS server name and version; "-" when the row has none.
func l7Summary(r *row) string {
	parts := []string{r.Str("appProtocolName")}
	if http := r.Str("httpVals"); http != "" {
		var vals map[string]struct {
			Method string `json:"http_method"`
			Host   string `json:"hostname"`
			URL    string `json:"url"`
			Status int    `json:"status"`
		}
		if err := json.Unmarshal([]byte(http), &vals); err != nil {
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
	if r.Str("dnsQueryName") != "" {
		parts = append(parts, r.Str("dnsQueryType"), r.Str("dnsQueryName"), r.Str("dnsResponseCode"), r.Str("dnsAnswers"))
	}
	parts = append(parts, r.Str("tlsServerName"), r.Str("tlsVersion"))
	var kept []string
	for _, p := range parts {
		if p != "" {
			kept = append(kept, p)
		}
	}
	return orDash(strings.Join(kept, " "))
}

// service is the Service VIP:port a row names (the aggregator stores any
// DNATed destination there), with the Service port name when the agent
// knew it; "-" for none.
func service(r *row) string {
	vip, err := netip.ParseAddr(r.Str("destinationServiceIP"))
	if err != nil || vip.IsUnspecified() {
		return "-"
	}
	s := netip.AddrPortFrom(vip.Unmap(), uint16(r.Num("destinationServicePort"))).String()
	if name := r.Str("destinationServicePortName"); name != "" {
		s += " (" + name + ")"
	}
	return s
}

// endName is the END column: the aggregator's export reason by name.
func endName(r *row) string {
	if !r.Has("flowEndReason") {
		return "-"
	}
	return r.endReason().String()
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
