package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// stopGrace is how long a child gets to exit after SIGTERM: the agent uses
// it to flush its last records.
const stopGrace = 5 * time.Second

// child is a started program whose standard error goes to a log file.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // exit status; read only after done
}

// startChild starts bin with args; stdout, if non-nil, receives its
// standard output.
func startChild(name, logPath string, stdout io.Writer, bin string, args ...string) (*child, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = stdout
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Own process group: Ctrl-C reaches the demo only, which then
		// stops the children in order (agent first, so that its last
		// records still find the aggregator).
		Setpgid: true,
		// If the demo is killed outright, the children go with it. The
		// signal follows the forking thread, not the process; the demo
		// forks from ordinary goroutines, whose threads do not exit.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		logFile.Close()
		close(c.done)
	}()
	return c, nil
}

// exited reports whether the process has ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to stopGrace, then kills. Safe to call twice.
func (c *child) stop() {
	if c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(stopGrace):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// logTail returns the last lines of the child's log, for error messages.
func (c *child) logTail(lines int) string { return fileTail(c.logPath, lines) }

// fileTail returns the last lines of a log file, indented, for error
// messages.
func fileTail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("    (cannot read %s: %v)", path, err)
	}
	if len(b) == 0 {
		return "    (empty)"
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return "    " + strings.Join(all, "\n    ")
}

// exitError describes how the child ended, with its log tail.
func (c *child) exitError() error {
	return fmt.Errorf("%s exited early (%v); last lines of its log:\n%s", c.name, c.err, c.logTail(15))
}

// freeLoopbackPort asks the kernel for a free TCP port on 127.0.0.1. Another
// program could take it before the aggregator binds it; the aggregator
// would then fail at once and the demo says so.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// waitListening waits until something listens on 127.0.0.1:port, read
// from /proc/net/tcp rather than by connecting: a probe connection would
// look like a broken exporter to the aggregator.
func waitListening(ctx context.Context, c *child, port int, timeout time.Duration) error {
	want := fmt.Sprintf("0100007F:%04X", port)
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			return fmt.Errorf("read /proc/net/tcp: %w", err)
		}
		if listensOn(b, want) {
			return nil
		}
		if c.exited() {
			return c.exitError()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is not listening on 127.0.0.1:%d after %s; last lines of its log:\n%s", c.name, port, timeout, c.logTail(15))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// listensOn reports whether /proc/net/tcp content has a LISTEN (0A) socket
// with local address want ("0100007F:1F90").
func listensOn(procNetTCP []byte, want string) bool {
	sc := bufio.NewScanner(bytes.NewReader(procNetTCP))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 3 && f[1] == want && f[3] == "0A" {
			return true
		}
	}
	return false
}

// checkBinary reports a missing or non-executable program with the command
// that builds it.
func checkBinary(path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s not found: run `make build` first (or `make demo`, which builds it)", path)
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}
