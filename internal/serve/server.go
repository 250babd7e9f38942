package serve

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/logging"
	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/readfile"
	"github.com/cvmboot/cvmboot/pkg/report"
)

// Options configure a Server; the zero value serves the real machine.
type Options struct {
	ReportPath   string        // default report.DefaultPath
	EventLogPath string        // default measure.DefaultLogPath
	TempDir      string        // where evidence is collected; default os.TempDir()
	TEE          tee.Options   // where the TEE and TPM interfaces are; zero: the real ones
	Timeout      time.Duration // bound on one evidence collection; default 2 minutes
	Log          *zap.Logger   // default: no logging
}

// Server answers the daemon's HTTP requests.
type Server struct {
	opts Options
	// collecting serializes evidence requests: the TPM, /dev/sev-guest and configfs-tsm report
	// entries are taken one request at a time.
	collecting sync.Mutex
}

// NewServer returns a server with opts' defaults filled in.
func NewServer(opts Options) *Server {
	if opts.ReportPath == "" {
		opts.ReportPath = report.DefaultPath
	}
	if opts.EventLogPath == "" {
		opts.EventLogPath = measure.DefaultLogPath
	}
	if opts.TempDir == "" {
		opts.TempDir = os.TempDir()
	}
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Minute
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	return &Server{opts: opts}
}

// MaxReportSize bounds the boot report served; a real one is a few kilobytes.
const MaxReportSize = 16 << 20

// Handler returns the HTTP handler of the endpoints.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/status", s.get(s.status))
	mux.HandleFunc("/eventlog", s.get(s.eventLog))
	mux.HandleFunc("/evidence", s.get(s.evidence))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpError(w, http.StatusNotFound, "no endpoint %q: the endpoints are GET /status, GET /eventlog and GET /evidence?nonce=HEX", r.URL.Path)
	})
	return mux
}

// get admits only GET: no endpoint takes a body or changes anything.
func (s *Server) get(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			httpError(w, http.StatusMethodNotAllowed, "%s %s: only GET is served", r.Method, r.URL.Path)
			return
		}
		h(w, r)
	}
}

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintf(w, "cvmboot serve: "+format+"\n", args...)
}

// noQuery rejects query parameters on endpoints that take none, so that a typo is not silently
// ignored.
func noQuery(w http.ResponseWriter, r *http.Request) bool {
	if r.URL.RawQuery != "" {
		httpError(w, http.StatusBadRequest, "%s takes no query parameters, found %q", r.URL.Path, r.URL.RawQuery)
		return false
	}
	return true
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	if !noQuery(w, r) {
		return
	}
	data, err := readfile.Limit(s.opts.ReportPath, MaxReportSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		httpError(w, http.StatusNotFound, "no boot report at %s: this boot did not run cvmboot", s.opts.ReportPath)
		return
	case err != nil:
		s.opts.Log.Error("reading the boot report", zap.String(logging.KeyPath, s.opts.ReportPath), zap.Error(err))
		httpError(w, http.StatusInternalServerError, "reading the boot report: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(data)
}

func (s *Server) eventLog(w http.ResponseWriter, r *http.Request) {
	if !noQuery(w, r) {
		return
	}
	data, err := readEventLog(s.opts.EventLogPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		httpError(w, http.StatusNotFound, "no event log at %s: this boot measured nothing", s.opts.EventLogPath)
		return
	case err != nil:
		s.opts.Log.Error("reading the event log", zap.String(logging.KeyPath, s.opts.EventLogPath), zap.Error(err))
		httpError(w, http.StatusInternalServerError, "reading the event log: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/jsonl")
	w.Write(data)
}

// readEventLog reads the log under a shared lock: measure appends each record with one write
// under an exclusive lock, so the copy never ends in half a record.
func readEventLog(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	limit := int64(eventlog.MaxRecords) * eventlog.MaxRecordBytes
	data, err := readfile.From(f, path, limit)
	if err != nil {
		return nil, fmt.Errorf("%w, the most an event log may hold", err)
	}
	return data, nil
}

// MinNonceSize is the shortest nonce /evidence takes (eventlog.MinNonceSize).
const MinNonceSize = eventlog.MinNonceSize

// ParseNonce checks the query of an evidence request: exactly one nonce parameter, hex, 8 to
// 64 bytes, and nothing else. The error names the problem for a 400 answer.
func ParseNonce(rawQuery string) ([]byte, error) {
	var hexNonce string
	found := false
	for _, part := range strings.Split(rawQuery, "&") {
		if part == "" {
			continue
		}
		key, value, _ := strings.Cut(part, "=")
		if key != "nonce" {
			return nil, fmt.Errorf("unknown query parameter %q: /evidence takes only nonce=HEX", truncate(key, 40))
		}
		if found {
			return nil, errors.New("nonce given twice")
		}
		hexNonce, found = value, true
	}
	if !found || hexNonce == "" {
		return nil, fmt.Errorf("no nonce: ask for /evidence?nonce=HEX with %d to %d bytes of your own, fresh for each request", MinNonceSize, eventlog.MaxNonceSize)
	}
	if len(hexNonce) > 2*eventlog.MaxNonceSize {
		return nil, fmt.Errorf("nonce of %d hex digits: at most %d bytes (%d hex digits)", len(hexNonce), eventlog.MaxNonceSize, 2*eventlog.MaxNonceSize)
	}
	if len(hexNonce)%2 != 0 {
		return nil, fmt.Errorf("nonce %q has an odd number of hex digits (%d)", hexNonce, len(hexNonce))
	}
	nonce, err := hex.DecodeString(hexNonce)
	if err != nil {
		return nil, fmt.Errorf("nonce %q is not hex: %v", truncate(hexNonce, 40), err)
	}
	if len(nonce) < MinNonceSize {
		return nil, fmt.Errorf("nonce of %d bytes: at least %d bytes (%d hex digits), random and fresh for each request", len(nonce), MinNonceSize, 2*MinNonceSize)
	}
	return nonce, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func (s *Server) evidence(w http.ResponseWriter, r *http.Request) {
	nonce, err := ParseNonce(r.URL.RawQuery)
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	var body bytes.Buffer
	code, err := s.collect(r.Context(), nonce, &body)
	if err != nil {
		httpError(w, code, "%v", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body.Bytes())
}

// collect takes evidence bound to nonce and the event log and writes the bundle to out. It
// returns the HTTP status for the error.
func (s *Server) collect(ctx context.Context, nonce []byte, out io.Writer) (int, error) {
	s.collecting.Lock()
	defer s.collecting.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	start := time.Now()
	log := s.opts.Log.With(zap.String("nonce", hex.EncodeToString(nonce)))

	// measure.Open creates a missing log; a boot that measured nothing must not get evidence
	// for an empty one.
	if _, err := os.Stat(s.opts.EventLogPath); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return http.StatusNotFound, fmt.Errorf("no event log at %s: this boot measured nothing, so there is nothing to bind evidence to", s.opts.EventLogPath)
		}
		return http.StatusInternalServerError, err
	}
	det := tee.Detect(s.opts.TEE)
	sources := det.Sources()
	if len(sources) == 0 {
		return http.StatusServiceUnavailable, fmt.Errorf("no TEE or TPM to take evidence from: %s", det.Summary())
	}
	// No extenders: the log is only read (under its lock) while the reports are taken.
	events, err := measure.Open(s.opts.EventLogPath)
	if err != nil {
		log.Error("opening the event log", zap.String(logging.KeyPath, s.opts.EventLogPath), zap.Error(err))
		return http.StatusInternalServerError, err
	}
	dir, err := os.MkdirTemp(s.opts.TempDir, "cvmboot-evidence-")
	if err != nil {
		return http.StatusInternalServerError, fmt.Errorf("evidence directory: %w", err)
	}
	defer os.RemoveAll(dir)
	ev, err := tee.Collect(ctx, events, sources, nonce, dir)
	if err != nil {
		log.Error("collecting evidence", zap.String("platforms", det.Summary()), zap.Error(err))
		return http.StatusInternalServerError, fmt.Errorf("collecting evidence: %v", err)
	}
	if err := PackBundle(dir, out); err != nil {
		log.Error("packing evidence", zap.String(logging.KeyPath, dir), zap.Error(err))
		return http.StatusInternalServerError, err
	}
	facts := tee.Facts(ev, "")
	log.Info("evidence served", zap.String("attestations", facts["attestations"]),
		zap.String("report_data", ev.ReportData), zap.String("event_log_sha256", ev.EventLog.SHA256),
		zap.Duration("took", time.Since(start).Round(time.Millisecond)))
	return http.StatusOK, nil
}
