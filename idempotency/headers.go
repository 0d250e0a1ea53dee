package idempotency

import (
	"net/http"
	"strings"
)

// ReplayedHeader is set to "true" on every replayed response.
const ReplayedHeader = "Idempotent-Replayed"

// neverStored lists response headers that are never stored or replayed,
// whatever the allow-list says: cookies and credentials belong to one
// response and one caller, Date to one moment, and framing headers to one
// connection (net/http recomputes them for the replay).
var neverStored = map[string]bool{
	"Set-Cookie":                true,
	"Set-Cookie2":               true,
	"Cookie":                    true,
	"Authorization":             true,
	"Proxy-Authorization":       true,
	"Www-Authenticate":          true,
	"Proxy-Authenticate":        true,
	"Authentication-Info":       true,
	"Proxy-Authentication-Info": true,
	"Date":                      true,
	"Content-Length":            true,
	"Transfer-Encoding":         true,
	"Connection":                true,
	"Keep-Alive":                true,
	"Proxy-Connection":          true,
	"Te":                        true,
	"Trailer":                   true,
	"Upgrade":                   true,
	ReplayedHeader:              true,
}

// NeverStored reports whether a response header is on the fixed list that is
// never stored or replayed: Set-Cookie (and Set-Cookie2, Cookie),
// Authorization, Proxy-Authorization, WWW-Authenticate, Proxy-Authenticate,
// Authentication-Info, Proxy-Authentication-Info, Date, the framing headers
// Content-Length, Transfer-Encoding, Connection, Keep-Alive,
// Proxy-Connection, TE, Trailer and Upgrade, and Idempotent-Replayed itself.
func NeverStored(name string) bool { return neverStored[http.CanonicalHeaderKey(name)] }

func defaultReplayHeaders() map[string]bool {
	return map[string]bool{
		"Content-Type":     true,
		"Content-Encoding": true,
		"Content-Language": true,
		"Content-Location": true,
		"Location":         true,
		"Etag":             true,
		"Last-Modified":    true,
		"Cache-Control":    true,
		"Expires":          true,
		"Vary":             true,
		"Link":             true,
	}
}

// allowed returns the canonical form of the response header name k and
// whether it is stored and replayed. A name set through the map in a
// non-canonical form (w.Header()["ETag"]) counts as its canonical form.
func (c *config) allowed(k string) (string, bool) {
	if c.replayHeader[k] {
		return k, !neverStored[k]
	}
	ck := http.CanonicalHeaderKey(k)
	if ck == k {
		return k, false
	}
	return ck, c.replayHeader[ck] && !neverStored[ck]
}

// appendAllowed encodes the allowed fields of h as record header lines,
// under their canonical names, and returns them with their count.
func (c *config) appendAllowed(dst []byte, h http.Header) ([]byte, int) {
	n := 0
	for k, vs := range h {
		ck, ok := c.allowed(k)
		if !ok {
			continue
		}
		for _, v := range vs {
			dst = appendHeaderLine(dst, ck, v)
			n++
		}
	}
	return dst, n
}

// hasTrailers reports whether h declares trailers: a Trailer field, or a
// field named with http.TrailerPrefix.
func hasTrailers(h http.Header) bool {
	if _, ok := h["Trailer"]; ok {
		return true
	}
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}
