package idempotency

import "net/http"

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

// appendAllowed encodes the allowed fields of h as record header lines and
// returns them with their count.
func (c *config) appendAllowed(dst []byte, h http.Header) ([]byte, int) {
	n := 0
	for k, vs := range h {
		if !c.replayHeader[k] || neverStored[k] {
			continue
		}
		for _, v := range vs {
			dst = appendHeaderLine(dst, k, v)
			n++
		}
	}
	return dst, n
}
