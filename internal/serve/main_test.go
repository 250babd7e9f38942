package serve_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/serve"
)

// childEnv makes the test binary run serve.Main with the arguments it holds (separated by
// spaces) instead of the tests: the daemon handles signals and may take fd 3, which a test
// process must not share.
const childEnv = "CVMBOOT_SERVE_TEST_CHILD"

func TestMain(m *testing.M) {
	if args := os.Getenv(childEnv); args != "" {
		if os.Getenv("LISTEN_FDS") != "" {
			// systemd sets LISTEN_PID after fork; the child does it for itself here.
			os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
		}
		os.Exit(serve.Main(strings.Fields(args), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

type daemon struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	exited chan struct{}
}

func startDaemon(t *testing.T, extra *os.File, env []string, args ...string) *daemon {
	t.Helper()
	d := &daemon{cmd: exec.Command(os.Args[0]), exited: make(chan struct{})}
	d.cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(args, " "), "TMPDIR="+t.TempDir())
	d.cmd.Env = append(d.cmd.Env, env...)
	d.cmd.Stderr = &d.stderr
	if extra != nil {
		d.cmd.ExtraFiles = []*os.File{extra} // fd 3 in the child
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.exited
	})
	return d
}

// client runs the client and returns its exit code, stdout and stderr.
func client(socket, path string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := serve.Get(socket, path, &out, &errOut)
	return code, out.String(), errOut.String()
}

// waitServing waits until the daemon answers on socket.
func (d *daemon) waitServing(t *testing.T, socket string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, _, _ := client(socket, "/status")
		if code != serve.ExitIOError {
			return
		}
		select {
		case <-d.exited:
			t.Fatalf("the daemon exited (%v):\n%s", d.cmd.ProcessState, d.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon does not answer on %s:\n%s", socket, d.stderr.String())
		}
	}
}

// stop sends SIGTERM and returns the exit code.
func (d *daemon) stop(t *testing.T) int {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("the daemon did not stop on SIGTERM:\n%s", d.stderr.String())
	}
	return d.cmd.ProcessState.ExitCode()
}

func TestDaemon(t *testing.T) {
	// As root (CI), the socket is handed to a group root is not in: chown really happens.
	gid := os.Getgid()
	if os.Geteuid() == 0 {
		gid = 65534
	}
	tests := []struct {
		name string
		args []string
		mode os.FileMode
		gid  int
	}{
		{"default root only", nil, 0o600, os.Getgid()},
		{"group", []string{"--group", strconv.Itoa(gid)}, 0o660, gid},
		{"explicit mode", []string{"--group", strconv.Itoa(gid), "--mode", "0640"}, 0o640, gid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			socket := filepath.Join(t.TempDir(), "run", "s.sock")
			d := startDaemon(t, nil, nil, append([]string{"--socket", socket, "--watch-verity=false"}, tt.args...)...)
			d.waitServing(t, socket)
			fi, err := os.Stat(socket)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != tt.mode {
				t.Errorf("socket mode %v, want %v", fi.Mode(), tt.mode)
			}
			if gid := fi.Sys().(*syscall.Stat_t).Gid; int(gid) != tt.gid {
				t.Errorf("socket group %d, want %d", gid, tt.gid)
			}
			// A second daemon on the same socket refuses to take it over.
			code := serve.Main([]string{"--socket", socket, "--watch-verity=false"}, &bytes.Buffer{}, &bytes.Buffer{})
			if code != serve.ExitIOError {
				t.Errorf("second daemon on a live socket: exit %d, want %d", code, serve.ExitIOError)
			}
			if code, _, stderr := client(socket, "/evidence?nonce=zz"); code != serve.ExitFailed || !strings.Contains(stderr, "400 Bad Request") || !strings.Contains(stderr, "not hex") {
				t.Errorf("bad nonce: exit %d, stderr %q", code, stderr)
			}
			if code, _, stderr := client(socket, "/nothing"); code != serve.ExitFailed || !strings.Contains(stderr, "404") {
				t.Errorf("unknown path: exit %d, stderr %q", code, stderr)
			}
			if code := d.stop(t); code != serve.ExitOK {
				t.Errorf("exit %d after SIGTERM, want 0:\n%s", code, d.stderr.String())
			}
			if _, err := os.Lstat(socket); !os.IsNotExist(err) {
				t.Errorf("the socket is left after the daemon stopped (%v)", err)
			}
		})
	}
}

// TestSocketActivation passes a listening socket as fd 3, as systemd does.
func TestSocketActivation(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "activated.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unused := filepath.Join(t.TempDir(), "unused.sock")
	d := startDaemon(t, f, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=cvmboot-serve.socket"}, "--socket", unused, "--watch-verity=false")
	d.waitServing(t, socket)
	if _, err := os.Stat(unused); !os.IsNotExist(err) {
		t.Errorf("the daemon bound --socket despite socket activation (%v)", err)
	}
	if code := d.stop(t); code != serve.ExitOK {
		t.Errorf("exit %d, want 0", code)
	}
	if !strings.Contains(d.stderr.String(), "socket activation") {
		t.Errorf("the daemon did not say it was socket-activated:\n%s", d.stderr.String())
	}

	// Two sockets are refused: the daemon serves one.
	d = startDaemon(t, f, []string{"LISTEN_FDS=2"}, "--socket", unused, "--watch-verity=false")
	<-d.exited
	if code := d.cmd.ProcessState.ExitCode(); code != serve.ExitIOError || !strings.Contains(d.stderr.String(), "LISTEN_FDS=2") {
		t.Errorf("LISTEN_FDS=2: exit %d, want %d naming it:\n%s", code, serve.ExitIOError, d.stderr.String())
	}
}

func TestActivatedListenerEnv(t *testing.T) {
	tests := []struct {
		name, pid, fds string
		wantErr        string
	}{
		{"not activated", "", "", ""},
		{"another process", "1", "1", ""},
		{"bad pid", "x", "1", `LISTEN_PID="x"`},
		{"bad count", strconv.Itoa(os.Getpid()), "many", `LISTEN_FDS="many"`},
		{"no socket", strconv.Itoa(os.Getpid()), "0", "expected exactly 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("LISTEN_PID", tt.pid)
			t.Setenv("LISTEN_FDS", tt.fds)
			l, err := serve.ActivatedListener()
			if l != nil {
				t.Fatal("a listener without a passed socket")
			}
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("error %v, want %q", err, tt.wantErr)
			}
			if tt.pid != "" && (os.Getenv("LISTEN_PID") != "" || os.Getenv("LISTEN_FDS") != "") {
				t.Error("LISTEN_PID/LISTEN_FDS are left in the environment")
			}
		})
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	// A stale socket (its daemon gone) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if l, err = serve.ListenUnix(stale, 0o600, -1); err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	l.Close()

	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, []byte("keep me"), 0o644)
	if _, err := serve.ListenUnix(regular, 0o600, -1); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v, want a refusal", err)
	}
	if data, _ := os.ReadFile(regular); string(data) != "keep me" {
		t.Error("the regular file was replaced")
	}
}

func TestMainUsage(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"help", []string{"--help"}, serve.ExitOK, "Usage: cvmboot serve", ""},
		{"bad mode", []string{"--mode", "999"}, serve.ExitUsage, "", `--mode "999"`},
		{"mode with type bits", []string{"--mode", "01777"}, serve.ExitUsage, "", `--mode "01777"`},
		{"bad level", []string{"--log-level", "loud"}, serve.ExitUsage, "", `--log-level "loud"`},
		{"bad action", []string{"--on-corruption", "explode"}, serve.ExitUsage, "", `corruption action "explode"`},
		{"bad group", []string{"--group", "no-such-group-cvmboot"}, serve.ExitUsage, "", "no-such-group-cvmboot"},
		{"argument", []string{"extra"}, serve.ExitUsage, "", `expected 0 arguments, found 1 (extra)`},
		{"unknown flag", []string{"--bogus"}, serve.ExitUsage, "", "bogus"},
		{"client path", []string{"--get", "status"}, serve.ExitUsage, "", "must start with /"},
		{"client no daemon", []string{"--get", "/status", "--socket", "/nonexistent/cvmboot.sock"}, serve.ExitIOError, "", "/nonexistent/cvmboot.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := serve.Main(tt.args, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, stdout.String(), stderr.String(), tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

// TestServeHTTP drives the connection loop with raw bytes.
func TestServeHTTP(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "raw.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("fine")) })
	mux.HandleFunc("/panic", func(http.ResponseWriter, *http.Request) { panic("handler bug") })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve.ServeHTTP(ctx, l, mux, zap.NewNop()) }()

	tests := []struct{ request, status, body string }{
		{"GET /ok HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK", "fine"},
		{"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK", "fine"},
		{"GET /panic HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 500 Internal Server Error", "internal error"},
		{"NONSENSE\r\n\r\n", "HTTP/1.1 400 Bad Request", "malformed HTTP request"},
		{"GET /ok HTTP/1.1\r\nX: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", "HTTP/1.1 400 Bad Request", "malformed"},
	}
	for _, tt := range tests {
		c, err := net.Dial("unix", socket)
		if err != nil {
			t.Fatal(err)
		}
		go c.Write([]byte(tt.request)) // the server may answer before reading an oversized request
		c.SetDeadline(time.Now().Add(10 * time.Second))
		resp, err := io.ReadAll(c)
		c.Close()
		if err != nil && len(resp) == 0 {
			t.Errorf("%.40q: %v", tt.request, err)
			continue
		}
		head, body, _ := strings.Cut(string(resp), "\r\n\r\n")
		if !strings.HasPrefix(head, tt.status) || !strings.Contains(body, tt.body) || !strings.Contains(head, "Content-Length: ") || !strings.Contains(head, "Connection: close") {
			t.Errorf("%.40q: answer %q, want %q with %q", tt.request, resp, tt.status, tt.body)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeHTTP after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("ServeHTTP did not return after its context ended")
	}
}
