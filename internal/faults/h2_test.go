package faults

import (
	"reflect"
	"testing"
)

// frame is an HTTP/2 frame of type typ on stream, with n payload bytes.
func frame(typ byte, stream uint32, n int) []byte {
	b := []byte{byte(n >> 16), byte(n >> 8), byte(n), typ, 0,
		byte(stream >> 24), byte(stream >> 16), byte(stream >> 8), byte(stream)}
	return append(b, make([]byte, n)...)
}

func TestH2FramesAcrossChunks(t *testing.T) {
	var data []byte
	data = append(data, h2Preface...)
	data = append(data, frame(0x4, 0, 6)...)        // SETTINGS
	data = append(data, frame(h2Headers, 1, 20)...) // a request
	data = append(data, frame(h2Data, 1, 300)...)
	data = append(data, frame(0x6, 0, 8)...) // PING
	type seen struct {
		start  int
		typ    byte
		stream uint32
	}
	want := []seen{{24, 0x4, 0}, {39, h2Headers, 1}, {68, h2Data, 1}, {377, 0x6, 0}}
	// Every way of cutting the data in two gives the same frames, with
	// their offsets in the whole.
	for cut := 0; cut <= len(data); cut++ {
		h := h2Frames{preface: len(h2Preface)}
		var got []seen
		for i, part := range [][]byte{data[:cut], data[cut:]} {
			base := 0
			if i == 1 {
				base = cut
			}
			h.scan(part, func(start int, typ byte, stream uint32) bool {
				got = append(got, seen{base + start, typ, stream})
				return true
			})
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("cut at %d: frames %v, want %v", cut, got, want)
		}
	}
	if !isH2Preface(data) || isH2Preface([]byte("*1\r\n$4\r\nPING\r\n")) {
		t.Error("isH2Preface does not tell an HTTP/2 preface from RESP")
	}
}
