package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/test/l7e2e"
)

// sensorWarmUp bounds the wait for Suricata to capture (it usually takes
// one to ten seconds after start).
const sensorWarmUp = 30 * time.Second

// l7Sensor is the demo's Suricata on a mirror of the web pod's veth, logging
// to the agent's EVE socket and to a probe socket of the demo's own (which
// tells when Suricata captures).
type l7Sensor struct {
	sensor *l7e2e.Sensor
	probe  *l7e2e.Probe
}

// startL7 starts the probe and Suricata; agentSock must already be
// listening. The caller calls close, also on error when s is non-nil.
func startL7(topo *topology, work, suricata, agentSock string) (*l7Sensor, error) {
	probe, err := l7e2e.StartProbe(filepath.Join(work, "probe.sock"))
	if err != nil {
		return nil, err
	}
	s := &l7Sensor{probe: probe}
	s.sensor, err = l7e2e.StartSensor(l7e2e.SensorConfig{
		Node: topo.node, Pod: topo.web, Dir: work, Suricata: suricata,
		EVESockets: []string{agentSock, filepath.Join(work, "probe.sock")},
	})
	return s, err
}

// warmUp sends a GET through the web Service every second until Suricata
// logs one: before that, the demo's own traffic would go unseen.
func (s *l7Sensor) warmUp(ctx context.Context, topo *topology) error {
	start := time.Now()
	for n := 0; ; n++ {
		if _, err := topo.client.HTTPGet(fmt.Sprintf("http://%s/?warmup=%d", topo.webSvc.Addr(), n)); err != nil {
			return fmt.Errorf("warm-up request: %w", err)
		}
		_, err := s.probe.Wait(time.Second, s.sensor.Done(), func(ev eve.Event) bool { return ev.HTTP != nil })
		switch {
		case err == nil:
			return nil
		case errors.Is(err, l7e2e.ErrStopped):
			return s.sensor.ExitError()
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Since(start) > sensorWarmUp:
			//lint:ignore ST1005 Suricata is a name; the demo prints this as a sentence.
			return fmt.Errorf("Suricata logged no HTTP transaction within %s of start; its log:\n%s", sensorWarmUp, s.sensor.LogTail(15))
		}
	}
}

// close stops Suricata and the probe.
func (s *l7Sensor) close(out io.Writer) {
	if s.sensor != nil {
		if err := s.sensor.Close(); err != nil {
			step(out, "stopping Suricata: %v", err)
		}
	}
	_ = s.probe.Close()
}
