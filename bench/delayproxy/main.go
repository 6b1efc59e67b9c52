// Command delayproxy is a loopback TCP proxy that delays every byte by a fixed time in each direction: a remote
// store's latency for bench/s3.sh where the kernel has no `tc netem` (CONFIG_NET_SCH_NETEM unset, as on this
// machine's kernel).
//
//	delayproxy -listen-port-file FILE -target 127.0.0.1:PORT -delay-ms 10
//
// Like netem on `lo` (a delay on every packet), each chunk read from one side is written to the other side
// -delay-ms after it arrived, in order, so a request and its response take 2 x delay more than without the proxy
// (netem `delay 10ms` on lo gives the same 20 ms round trip); a new connection first waits 2 x delay, the
// handshake's round trip. Bandwidth is not limited. It listens on 127.0.0.1 on a free port, writes the port to
// -listen-port-file once listening, and runs until killed. bench/s3.sh reports its CPU time beside the worker's
// and the server's: it shares their cores, so it is written to cost little (Go, buffers reused, no copy beyond
// the one read and the one write a proxy needs) — a Python asyncio proxy spent 0.6-0.7 s of CPU per 5 M-row run.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"sync"
	"time"
)

// chunkBytes is the most read at once; queueDepth the chunks a direction holds while they wait out the delay
// (a direction whose queue is full stops reading, as a full TCP window would stop its sender).
const (
	chunkBytes = 256 << 10
	queueDepth = 1024
)

var buffers = sync.Pool{New: func() any { b := make([]byte, chunkBytes); return &b }}

type chunk struct {
	due  time.Time
	buf  *[]byte
	n    int
	last bool // the reading side ended (EOF or error): close the writing side's send direction after this chunk
}

// pipe copies from src to dst, each chunk written delay after it was read, in order. It returns when src ends
// (then dst's send side is closed) or either side fails.
func pipe(dst, src *net.TCPConn, delay time.Duration) {
	queue := make(chan chunk, queueDepth)
	go func() {
		for {
			buf := buffers.Get().(*[]byte)
			n, err := src.Read(*buf)
			if n > 0 {
				queue <- chunk{due: time.Now().Add(delay), buf: buf, n: n}
			} else {
				buffers.Put(buf)
			}
			if err != nil {
				queue <- chunk{due: time.Now().Add(delay), last: true}
				close(queue)
				return
			}
		}
	}()
	for c := range queue {
		if wait := time.Until(c.due); wait > 0 {
			time.Sleep(wait)
		}
		if c.last {
			_ = dst.CloseWrite()
			break
		}
		_, err := dst.Write((*c.buf)[:c.n])
		buffers.Put(c.buf)
		if err != nil {
			// The reader may be blocked on a full queue: closing both ends unblocks it and the other direction.
			_ = src.Close()
			_ = dst.Close()
			break
		}
	}
	for c := range queue { // drain, so the reading goroutine can finish
		if c.buf != nil {
			buffers.Put(c.buf)
		}
	}
}

func serve(client *net.TCPConn, target string, delay time.Duration) {
	defer client.Close()
	time.Sleep(2 * delay) // the TCP handshake's round trip, which netem would delay too
	conn, err := net.Dial("tcp", target)
	if err != nil {
		log.Printf("delayproxy: cannot connect to %s: %v", target, err)
		return
	}
	server := conn.(*net.TCPConn)
	defer server.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pipe(server, client, delay) }()
	go func() { defer wg.Done(); pipe(client, server, delay) }()
	wg.Wait()
}

func main() {
	portFile := flag.String("listen-port-file", "", "where to write the port once listening (required)")
	target := flag.String("target", "", "HOST:PORT to forward to (required)")
	delayMs := flag.Float64("delay-ms", -1, "the delay added in each direction, in milliseconds (required)")
	flag.Parse()
	if *portFile == "" || *target == "" || *delayMs < 0 {
		fmt.Fprintln(os.Stderr, "usage: delayproxy -listen-port-file FILE -target HOST:PORT -delay-ms MS")
		os.Exit(2)
	}
	delay := time.Duration(*delayMs * float64(time.Millisecond))
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatalf("delayproxy: cannot listen on 127.0.0.1: %v", err)
	}
	port := listener.Addr().(*net.TCPAddr).Port
	tmp := *portFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%d\n", port)), 0o644); err != nil {
		log.Fatalf("delayproxy: cannot write %s: %v", tmp, err)
	}
	if err := os.Rename(tmp, *portFile); err != nil {
		log.Fatalf("delayproxy: cannot rename %s to %s: %v", tmp, *portFile, err)
	}
	for {
		conn, err := listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Printf("delayproxy: accept: %v", err)
			continue
		}
		go serve(conn.(*net.TCPConn), *target, delay)
	}
}
