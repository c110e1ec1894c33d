package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// uiProc is the running web UI and where it answers.
type uiProc struct {
	*child
	url string
}

// startUI runs `flowlens ui` over the demo's ClickHouse table on
// 127.0.0.1 (o.uiPort, or a free port) and waits until it listens. The
// caller stops it, also on error when the result is non-nil.
func startUI(ctx context.Context, o options, bin, chAddr, logPath string) (*uiProc, error) {
	port := o.uiPort
	if port == 0 {
		var err error
		if port, err = freeLoopbackPort(); err != nil {
			return nil, err
		}
	}
	c, err := startChild("web UI", logPath, nil, bin, "ui",
		"--clickhouse-addr", chAddr, "--database", chDatabase, "--table", chTable,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, err
	}
	ui := &uiProc{child: c, url: fmt.Sprintf("http://127.0.0.1:%d/", port)}
	if err := waitListening(ctx, c, port, 15*time.Second); err != nil {
		return ui, fmt.Errorf("%w (is port %d taken? -ui-port chooses another, 0 any free one)", err, port)
	}
	return ui, nil
}

// uiSummary is what the UI's service map shows for the last hour.
type uiSummary struct {
	nodes, edges int
}

// checkUI asks the UI's API for the last hour's map, as the page does:
// the URL the demo prints then shows the demo's flows.
func checkUI(ctx context.Context, base string) (*uiSummary, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	to := time.Now().Unix() + 1
	url := fmt.Sprintf("%sapi/map?from=%d&to=%d", base, to-3600, to)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("web UI: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("web UI: %w", err)
	}
	defer resp.Body.Close()
	var m struct {
		Error string            `json:"error"`
		Nodes []json.RawMessage `json:"nodes"`
		Edges []json.RawMessage `json:"edges"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return nil, fmt.Errorf("web UI: GET %s: HTTP %d, %w", url, resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("web UI: GET %s: HTTP %d: %s", url, resp.StatusCode, m.Error)
	}
	if len(m.Edges) == 0 {
		return nil, fmt.Errorf("web UI: the service map of the last hour has no edges")
	}
	return &uiSummary{nodes: len(m.Nodes), edges: len(m.Edges)}, nil
}
