package serve

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// The daemon speaks HTTP/1.1 with one request per connection, with its own accept loop over
// http.ReadRequest and http.Response.Write: http.Server would add its bundled HTTP/2 server,
// 1.7 MB of the guest binary's 12 MiB budget, for a local socket that never negotiates it.

// Connection limits.
const (
	maxConns        = 16               // connections handled at once; more wait in the backlog
	maxRequestBytes = 64 << 10         // request line and headers
	readTimeout     = 10 * time.Second // to receive the request
	writeTimeout    = time.Minute      // to send the answer once it is ready
	shutdownTimeout = 10 * time.Second // for running requests when the daemon stops
)

// bufferedResponse collects a handler's answer so that it is sent with its length.
type bufferedResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(code int) {
	if b.code == 0 {
		b.code = code
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.WriteHeader(http.StatusOK)
	return b.body.Write(p)
}

// ServeHTTP serves h on l until ctx ends (then waits up to shutdownTimeout for running
// requests) or accepting fails.
func ServeHTTP(ctx context.Context, l net.Listener, h http.Handler, log *zap.Logger) error {
	var running sync.WaitGroup
	slots := make(chan struct{}, maxConns)
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var err error
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		var c net.Conn
		c, err = l.Accept()
		if err != nil {
			<-slots
			var ne net.Error
			if ctx.Err() == nil && errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			if ctx.Err() != nil {
				err = nil
			}
			break
		}
		running.Add(1)
		go func() {
			defer func() { <-slots; running.Done() }()
			serveConn(ctx, c, h, log)
		}()
	}
	done := make(chan struct{})
	go func() { running.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(shutdownTimeout):
		log.Warn("requests still running at shutdown")
	}
	if err != nil {
		return fmt.Errorf("accepting connections: %w", err)
	}
	return nil
}

// serveConn reads one request from c, runs h and sends the answer.
func serveConn(ctx context.Context, c net.Conn, h http.Handler, log *zap.Logger) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(readTimeout))
	req, err := http.ReadRequest(bufio.NewReader(io.LimitReader(c, maxRequestBytes)))
	if err != nil {
		if !errors.Is(err, io.EOF) {
			sendPlain(c, http.StatusBadRequest, "cvmboot serve: malformed HTTP request: "+err.Error()+"\n")
		}
		return
	}
	c.SetReadDeadline(time.Time{})
	reqCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	req = req.WithContext(reqCtx)

	rw := &bufferedResponse{header: http.Header{}}
	func() {
		defer func() {
			if r := recover(); r != nil {
				log.Error("request handler panicked", zap.String("path", req.URL.Path), zap.Any("panic", r), zap.Stack("stack"))
				rw = &bufferedResponse{header: http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, code: http.StatusInternalServerError}
				rw.body.WriteString("cvmboot serve: internal error\n")
			}
		}()
		h.ServeHTTP(rw, req)
	}()
	if rw.code == 0 {
		rw.code = http.StatusOK
	}
	log.Debug("request", zap.String("method", req.Method), zap.String("uri", req.RequestURI), zap.Int("status", rw.code), zap.Int("bytes", rw.body.Len()))
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	send(c, req, rw)
}

func send(w io.Writer, req *http.Request, rw *bufferedResponse) error {
	rw.header.Set("Content-Length", strconv.Itoa(rw.body.Len()))
	resp := &http.Response{
		StatusCode: rw.code, ProtoMajor: 1, ProtoMinor: 1,
		Header: rw.header, Body: io.NopCloser(&rw.body), ContentLength: int64(rw.body.Len()),
		Close: true, Request: req,
	}
	return resp.Write(w)
}

func sendPlain(w io.Writer, code int, text string) {
	rw := &bufferedResponse{header: http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, code: code}
	rw.body.WriteString(text)
	send(w, nil, rw)
}
