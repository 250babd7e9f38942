// Package swtpmtest starts a software TPM 2.0 (swtpm) for tests, so that PCR extends, keys and
// quotes run against a real TPM implementation rather than a fake.
package swtpmtest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// Start starts swtpm with its state in a temporary directory and returns a connection to it; the
// test is skipped when swtpm is not installed, and swtpm is killed when the test ends.
func Start(t testing.TB) transport.TPMCloser {
	t.Helper()
	// Unix socket paths are limited to 108 bytes: keep them short, outside t.TempDir's long path.
	sockDir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	server := filepath.Join(sockDir, "s")
	ctrl := filepath.Join(sockDir, "c")
	out, exited := run(t, "type=unixio,path="+server, "type=unixio,path="+ctrl)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(server); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("swtpm exited before listening: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("swtpm did not create %s within 10s\n%s", server, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The socket file exists from bind(2), before swtpm listens: a refused connection is
	// retried until the deadline. startup-clear has run the startup already; a quick command
	// proves the TPM answers.
	for {
		tpm, err := linuxudstpm.Open(server)
		if err != nil {
			t.Fatalf("open swtpm at %s: %v", server, err)
		}
		_, err = (tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, PropertyCount: 1}).Execute(tpm)
		if err == nil {
			t.Cleanup(func() { tpm.Close() })
			return tpm
		}
		tpm.Close()
		if time.Now().After(deadline) {
			t.Fatalf("swtpm does not answer within 10s: %v\n%s", err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// run starts swtpm with the given server and control channels and a fresh state; the test
// is skipped when swtpm is not installed, and swtpm is killed when the test ends. It returns
// swtpm's output and a channel that gets its exit.
func run(t testing.TB, server, ctrl string) (*bytes.Buffer, <-chan error) {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Skip("swtpm is not installed (apt-get install swtpm): skipping the real-TPM test")
	}
	out := &bytes.Buffer{}
	cmd := exec.Command(bin, "socket", "--tpm2", "--server", server, "--ctrl", ctrl,
		"--flags", "not-need-init,startup-clear", "--tpmstate", "dir="+t.TempDir())
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	return out, exited
}

// TCP is a swtpm listening on loopback TCP, the only transport tpm2-tss's swtpm TCTI (as in
// Debian 12) speaks: it lets systemd's tools and the test use the same TPM, one connection at a
// time (swtpm serves one client at a time).
type TCP struct {
	Port int // the TPM command port; the control port is Port+1
}

// TCTI is the TPM2 device string systemd's tools take (--tpm2-device=, $SYSTEMD_TPM2_DEVICE).
func (s TCP) TCTI() string { return fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", s.Port) }

// Open connects to the TPM; close it before a systemd tool needs the TPM.
func (s TCP) Open(t testing.TB) transport.TPMCloser {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port))
		if err == nil {
			tpm := transport.FromReadWriteCloser(conn)
			if _, err = (tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, PropertyCount: 1}).Execute(tpm); err == nil {
				return tpm
			}
			tpm.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("swtpm on port %d does not answer within 10s: %v", s.Port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StartTCP starts swtpm on two free loopback ports; the test is skipped when swtpm is not
// installed, and swtpm is killed when the test ends.
func StartTCP(t testing.TB) TCP {
	t.Helper()
	port, err := freePortPair()
	if err != nil {
		t.Fatal(err)
	}
	run(t, fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port), fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1))
	s := TCP{Port: port}
	s.Open(t).Close()
	return s
}

// freePortPair finds p with p and p+1 both free on loopback.
func freePortPair() (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, fmt.Errorf("no two adjacent free TCP ports on loopback")
}
