package faults

import (
	"encoding/binary"
	"strings"
)

// On an HTTP/2 connection (gRPC: etcd) many requests share one
// connection, and the server sends control frames (SETTINGS, PING,
// WINDOW_UPDATE) whenever it likes. A lost reply there drops the first
// frame of the response to a request the client sent after the fault was
// armed, letting control frames pass, so that the server has run the
// request when its answer is lost. The proxy walks the frames of both
// directions for that; it never changes them.

// h2Preface opens every HTTP/2 connection a client makes (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// HTTP/2 frame types that carry a response (RFC 9113 §6).
const (
	h2Data    = 0x0
	h2Headers = 0x1
)

// h2Frames walks the HTTP/2 frames of one direction of a connection,
// across the chunks they arrive in.
type h2Frames struct {
	preface int     // preface bytes still to pass
	hdr     [9]byte // the frame header being read
	nhdr    int     // bytes of hdr read so far
	payload int     // payload bytes of the current frame still to pass
}

// scan calls fn for each frame whose 9-byte header ends in b, with the
// offset in b where the frame begins (negative if it began in an earlier
// chunk), its type and its stream; it stops when fn returns false.
func (h *h2Frames) scan(b []byte, fn func(start int, typ byte, stream uint32) bool) {
	for i := 0; i < len(b); {
		switch {
		case h.preface > 0:
			n := min(h.preface, len(b)-i)
			h.preface -= n
			i += n
		case h.payload > 0:
			n := min(h.payload, len(b)-i)
			h.payload -= n
			i += n
		default:
			start := i - h.nhdr
			n := copy(h.hdr[h.nhdr:], b[i:])
			h.nhdr += n
			i += n
			if h.nhdr < len(h.hdr) {
				return
			}
			h.nhdr = 0
			h.payload = int(h.hdr[0])<<16 | int(h.hdr[1])<<8 | int(h.hdr[2])
			if !fn(start, h.hdr[3], binary.BigEndian.Uint32(h.hdr[5:9])&0x7fffffff) {
				return
			}
		}
	}
}

// isH2Preface reports whether the first data a client sent opens an
// HTTP/2 connection.
func isH2Preface(b []byte) bool {
	return strings.HasPrefix(string(b), h2Preface)
}
