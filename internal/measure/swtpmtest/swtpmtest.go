// Package swtpmtest starts a software TPM 2.0 (swtpm) for tests, so that PCR extends, keys and
// quotes run against a real TPM implementation rather than a fake.
package swtpmtest

import (
	"bytes"
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
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Skip("swtpm is not installed (apt-get install swtpm): skipping the real-TPM test")
	}
	// Unix socket paths are limited to 108 bytes: keep them short, outside t.TempDir's long path.
	sockDir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	state := t.TempDir()
	server := filepath.Join(sockDir, "s")
	ctrl := filepath.Join(sockDir, "c")
	var out bytes.Buffer
	cmd := exec.Command(bin, "socket", "--tpm2",
		"--server", "type=unixio,path="+server,
		"--ctrl", "type=unixio,path="+ctrl,
		"--flags", "not-need-init,startup-clear",
		"--tpmstate", "dir="+state)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
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
