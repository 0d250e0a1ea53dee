package faults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// dialTimeout bounds a proxy's connection to its upstream server.
const dialTimeout = 5 * time.Second

// Net is a set of TCP proxies on loopback, one in front of each server
// address a client uses, made for one client (or a group of clients that
// share its faults). Give a client the proxies' addresses ([Net.Addr],
// [Net.Addrs]) or its dial function ([Net.DialContext]), which routes
// every address the client dials (such as the nodes a Redis Cluster or a
// Sentinel names) through a proxy made on first use.
//
// Faults on the Net act on all its proxies, also those made later; the
// same faults on one [Proxy] act on that proxy alone. A Net and its
// proxies close when the test that made it ends; closing waits for every
// goroutine they started.
type Net struct {
	tb     testing.TB
	shared bool // in front of the shared servers: faults are refused

	mu      sync.Mutex
	proxies map[string]*Proxy // by upstream address
	byAddr  map[string]*Proxy // by listen address
	closed  bool

	state atomic.Pointer[netState]
}

// netState is the Net's active faults; it is replaced, never changed, and
// the replaced state's changed channel is closed, so that held data
// notices a heal.
type netState struct {
	faults  []*Fault
	changed chan struct{}
}

func newNet(tb testing.TB, shared bool) *Net {
	n := &Net{tb: tb, shared: shared, proxies: map[string]*Proxy{}, byAddr: map[string]*Proxy{}}
	n.state.Store(&netState{changed: make(chan struct{})})
	tb.Cleanup(n.close)
	return n
}

// Addr returns the address of the proxy in front of upstream (a loopback
// host:port), making the proxy on first use.
func (n *Net) Addr(upstream string) string {
	n.tb.Helper()
	p, err := n.proxyFor(upstream)
	if err != nil {
		n.tb.Fatalf("faults: %v", err)
	}
	return p.Addr()
}

// Addrs returns [Net.Addr] of each upstream address.
func (n *Net) Addrs(upstreams []string) []string {
	n.tb.Helper()
	out := make([]string, len(upstreams))
	for i, u := range upstreams {
		out[i] = n.Addr(u)
	}
	return out
}

// Proxy returns the proxy in front of upstream, making it on first use.
func (n *Net) Proxy(upstream string) *Proxy {
	n.tb.Helper()
	p, err := n.proxyFor(upstream)
	if err != nil {
		n.tb.Fatalf("faults: %v", err)
	}
	return p
}

// Proxies returns the proxies made so far.
func (n *Net) Proxies() []*Proxy {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*Proxy, 0, len(n.proxies))
	for _, p := range n.proxies {
		out = append(out, p)
	}
	return out
}

// used adds to set the upstream addresses that a connection went to
// through this Net.
func (n *Net) used(set map[string]bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for u, p := range n.proxies {
		if p.Accepted() > 0 {
			set[u] = true
		}
	}
}

// DialContext connects to addr through its proxy. addr may be a server's
// address (its proxy is made on first use) or one of the Net's proxy
// addresses. It has the signature of net.Dialer.DialContext, for the dial
// hooks of go-redis (Options.Dialer), gomemcache (Client.DialContext), gRPC
// (grpc.WithContextDialer, with network "tcp") and net/http
// (Transport.DialContext).
func (n *Net) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if !strings.HasPrefix(network, "tcp") {
		return nil, fmt.Errorf("faults: cannot proxy network %q", network)
	}
	p, err := n.proxyFor(addr)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", p.Addr())
}

// proxyFor returns the proxy listening on addr or in front of addr.
func (n *Net) proxyFor(addr string) (*Proxy, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, errors.New("faults: the Net is closed (its test ended)")
	}
	if p := n.byAddr[addr]; p != nil {
		return p, nil
	}
	if p := n.proxies[addr]; p != nil {
		return p, nil
	}
	if err := loopback(addr); err != nil {
		return nil, err
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("faults: proxy for %s: %v", addr, err)
	}
	p := &Proxy{net: n, upstream: addr, ln: ln, addr: ln.Addr().String(), links: map[*link]struct{}{}}
	n.proxies[addr] = p
	n.byAddr[p.addr] = p
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// loopback checks that addr is a host:port on the loopback interface: a
// proxy never reaches anything else.
func loopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("faults: bad address %q: %v", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("faults: %s is not a loopback address; proxies only reach loopback servers", addr)
}

func (n *Net) close() {
	n.mu.Lock()
	n.closed = true
	ps := make([]*Proxy, 0, len(n.proxies))
	for _, p := range n.proxies {
		ps = append(ps, p)
	}
	n.mu.Unlock()
	for _, p := range ps {
		p.close()
	}
}

// add makes f active.
func (n *Net) add(f *Fault) *Fault {
	n.tb.Helper()
	if n.shared {
		f.tb.Fatalf("faults: %s refused: this Net is in front of the shared servers, which are never faulted; use faults.Start for a private set", f)
		return f
	}
	n.mu.Lock()
	old := n.state.Load()
	st := &netState{faults: append(append([]*Fault(nil), old.faults...), f), changed: make(chan struct{})}
	n.state.Store(st)
	close(old.changed)
	n.mu.Unlock()
	return f.register()
}

// remove makes f inactive (Heal).
func (n *Net) remove(f *Fault) {
	n.mu.Lock()
	defer n.mu.Unlock()
	old := n.state.Load()
	st := &netState{changed: make(chan struct{})}
	for _, g := range old.faults {
		if g != f {
			st.faults = append(st.faults, g)
		}
	}
	n.state.Store(st)
	close(old.changed)
}

// applies reports whether f acts on proxy p in direction d.
func (f *Fault) applies(p *Proxy, d Direction) bool {
	return (f.proxy == nil || f.proxy == p) && f.dir&d != 0
}

// find returns the first active fault of kind k acting on p in direction d.
func (st *netState) find(k kind, p *Proxy, d Direction) *Fault {
	for _, f := range st.faults {
		if f.kind == k && f.applies(p, d) {
			return f
		}
	}
	return nil
}

// delay is the latency the active faults add to one chunk on p in
// direction d, and the faults that added it.
func (st *netState) delay(p *Proxy, d Direction) (time.Duration, []*Fault) {
	var total time.Duration
	var by []*Fault
	for _, f := range st.faults {
		if f.kind != kindLatency || !f.applies(p, d) {
			continue
		}
		dl := f.latency
		if f.jitter > 0 {
			dl += time.Duration(rand.Int64N(int64(2*f.jitter)+1)) - f.jitter
		}
		total += max(dl, 0)
		by = append(by, f)
	}
	return total, by
}

// ---------------------------------------------------------------- faults

func (n *Net) latency(tb testing.TB, p *Proxy, d Direction, latency, jitter time.Duration) *Fault {
	f := newFault(tb, kindLatency, fmt.Sprintf("latency %v±%v %v%s", latency, jitter, d, p.where()))
	f.net, f.proxy, f.dir, f.latency, f.jitter = n, p, d, latency, jitter
	return n.add(f)
}

func (n *Net) blackHole(tb testing.TB, p *Proxy, d Direction) *Fault {
	f := newFault(tb, kindBlackHole, fmt.Sprintf("black hole %v%s", d, p.where()))
	f.net, f.proxy, f.dir = n, p, d
	return n.add(f)
}

func (n *Net) refuse(tb testing.TB, p *Proxy) *Fault {
	f := newFault(tb, kindRefuse, "refuse new connections"+p.where())
	f.net, f.proxy, f.dir = n, p, Both
	return n.add(f)
}

func (n *Net) loseReplies(tb testing.TB, p *Proxy, once bool) *Fault {
	desc := "lose every reply"
	if once {
		desc = "lose the next reply"
	}
	f := newFault(tb, kindLoseReply, desc+p.where())
	f.net, f.proxy, f.dir, f.once = n, p, Both, once
	return n.add(f)
}

// Latency delays every chunk of data in direction d by latency plus a
// uniformly random -jitter..+jitter (never below zero), keeping the order
// of the data. It adds to any other latency fault.
func (n *Net) Latency(tb testing.TB, d Direction, latency, jitter time.Duration) *Fault {
	tb.Helper()
	return n.latency(tb, nil, d, latency, jitter)
}

// BlackHole stops all data in direction d, as a network partition does:
// nothing is lost or refused, connections stay open, new ones are accepted
// but reach the server only when the fault heals. Held data is delivered
// on Heal (as TCP retransmits it when a partition ends), or dropped by a
// Reset before the Heal.
func (n *Net) BlackHole(tb testing.TB, d Direction) *Fault {
	tb.Helper()
	return n.blackHole(tb, nil, d)
}

// Refuse resets every new connection at once (the client sees its
// connection reset, as from a server that is down); open connections are
// left alone: combine with [Net.Reset] to cut them too.
func (n *Net) Refuse(tb testing.TB) *Fault {
	tb.Helper()
	return n.refuse(tb, nil)
}

// LoseNextReply arms a lost reply, the unknown outcome: the next request
// that a client sends (on any connection, after this call) is forwarded to
// the server, which applies it; the first data the server sends back on
// that connection is dropped and the connection is reset, so the client
// sees an error. On HTTP/2 (gRPC: etcd) the request is the next stream
// the client opens and the data dropped is that stream's response; the
// server's control frames before it pass. It acts once; Hit tells when.
func (n *Net) LoseNextReply(tb testing.TB) *Fault {
	tb.Helper()
	return n.loseReplies(tb, nil, true)
}

// LoseReplies is [Net.LoseNextReply] for every request until the fault
// heals.
func (n *Net) LoseReplies(tb testing.TB) *Fault {
	tb.Helper()
	return n.loseReplies(tb, nil, false)
}

// Reset resets (TCP RST) every open connection of every proxy now, and
// returns how many it reset. Data a black hole holds is dropped with them.
func (n *Net) Reset() int {
	total := 0
	for _, p := range n.Proxies() {
		total += p.Reset()
	}
	return total
}

// Heal heals every fault made on the Net and its proxies so far.
func (n *Net) Heal() {
	for _, f := range n.state.Load().faults {
		f.Heal()
	}
}

// ---------------------------------------------------------------- proxy

// Proxy is one TCP proxy of a [Net], in front of one server address. Its
// fault methods act on it alone.
type Proxy struct {
	net      *Net
	upstream string
	ln       *net.TCPListener
	addr     string

	mu       sync.Mutex
	links    map[*link]struct{}
	closed   bool
	wg       sync.WaitGroup
	accepted atomic.Int64
}

// Addr returns the address the proxy listens on.
func (p *Proxy) Addr() string { return p.addr }

// Upstream returns the address of the server behind the proxy.
func (p *Proxy) Upstream() string { return p.upstream }

func (p *Proxy) where() string {
	if p == nil {
		return ""
	}
	return " at " + p.upstream
}

// Latency is [Net.Latency] on this proxy alone.
func (p *Proxy) Latency(tb testing.TB, d Direction, latency, jitter time.Duration) *Fault {
	tb.Helper()
	return p.net.latency(tb, p, d, latency, jitter)
}

// BlackHole is [Net.BlackHole] on this proxy alone: a partition between
// the client and this one server.
func (p *Proxy) BlackHole(tb testing.TB, d Direction) *Fault {
	tb.Helper()
	return p.net.blackHole(tb, p, d)
}

// Refuse is [Net.Refuse] on this proxy alone.
func (p *Proxy) Refuse(tb testing.TB) *Fault {
	tb.Helper()
	return p.net.refuse(tb, p)
}

// LoseNextReply is [Net.LoseNextReply] on this proxy alone.
func (p *Proxy) LoseNextReply(tb testing.TB) *Fault {
	tb.Helper()
	return p.net.loseReplies(tb, p, true)
}

// LoseReplies is [Net.LoseReplies] on this proxy alone.
func (p *Proxy) LoseReplies(tb testing.TB) *Fault {
	tb.Helper()
	return p.net.loseReplies(tb, p, false)
}

// Reset resets (TCP RST) every open connection of the proxy now and
// returns how many it reset.
func (p *Proxy) Reset() int {
	p.mu.Lock()
	ls := make([]*link, 0, len(p.links))
	for l := range p.links {
		ls = append(ls, l)
	}
	p.mu.Unlock()
	n := 0
	for _, l := range ls {
		if l.reset() {
			n++
		}
	}
	return n
}

// Accepted returns how many client connections the proxy has accepted so
// far: a test checks with it that its client went through the proxy.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Conns returns how many client connections the proxy has open.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.AcceptTCP()
		if err != nil {
			return // closed
		}
		p.accepted.Add(1)
		ctx, cancel := context.WithCancel(context.Background())
		l := &link{p: p, client: c, ctx: ctx, cancel: cancel, done: ctx.Done()}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			return
		}
		p.links[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go l.serve()
	}
}

func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	_ = p.ln.Close()
	p.Reset()
	p.wg.Wait()
}

// ---------------------------------------------------------------- link

// link is one client connection and its connection to the server.
type link struct {
	p      *Proxy
	client *net.TCPConn

	mu     sync.Mutex
	server *net.TCPConn
	closed bool
	ctx    context.Context // cancelled when the link closes
	cancel context.CancelFunc
	done   <-chan struct{} // ctx.Done()

	// lose is the lost-reply fault that claims the next data the server
	// sends on this connection.
	lose atomic.Pointer[Fault]

	// HTTP/2 (see h2.go): h2 is decided by the client's first data; up is
	// walked by the writer to the server, down by the writer to the
	// client; lost holds the streams whose response a lost-reply fault
	// claims.
	h2        atomic.Int32 // 0 not known yet, 1 HTTP/2, -1 not
	up, down  h2Frames
	maxStream uint32
	lostMu    sync.Mutex
	lost      map[uint32]*Fault
}

type chunk struct {
	data []byte
	at   time.Time
}

func (l *link) serve() {
	defer l.p.wg.Done()
	defer func() {
		l.close()
		l.unclaim()
		l.p.mu.Lock()
		delete(l.p.links, l)
		l.p.mu.Unlock()
	}()
	n := l.p.net
	if f := n.state.Load().find(kindRefuse, l.p, Both); f != nil {
		f.recordHit()
		l.reset()
		return
	}
	// A partition also holds the connection to the server.
	if !l.hold(ToServer) {
		return
	}
	ctx, cancel := context.WithTimeout(l.ctx, dialTimeout)
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", l.p.upstream)
	cancel()
	if err != nil {
		l.reset() // as a server that is down resets the client
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		_ = c.Close()
		return
	}
	l.server = c.(*net.TCPConn)
	l.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.pipe(ToServer, l.client, l.server) }()
	go func() { defer wg.Done(); l.pipe(ToClient, l.server, l.client) }()
	wg.Wait()
}

// pipe copies src to dst in direction d, applying the faults: a reader
// holds data in a black hole and stamps it, the writer delays and drops it.
func (l *link) pipe(d Direction, src, dst *net.TCPConn) {
	q := make(chan chunk, 64)
	eof := make(chan bool, 1)
	go func() {
		defer close(q)
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				c := chunk{data: append([]byte(nil), buf[:n]...), at: time.Now()}
				if !l.hold(d) {
					eof <- false
					return
				}
				select {
				case q <- c:
				case <-l.done:
					eof <- false
					return
				}
			}
			if err != nil {
				eof <- errors.Is(err, io.EOF)
				return
			}
		}
	}()
	var last time.Time
	timer := time.NewTimer(0)
	defer timer.Stop()
	for c := range q {
		st := l.p.net.state.Load()
		delay, by := st.delay(l.p, d)
		due := c.at.Add(delay)
		if due.Before(last) {
			due = last
		}
		last = due
		if wait := time.Until(due); wait > 0 {
			for _, f := range by {
				f.recordHit()
			}
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-l.done:
				drain(q)
				<-eof
				return
			}
		}
		if d == ToClient {
			if cut, f := l.loseReply(c.data); f != nil {
				_, _ = dst.Write(c.data[:cut]) // control frames before the reply
				f.recordHit()
				l.reset()
				drain(q)
				<-eof
				return
			}
		}
		if d == ToServer {
			// Before the write: the reply may be back before it returns.
			l.claimReply(c.data)
		}
		if _, err := dst.Write(c.data); err != nil {
			l.close()
			drain(q)
			<-eof
			return
		}
	}
	if <-eof {
		_ = dst.CloseWrite() // pass the half-close on
	} else {
		l.close()
	}
}

func drain(q <-chan chunk) {
	for range q {
	}
}

// hold waits while a black hole stops data in direction d, counting a hit
// for the held data; false if the link closed meanwhile.
func (l *link) hold(d Direction) bool {
	counted := false
	for {
		st := l.p.net.state.Load()
		f := st.find(kindBlackHole, l.p, d)
		if f == nil {
			return true
		}
		if !counted {
			f.recordHit()
			counted = true
		}
		select {
		case <-st.changed:
		case <-l.done:
			return false
		}
	}
}

// armed returns the lost-reply fault that claims the reply to a request
// going to the server now, if one does.
func (l *link) armed() *Fault {
	for _, f := range l.p.net.state.Load().faults {
		if f.kind != kindLoseReply || !f.applies(l.p, ToClient) {
			continue
		}
		if f.once && !f.claimed.CompareAndSwap(false, true) {
			continue
		}
		return f
	}
	return nil
}

// claimReply runs as request data goes to the server: an armed lost-reply
// fault claims this connection's next data back or, on HTTP/2, the
// response on each stream the data opens.
func (l *link) claimReply(b []byte) {
	if l.h2.Load() == 0 {
		if isH2Preface(b) {
			l.up.preface = len(h2Preface)
			l.h2.Store(1)
		} else {
			l.h2.Store(-1)
		}
	}
	if l.h2.Load() < 0 {
		if l.lose.Load() == nil {
			if f := l.armed(); f != nil {
				l.lose.Store(f)
			}
		}
		return
	}
	l.up.scan(b, func(_ int, typ byte, stream uint32) bool {
		if typ != h2Headers || stream%2 == 0 || stream <= l.maxStream {
			return true // not a new request
		}
		l.maxStream = stream
		if f := l.armed(); f != nil {
			l.lostMu.Lock()
			if l.lost == nil {
				l.lost = map[uint32]*Fault{}
			}
			l.lost[stream] = f
			l.lostMu.Unlock()
		}
		return true
	})
}

// loseReply looks at data about to go to the client: if a lost-reply
// fault claims it, it returns the fault and how much of b to pass first
// (on HTTP/2, the frames before the claimed response).
func (l *link) loseReply(b []byte) (int, *Fault) {
	if l.h2.Load() < 0 {
		if f := l.lose.Load(); f != nil && !f.Healed() {
			return 0, f
		}
		return 0, nil
	}
	// Walked from the first byte even before the client's preface tells
	// HTTP/2 (a server may send its SETTINGS first), to stay in step.
	cut, lost := 0, (*Fault)(nil)
	l.down.scan(b, func(start int, typ byte, stream uint32) bool {
		if typ != h2Headers && typ != h2Data {
			return true
		}
		l.lostMu.Lock()
		f := l.lost[stream]
		l.lostMu.Unlock()
		if f == nil || f.Healed() {
			return true
		}
		cut, lost = max(start, 0), f
		return false
	})
	return cut, lost
}

// unclaim releases, when the connection ends, a one-time lost-reply
// fault it claimed but never acted on, so that the next request is lost
// instead.
func (l *link) unclaim() {
	claimed := []*Fault{l.lose.Load()}
	l.lostMu.Lock()
	for _, f := range l.lost {
		claimed = append(claimed, f)
	}
	l.lostMu.Unlock()
	for _, f := range claimed {
		if f != nil && f.once && f.Hits() == 0 {
			f.claimed.Store(false)
		}
	}
}

// reset closes both connections with a TCP RST; false if already closed.
func (l *link) reset() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	_ = l.client.SetLinger(0)
	if l.server != nil {
		_ = l.server.SetLinger(0)
	}
	l.closeLocked()
	return true
}

func (l *link) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closeLocked()
	}
}

func (l *link) closeLocked() {
	l.closed = true
	l.cancel()
	_ = l.client.Close()
	if l.server != nil {
		_ = l.server.Close()
	}
}
