package idempotency

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
)

// recorder wraps the ResponseWriter of a guarded request: it passes every
// write through at once and keeps what it needs to store the response.
// Flush, Hijack and http.ResponseController keep working: Flush and Hijack
// are methods of the recorder (so it knows the response streamed or left
// HTTP), and Unwrap gives ResponseController the writer underneath for the
// rest (deadlines, full duplex).
type recorder struct {
	w        http.ResponseWriter
	max      int
	cfg      *config
	status   int
	hdr      []byte // allowed headers as record lines, captured at WriteHeader
	nhdr     int
	body     []byte
	written  int64 // body bytes the handler wrote, stored or not
	declared int64 // the Content-Length the handler declared, or -1
	wrote    bool  // a final status was written
	over     bool  // the body passed the cap; body was dropped
	flushed  bool
	hijack   bool
	terminal bool
	// Inline room for a typical response's headers and body, so that
	// capturing them allocates nothing more.
	hdrBuf  [256]byte
	bodyBuf [512]byte
}

func newRecorder(w http.ResponseWriter, c *config) *recorder {
	rec := &recorder{w: w, max: c.maxRespBody, cfg: c, declared: -1}
	rec.hdr = rec.hdrBuf[:0]
	rec.body = rec.bodyBuf[:0]
	return rec
}

func (rec *recorder) Header() http.Header { return rec.w.Header() }

func (rec *recorder) WriteHeader(code int) {
	if rec.wrote || rec.hijack {
		rec.w.WriteHeader(code) // net/http logs the superfluous call
		return
	}
	if code < 200 && code != http.StatusSwitchingProtocols || code > 999 {
		// Informational: not the final status; or invalid, which net/http
		// refuses (with a panic) and which is never recorded.
		rec.w.WriteHeader(code)
		return
	}
	rec.wrote = true
	rec.status = code
	if code == http.StatusSwitchingProtocols {
		rec.hijack = true
	}
	h := rec.w.Header()
	rec.hdr, rec.nhdr = rec.cfg.appendAllowed(rec.hdr[:0], h)
	if cl := h["Content-Length"]; len(cl) == 1 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
			rec.declared = n
		}
	}
	rec.w.WriteHeader(code)
}

// incomplete reports whether the handler wrote less of the body than the
// Content-Length it declared (for a status that has a body).
func (rec *recorder) incomplete() bool {
	switch {
	case rec.declared < 0, rec.status == http.StatusNoContent, rec.status == http.StatusNotModified:
		return false
	}
	return rec.written < rec.declared
}

func (rec *recorder) Write(p []byte) (int, error) {
	if !rec.wrote {
		rec.WriteHeader(http.StatusOK)
	}
	rec.written += int64(len(p))
	if !rec.over {
		if len(rec.body)+len(p) > rec.max {
			rec.over = true
			rec.body = rec.bodyBuf[:0]
		} else {
			rec.body = append(rec.body, p...)
		}
	}
	return rec.w.Write(p)
}

// Flush sends what was written so far; the response is then a stream and is
// not stored.
func (rec *recorder) Flush() { _ = rec.FlushError() }

// FlushError is Flush for http.ResponseController.
func (rec *recorder) FlushError() error {
	if !rec.wrote {
		rec.WriteHeader(http.StatusOK)
	}
	rec.flushed = true
	return http.NewResponseController(rec.w).Flush()
}

// Hijack takes the connection over (HTTP/1 only); the response is then not
// stored.
func (rec *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, b, err := http.NewResponseController(rec.w).Hijack()
	if err == nil {
		rec.hijack = true
	}
	return c, b, err
}

// Unwrap returns the ResponseWriter underneath, for http.ResponseController.
func (rec *recorder) Unwrap() http.ResponseWriter { return rec.w }

// MarkTerminal declares the response being written as the final outcome of
// its key: it is stored and replayed even if the classifier would release
// the key (for example a 402 after a declined charge, or a 409 for a
// business conflict). Call it before the handler returns. w is the
// ResponseWriter the handler got, possibly wrapped by other middleware that
// has an Unwrap() http.ResponseWriter method. It reports whether w belongs
// to a guarded request.
func MarkTerminal(w http.ResponseWriter) bool {
	for {
		switch v := w.(type) {
		case *recorder:
			v.terminal = true
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			w = v.Unwrap()
		default:
			return false
		}
	}
}
