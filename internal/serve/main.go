package serve

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/cvmboot/cvmboot/internal/cmdkit"
	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/logging"
	"github.com/cvmboot/cvmboot/internal/measure"
)

// Exit codes, as in the rest of the command line (cmdkit's): 0 served until stopped or the
// client got a 2xx answer, 1 serving failed or the client got an error answer, 3 the socket
// could not be created or reached.
const (
	ExitOK      = cmdkit.ExitOK
	ExitFailed  = cmdkit.ExitFailed
	ExitUsage   = cmdkit.ExitUsage
	ExitIOError = cmdkit.ExitIO
)

const usage = `Usage: cvmboot serve [--socket PATH] [--group NAME] [--mode 0660] [--log-level L]
       cvmboot serve --get PATH [--socket PATH]

Serves the current boot's report, its event log and fresh attestation evidence on a local
Unix socket (HTTP), and watches dm-verity for corrupted blocks. Run by cvmboot-serve.service
(socket activation from cvmboot-serve.socket); see the package documentation of
internal/serve for the bundle format.

Endpoints:
  GET /status              the boot report (/run/cvmboot/report.json)
  GET /eventlog            the event log (/run/cvmboot/eventlog)
  GET /evidence?nonce=HEX  evidence bound to the nonce (8-64 bytes) and the event log: a JSON
                           bundle of the evidence directory ('cvmboot evidence verify' checks
                           it once unpacked)

A dm-verity corruption is logged at critical priority with the device and block, then the
policy applies: panic (the kernel panics by itself), restart (reboot), ignore (log only).

With --get PATH the command is the client: it asks the daemon for PATH, e.g.
'/evidence?nonce=0011223344556677', and writes the answer's body to standard output.

Options:
`

const exitHelp = `
Exit codes: 0 success, 1 failure (serving failed; the client got an error answer), 2 usage
error, 3 the socket could not be created or reached.
`

type flags struct {
	socket       string
	group        string
	mode         string
	logLevel     string
	get          string
	config       string
	onCorruption string
	watchVerity  bool
	tempDir      string
	modeSet      bool
}

// Main runs `cvmboot serve` with args (after "serve") and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	var f flags
	fset := cmdkit.NewFlagSet("serve")
	fset.StringVar(&f.socket, "socket", DefaultSocket, "Unix socket to listen on (or, with --get, to ask)")
	fset.StringVar(&f.group, "group", "", "group (name or id) allowed to use the socket; makes it mode 0660")
	fset.StringVar(&f.mode, "mode", "0600", "socket permissions, octal")
	fset.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fset.StringVar(&f.get, "get", "", "client: ask the daemon for `PATH` and print the body")
	fset.StringVar(&f.config, "config", config.DefaultPath, "config file giving verity.on_corruption when the event log does not")
	fset.StringVar(&f.onCorruption, "on-corruption", "", "panic, restart or ignore: overrides the measured and configured dm-verity corruption policy")
	fset.BoolVar(&f.watchVerity, "watch-verity", true, "watch dm-verity corruption uevents")
	fset.StringVar(&f.tempDir, "tmpdir", "", "directory for collecting evidence (default $TMPDIR or /tmp)")
	var defaults strings.Builder
	fset.SetOutput(&defaults)
	fset.PrintDefaults()
	fset.SetOutput(io.Discard)
	c := cmdkit.Cmd{Name: "cvmboot serve", Usage: usage + defaults.String() + exitHelp, Stdout: stdout, Stderr: stderr}
	if _, code, ok := c.Parse(fset, args, 0); !ok {
		return code
	}
	fset.Visit(func(fl *flag.Flag) {
		if fl.Name == "mode" {
			f.modeSet = true
		}
	})
	if f.get != "" {
		return Get(f.socket, f.get, stdout, stderr)
	}
	return run(f, stderr)
}

func usageError(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "cvmboot serve: "+format+"\n", args...)
	return ExitUsage
}

func run(f flags, stderr io.Writer) int {
	level, err := zapcore.ParseLevel(f.logLevel)
	if err != nil {
		return usageError(stderr, "--log-level %q: expected debug, info, warn or error", f.logLevel)
	}
	mode, err := strconv.ParseUint(f.mode, 8, 32)
	if err != nil || mode&^0o777 != 0 {
		return usageError(stderr, "--mode %q: expected octal permissions such as 0600 or 0660", f.mode)
	}
	gid := -1
	if f.group != "" {
		if gid, err = LookupGroup(f.group); err != nil {
			return usageError(stderr, "--group: %v", err)
		}
		if !f.modeSet {
			mode = 0o660
		}
	}
	var override config.CorruptionAction
	if f.onCorruption != "" {
		if override, err = ParseCorruptionAction(f.onCorruption); err != nil {
			return usageError(stderr, "--on-corruption: %v", err)
		}
	}
	log := logging.Auto(level, false).Named("serve")
	defer log.Sync()
	// Before the socket exists: whoever sees it may already signal the daemon to stop.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	ln, err := ActivatedListener()
	if err != nil {
		log.Error("socket activation", zap.Error(err))
		fmt.Fprintf(stderr, "cvmboot serve: %v\n", err)
		return ExitIOError
	}
	if ln != nil {
		log.Info("serving on the socket systemd passed (socket activation); --socket, --mode and --group do not apply",
			zap.String("socket", ln.Addr().String()))
	} else {
		if ln, err = ListenUnix(f.socket, fs.FileMode(mode), gid); err != nil {
			log.Error("cannot listen", zap.String(logging.KeyPath, f.socket), zap.Error(err))
			fmt.Fprintf(stderr, "cvmboot serve: %s: %v\n", f.socket, err)
			return ExitIOError
		}
		log.Info("serving", zap.String("socket", f.socket), zap.String("mode", fmt.Sprintf("%04o", mode)), zap.Int("gid", gid))
	}

	if f.watchVerity {
		policy, warnings := LoadPolicy(measure.DefaultLogPath, f.config, cmdline.DefaultPath)
		for _, w := range warnings {
			log.Warn("dm-verity corruption policy", zap.String("problem", w))
		}
		policy.Override = override
		log.Info("dm-verity corruption policy", zap.Any("measured", policy.Measured),
			zap.String("configured", string(policy.Configured)), zap.String("override", string(policy.Override)))
		w := &Watcher{Log: log, Policy: policy}
		go func() {
			// The evidence endpoints stay useful without the watch; the failure is loud.
			if err := w.Run(ctx); err != nil {
				log.Error("dm-verity corruption watch stopped: corruption is no longer reported", zap.Error(err))
			}
		}()
	}

	h := NewServer(Options{TempDir: f.tempDir, Log: log}).Handler()
	if err := ServeHTTP(ctx, ln, h, log); err != nil {
		log.Error("serving failed", zap.Error(err))
		return ExitFailed
	}
	log.Info("stopped")
	return ExitOK
}

// Get is the client: it asks the daemon on socket for path and copies the body of a 2xx answer
// to stdout; an error answer's body goes to stderr.
func Get(socket, path string, stdout, stderr io.Writer) int {
	if !strings.HasPrefix(path, "/") {
		fmt.Fprintf(stderr, "cvmboot serve --get %q: the path must start with /, e.g. /status\n", path)
		return ExitUsage
	}
	conn, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot serve --get: %v (is cvmboot-serve.socket running? the socket is root-only unless --group was given)\n", err)
		return ExitIOError
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(6 * time.Minute))
	req, err := http.NewRequest(http.MethodGet, "http://cvmboot"+path, nil)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot serve --get %q: %v\n", path, err)
		return ExitUsage
	}
	req.Close = true
	// A bare request writer and response reader: http.Transport would double the client's size
	// for one request on one connection.
	if err := req.Write(conn); err != nil {
		fmt.Fprintf(stderr, "cvmboot serve --get: sending the request: %v\n", err)
		return ExitIOError
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot serve --get: reading the answer: %v\n", err)
		return ExitIOError
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		fmt.Fprintf(stderr, "cvmboot serve --get %s: %s\n", path, resp.Status)
		io.Copy(stderr, io.LimitReader(resp.Body, 64<<10))
		return ExitFailed
	}
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		fmt.Fprintf(stderr, "cvmboot serve --get: reading the body: %v\n", err)
		return ExitIOError
	}
	return ExitOK
}
