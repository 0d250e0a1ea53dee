package memlock

// deadlineHeap is a binary min-heap of holdings ordered by deadline. Each
// lease records its index so that refresh and release are O(log n).
type deadlineHeap []*lease

func (h *deadlineHeap) push(le *lease) {
	le.index = len(*h)
	*h = append(*h, le)
	h.up(le.index)
}

// pop removes and returns the earliest holding.
func (h *deadlineHeap) pop() *lease {
	le := (*h)[0]
	h.remove(le)
	return le
}

func (h *deadlineHeap) remove(le *lease) {
	s := *h
	i, last := le.index, len(s)-1
	if i != last {
		s.swap(i, last)
	}
	s[last] = nil
	*h = s[:last]
	le.index = -1
	if i != last {
		h.fix(s[i])
	}
}

// fix restores the order after le's deadline changed.
func (h *deadlineHeap) fix(le *lease) {
	if !h.down(le.index) {
		h.up(le.index)
	}
}

func (h deadlineHeap) less(i, j int) bool { return h[i].deadline < h[j].deadline }

func (h deadlineHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h deadlineHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

// down sinks element i and reports whether it moved.
func (h deadlineHeap) down(i int) bool {
	start := i
	for {
		c := 2*i + 1
		if c >= len(h) {
			break
		}
		if r := c + 1; r < len(h) && h.less(r, c) {
			c = r
		}
		if !h.less(c, i) {
			break
		}
		h.swap(i, c)
		i = c
	}
	return i != start
}
