// Command peer is a SPDY/3.1 test peer built on spdystream, the SPDY library every Kubernetes
// component uses. It talks SPDY over plain TCP (no HTTP upgrade) so the Rust integration tests in
// tests/interop_spdystream.rs can drive our engine against the real Go implementation.
//
//	peer server --listen 127.0.0.1:0
//	peer client --connect ADDR --streams N --bytes M --pings K
//
// Everything the peer observes is printed on stdout, one JSON object per line. The server
// prints "LISTEN <addr>" as its very first line. Build it with build.sh (GOPATH mode).
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moby/spdystream"
)

// ---------------------------------------------------------------------------------------------
// Output

var outMu sync.Mutex

// emit prints one JSON event line. Field order follows the map's sorted keys (encoding/json).
func emit(fields map[string]interface{}) {
	line, err := json.Marshal(fields)
	if err != nil {
		line = []byte(fmt.Sprintf(`{"event":"error","msg":%q}`, err.Error()))
	}
	outMu.Lock()
	os.Stdout.Write(append(line, '\n'))
	outMu.Unlock()
}

func emitError(conn int, format string, args ...interface{}) {
	emit(map[string]interface{}{"event": "error", "conn": conn, "msg": fmt.Sprintf(format, args...)})
}

func fatalf(format string, args ...interface{}) {
	emit(map[string]interface{}{"event": "fatal", "msg": fmt.Sprintf(format, args...)})
	fmt.Fprintf(os.Stderr, "peer: "+format+"\n", args...)
	os.Exit(1)
}

// lowerHeaders flattens a Go header map (canonical keys) back to the wire view: lower-case names,
// several values joined with NUL.
func lowerHeaders(h http.Header) map[string]string {
	out := make(map[string]string, len(h))
	for name, values := range h {
		out[strings.ToLower(name)] = strings.Join(values, "\x00")
	}
	return out
}

// ---------------------------------------------------------------------------------------------
// Frame sniffer
//
// spdystream hides most of the wire (pings are answered internally, GOAWAY and RST_STREAM only
// show up as EOF, header blocks are never seen compressed). sniffConn follows frame boundaries
// in the bytes the framer reads and writes, without altering anything, and reports every control
// frame in either direction ("rx": from the peer, "tx": ours), plus DATA frame statistics.

// frameTracker follows frame boundaries in one direction of the byte stream.
type frameTracker struct {
	dir     string // "rx" or "tx"
	connID  int
	isSrv   bool
	hdr     [8]byte
	hdrN    int
	control bool
	ctype   uint16
	version uint16
	flags   uint8
	length  int
	left    int
	prefix  []byte

	dataFrames   int64
	dataBytes    int64
	dataMax      int
	dataFins     int64
	controlCount map[string]int
	headerBlocks int
}

const prefixKeep = 40

func (t *frameTracker) feed(b []byte) {
	for len(b) > 0 {
		if t.hdrN < 8 {
			k := copy(t.hdr[t.hdrN:], b)
			t.hdrN += k
			b = b[k:]
			if t.hdrN < 8 {
				return
			}
			first := binary.BigEndian.Uint32(t.hdr[0:4])
			second := binary.BigEndian.Uint32(t.hdr[4:8])
			t.control = first&0x80000000 != 0
			t.flags = uint8(second >> 24)
			t.length = int(second & 0xffffff)
			t.left = t.length
			t.prefix = t.prefix[:0]
			if t.control {
				t.version = uint16(first>>16) & 0x7fff
				t.ctype = uint16(first)
			} else {
				t.dataFrames++
				t.dataBytes += int64(t.length)
				if t.length > t.dataMax {
					t.dataMax = t.length
				}
				if t.flags&0x01 != 0 {
					t.dataFins++
				}
			}
			if t.left == 0 {
				t.frameDone()
			}
			continue
		}
		k := t.left
		if k > len(b) {
			k = len(b)
		}
		if t.control && len(t.prefix) < prefixKeep {
			room := prefixKeep - len(t.prefix)
			if room > k {
				room = k
			}
			t.prefix = append(t.prefix, b[:room]...)
		}
		t.left -= k
		b = b[k:]
		if t.left == 0 {
			t.frameDone()
		}
	}
}

func be32(b []byte, at int) uint32 {
	if len(b) < at+4 {
		return 0
	}
	return binary.BigEndian.Uint32(b[at : at+4])
}

var controlNames = map[uint16]string{1: "syn_stream", 2: "syn_reply", 3: "rst_stream",
	4: "settings", 6: "ping", 7: "goaway", 8: "headers", 9: "window_update"}

func (t *frameTracker) frameDone() {
	t.hdrN = 0
	if !t.control {
		return
	}
	name, ok := controlNames[t.ctype]
	if !ok {
		name = fmt.Sprintf("type_%d", t.ctype)
	}
	t.controlCount[name]++
	ev := map[string]interface{}{"event": t.dir, "conn": t.connID, "type": name,
		"flags": t.flags, "len": t.length, "version": t.version}
	p := t.prefix
	switch t.ctype {
	case 1, 2:
		ev["id"] = be32(p, 0)
		off := 4
		if t.ctype == 1 {
			off = 10
		}
		if len(p) > off {
			ev["block_prefix"] = hex.EncodeToString(p[off:])
		}
		ev["block_len"] = t.length - off
		ev["block_index"] = t.headerBlocks
		t.headerBlocks++
	case 3:
		ev["id"] = be32(p, 0)
		ev["status"] = be32(p, 4)
	case 6:
		id := be32(p, 0)
		ev["id"] = id
		// A server's own pings are even, a client's odd: the other parity came from the peer.
		fromPeer := (id%2 == 1) == t.isSrv
		ev["from_peer"] = fromPeer
		if t.dir == "rx" {
			emit(map[string]interface{}{"event": "ping", "conn": t.connID, "id": id,
				"from_peer": fromPeer})
		}
	case 7:
		ev["last_good"] = be32(p, 0)
		ev["status"] = be32(p, 4)
	case 8, 9:
		ev["id"] = be32(p, 0)
	}
	emit(ev)
}

func (t *frameTracker) stats() map[string]interface{} {
	control := map[string]int{}
	for k, v := range t.controlCount {
		control[k] = v
	}
	d := t.dir
	return map[string]interface{}{
		d + "_data_frames": t.dataFrames, d + "_data_bytes": t.dataBytes,
		d + "_max_data_frame": t.dataMax, d + "_data_fins": t.dataFins, d + "_control": control,
		d + "_partial_frame": t.hdrN != 0 || t.left != 0,
	}
}

type sniffConn struct {
	net.Conn
	rx, tx *frameTracker
	txMu   sync.Mutex
}

func newSniffConn(c net.Conn, connID int, server bool) *sniffConn {
	mk := func(dir string) *frameTracker {
		return &frameTracker{dir: dir, connID: connID, isSrv: server, controlCount: map[string]int{}}
	}
	return &sniffConn{Conn: c, rx: mk("rx"), tx: mk("tx")}
}

// Read is only called by spdystream's single reader goroutine.
func (s *sniffConn) Read(p []byte) (int, error) {
	n, err := s.Conn.Read(p)
	s.rx.feed(p[:n])
	return n, err
}

// Write is serialised by spdystream's write lock; the mutex only makes that explicit.
func (s *sniffConn) Write(p []byte) (int, error) {
	n, err := s.Conn.Write(p)
	s.txMu.Lock()
	s.tx.feed(p[:n])
	s.txMu.Unlock()
	return n, err
}

func (s *sniffConn) stats() map[string]interface{} {
	out := s.rx.stats()
	s.txMu.Lock()
	for k, v := range s.tx.stats() {
		out[k] = v
	}
	s.txMu.Unlock()
	return out
}

// ---------------------------------------------------------------------------------------------
// Server mode

type serverOpts struct {
	closeTimeout time.Duration
	pingCount    int
}

func runServer(args []string) {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	closeTimeout := fs.Duration("close-timeout", 10*time.Second,
		"how long Close() waits for open streams after our GOAWAY before dropping TCP")
	pingCount := fs.Int("ping-count", 3, "pings sent to the client for x-action: ping")
	fs.Parse(args)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fatalf("listen %s: %v", *listen, err)
	}
	outMu.Lock()
	fmt.Fprintf(os.Stdout, "LISTEN %s\n", ln.Addr())
	outMu.Unlock()

	opts := serverOpts{closeTimeout: *closeTimeout, pingCount: *pingCount}
	connID := 0
	for {
		c, err := ln.Accept()
		if err != nil {
			fatalf("accept: %v", err)
		}
		connID++
		go serveConn(c, connID, opts)
	}
}

func serveConn(raw net.Conn, connID int, opts serverOpts) {
	sniff := newSniffConn(raw, connID, true)
	emit(map[string]interface{}{"event": "conn", "conn": connID, "remote": raw.RemoteAddr().String()})
	sc, err := spdystream.NewConnection(sniff, true)
	if err != nil {
		emitError(connID, "new connection: %v", err)
		raw.Close()
		return
	}
	sc.SetCloseTimeout(opts.closeTimeout)
	start := time.Now()
	var wg sync.WaitGroup
	sc.Serve(func(st *spdystream.Stream) { handleServerStream(sc, st, connID, opts, &wg) })
	// Serve returns once the reader loop stopped (EOF, GOAWAY received, read error) and the
	// frame workers drained. spdystream does not always close the socket itself: do it here.
	raw.Close()
	waitDone := make(chan struct{})
	go func() { wg.Wait(); close(waitDone) }()
	select {
	case <-waitDone:
	case <-time.After(5 * time.Second):
		emitError(connID, "stream goroutines still running 5s after the connection ended")
	}
	ev := sniff.stats()
	ev["event"] = "conn_end"
	ev["conn"] = connID
	ev["elapsed_ms"] = time.Since(start).Milliseconds()
	emit(ev)
}

// handleServerStream runs on a spdystream frame worker: it must return quickly, and the
// SYN_REPLY it sends goes out before any later frame of the stream is processed.
func handleServerStream(sc *spdystream.Connection, st *spdystream.Stream, connID int,
	opts serverOpts, wg *sync.WaitGroup) {
	id := st.Identifier()
	hdrs := st.Headers()
	emit(map[string]interface{}{"event": "stream", "conn": connID, "id": id,
		"headers": lowerHeaders(hdrs)})

	action := strings.ToLower(hdrs.Get("x-action"))
	if action == "refuse" {
		if err := st.Refuse(); err != nil {
			emitError(connID, "refuse stream %d: %v", id, err)
		}
		emit(map[string]interface{}{"event": "refused", "conn": connID, "id": id})
		return
	}

	reply := http.Header{}
	for name, values := range hdrs {
		reply["echo-"+strings.ToLower(name)] = append([]string(nil), values...)
	}
	reply["x-peer"] = []string{"spdystream"}
	if err := st.SendReply(reply, false); err != nil {
		emitError(connID, "reply stream %d: %v", id, err)
		return
	}

	switch action {
	case "reset":
		if err := st.Reset(); err != nil {
			emitError(connID, "reset stream %d: %v", id, err)
		}
		emit(map[string]interface{}{"event": "reset", "conn": connID, "id": id})
		return
	case "goaway":
		// Close sends GOAWAY, then waits (up to close-timeout) for open streams to end before
		// it drops TCP. It does not block on the reader, so calling it on the worker is fine.
		err := sc.Close()
		ev := map[string]interface{}{"event": "goaway_sent", "conn": connID, "id": id}
		if err != nil {
			ev["error"] = err.Error()
		}
		emit(ev)
		return
	case "ping":
		// Ping blocks until the answer is handled by a frame worker: never on this worker.
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < opts.pingCount; i++ {
				rtt, err := sc.Ping()
				ev := map[string]interface{}{"event": "ping_rtt", "conn": connID, "seq": i}
				if err != nil {
					ev["error"] = err.Error()
				} else {
					ev["rtt_us"] = rtt.Microseconds()
				}
				emit(ev)
			}
		}()
	}

	wg.Add(1)
	go func() {
		defer wg.Done()
		echoStream(st, connID)
	}()
}

// echoStream copies every DATA byte back on the same stream and FINs once the peer has FINed.
func echoStream(st *spdystream.Stream, connID int) {
	id := st.Identifier()
	h := sha256.New()
	var total int64
	buf := make([]byte, 64*1024)
	var writeErr error
	for {
		n, err := st.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			total += int64(n)
			if writeErr == nil {
				if _, werr := st.Write(buf[:n]); werr != nil {
					writeErr = werr
					emitError(connID, "echo write on stream %d: %v", id, werr)
				}
			}
		}
		if err != nil {
			if err != io.EOF {
				emitError(connID, "read stream %d: %v", id, err)
			}
			break
		}
	}
	// spdystream's reader reports FIN, RST_STREAM and a dead connection all as EOF.
	emit(map[string]interface{}{"event": "data", "conn": connID, "id": id, "bytes": total,
		"sha256": hex.EncodeToString(h.Sum(nil))})
	ev := map[string]interface{}{"event": "fin_sent", "conn": connID, "id": id}
	if err := st.Close(); err != nil {
		ev["error"] = err.Error()
	}
	emit(ev)
}

// ---------------------------------------------------------------------------------------------
// Client mode

// splitMix64 is a small deterministic generator: stream i's payload depends only on (seed, i).
type splitMix64 struct{ s uint64 }

func (r *splitMix64) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (r *splitMix64) fill(b []byte) {
	for i := 0; i < len(b); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.next())
		copy(b[i:], w[:])
	}
}

// chunkSize spreads sizes over 1 B .. maxChunk on a log scale, so tiny and large DATA frames both
// occur often.
func (r *splitMix64) chunkSize(maxChunk int) int {
	bits := 0
	for (1 << bits) < maxChunk {
		bits++
	}
	k := int(r.next() % uint64(bits+1))
	size := 1 + int(r.next()%uint64(1<<k))
	if size > maxChunk {
		size = maxChunk
	}
	return size
}

type streamResult struct {
	Index    int    `json:"n"`
	ID       uint32 `json:"id"`
	Sent     int64  `json:"sent"`
	Received int64  `json:"received"`
	SentHash string `json:"sha256"`
	RecvHash string `json:"echo_sha256"`
	Chunks   int    `json:"chunks"`
	err      error
}

func runClient(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	addr := fs.String("connect", "", "address of the SPDY server")
	streams := fs.Int("streams", 4, "streams to open concurrently")
	nbytes := fs.Int64("bytes", 1<<20, "bytes to send (and expect back) on each stream")
	pings := fs.Int("pings", 3, "pings to send after the streams are done")
	maxChunk := fs.Int("max-chunk", 64*1024, "largest single write (one DATA frame each)")
	seed := fs.Uint64("seed", 1, "payload seed")
	timeout := fs.Duration("timeout", 120*time.Second, "give up (exit 2) after this long")
	replyTimeout := fs.Duration("reply-timeout", 30*time.Second, "wait for each SYN_REPLY")
	fs.Parse(args)
	if *addr == "" {
		fatalf("client: --connect is required")
	}
	if *maxChunk < 1 || *maxChunk > 0xffffff {
		fatalf("client: --max-chunk must be 1 .. 16777215")
	}

	time.AfterFunc(*timeout, func() {
		emit(map[string]interface{}{"event": "summary", "ok": false,
			"error": fmt.Sprintf("timed out after %s", *timeout)})
		fmt.Fprintf(os.Stderr, "peer client: timed out after %s\n", *timeout)
		os.Exit(2)
	})

	start := time.Now()
	raw, err := net.Dial("tcp", *addr)
	if err != nil {
		fatalf("dial %s: %v", *addr, err)
	}
	sniff := newSniffConn(raw, 1, false)
	sc, err := spdystream.NewConnection(sniff, false)
	if err != nil {
		fatalf("new connection: %v", err)
	}
	sc.SetCloseTimeout(10 * time.Second)
	var refused int32
	serveDone := make(chan struct{})
	go func() {
		sc.Serve(func(st *spdystream.Stream) {
			// Kubernetes servers never open streams; neither should the engine under test.
			atomic.AddInt32(&refused, 1)
			emit(map[string]interface{}{"event": "server_stream_refused", "id": st.Identifier(),
				"headers": lowerHeaders(st.Headers())})
			st.Refuse()
		})
		close(serveDone)
	}()

	results := make([]streamResult, *streams)
	var wg sync.WaitGroup
	for i := 0; i < *streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i] = runClientStream(sc, i, *nbytes, *maxChunk, *seed, *replyTimeout)
		}(i)
	}
	wg.Wait()
	dataElapsed := time.Since(start)

	var failures []string
	var total int64
	for _, r := range results {
		total += r.Sent
		if r.err != nil {
			failures = append(failures, fmt.Sprintf("stream n=%d: %v", r.Index, r.err))
		}
	}

	var rtts []int64
	for i := 0; i < *pings && len(failures) == 0; i++ {
		rtt, err := sc.Ping()
		if err != nil {
			failures = append(failures, fmt.Sprintf("ping %d: %v", i, err))
			break
		}
		rtts = append(rtts, rtt.Microseconds())
	}

	closeStart := time.Now()
	if err := sc.CloseWait(); err != nil {
		failures = append(failures, fmt.Sprintf("close: %v", err))
	}
	select {
	case <-serveDone:
	case <-time.After(5 * time.Second):
		failures = append(failures, "connection reader still running 5s after close")
	}
	raw.Close()
	closeElapsed := time.Since(closeStart)
	if n := atomic.LoadInt32(&refused); n != 0 {
		failures = append(failures, fmt.Sprintf("server opened %d streams", n))
	}

	summary := sniff.stats()
	summary["event"] = "summary"
	summary["ok"] = len(failures) == 0
	summary["streams"] = *streams
	summary["bytes_per_stream"] = *nbytes
	summary["total_bytes"] = total
	summary["data_ms"] = dataElapsed.Milliseconds()
	summary["close_ms"] = closeElapsed.Milliseconds()
	if secs := dataElapsed.Seconds(); secs > 0 {
		summary["echo_mib_per_s"] = float64(2*total) / (1 << 20) / secs
	}
	summary["ping_rtt_us"] = rtts
	summary["results"] = results
	if len(failures) > 0 {
		summary["error"] = strings.Join(failures, "; ")
	}
	emit(summary)
	if len(failures) > 0 {
		fmt.Fprintf(os.Stderr, "peer client: FAILED: %s\n", strings.Join(failures, "; "))
		os.Exit(1)
	}
}

func runClientStream(sc *spdystream.Connection, i int, nbytes int64, maxChunk int, seed uint64,
	replyTimeout time.Duration) streamResult {
	res := streamResult{Index: i}
	headers := http.Header{}
	headers.Set("streamtype", "data")
	headers.Set("n", fmt.Sprint(i))
	st, err := sc.CreateStream(headers, nil, false)
	if err != nil {
		res.err = fmt.Errorf("create: %w", err)
		return res
	}
	res.ID = st.Identifier()
	if err := st.WaitTimeout(replyTimeout); err != nil {
		res.err = fmt.Errorf("waiting for SYN_REPLY of stream %d: %w", res.ID, err)
		st.Reset()
		return res
	}

	type readOut struct {
		n    int64
		hash string
		err  error
	}
	readDone := make(chan readOut, 1)
	go func() {
		h := sha256.New()
		n, err := io.Copy(h, st)
		readDone <- readOut{n, hex.EncodeToString(h.Sum(nil)), err}
	}()

	rng := splitMix64{s: seed*0x100000001b3 + uint64(i)}
	sizes := splitMix64{s: ^(seed + uint64(i)*7919)}
	h := sha256.New()
	buf := make([]byte, maxChunk+8)
	var sent int64
	var writeErr error
	for sent < nbytes {
		size := sizes.chunkSize(maxChunk)
		if rest := nbytes - sent; int64(size) > rest {
			size = int(rest)
		}
		chunk := buf[:size]
		rng.fill(chunk)
		h.Write(chunk)
		if _, err := st.Write(chunk); err != nil {
			writeErr = fmt.Errorf("write at %d: %w", sent, err)
			break
		}
		sent += int64(size)
		res.Chunks++
	}
	res.Sent = sent
	res.SentHash = hex.EncodeToString(h.Sum(nil))
	if writeErr == nil {
		if err := st.Close(); err != nil {
			writeErr = fmt.Errorf("close (FIN): %w", err)
		}
	}
	got := <-readDone
	res.Received = got.n
	res.RecvHash = got.hash
	switch {
	case writeErr != nil:
		res.err = writeErr
	case got.err != nil:
		res.err = fmt.Errorf("read: %w", got.err)
	case got.n != sent || got.hash != res.SentHash:
		res.err = fmt.Errorf("echo mismatch on stream %d: sent %d bytes sha256 %s, got %d bytes sha256 %s",
			res.ID, sent, res.SentHash, got.n, got.hash)
	}
	return res
}

// ---------------------------------------------------------------------------------------------

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: peer server --listen ADDR | peer client --connect ADDR "+
			"--streams N --bytes M --pings K")
		os.Exit(64)
	}
	switch os.Args[1] {
	case "server":
		runServer(os.Args[2:])
	case "client":
		runClient(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "peer: unknown mode %q (want server or client)\n", os.Args[1])
		os.Exit(64)
	}
}
