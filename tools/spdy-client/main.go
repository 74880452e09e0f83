// spdy-client talks SPDY/3.1 with moby/spdystream, the library behind client-go's SPDY transport and the
// API server's connections to kubelets, so vmlet's own codec (src/kubelet/spdy/) can be checked against
// the implementation it must interoperate with. There is no HTTP upgrade here: the TCP connection carries
// SPDY frames from the first byte.
//
//	spdy-client -addr 127.0.0.1:PORT [-streams N] [-bytes N]
//	    opens N streams ("streamtype: echo") at once, writes N bytes on each, half-closes, and checks that
//	    the same bytes come back; then opens one "streamtype: reset" stream and expects it to be refused
//	    with RST_STREAM. Exit status 0 means every check passed.
//	spdy-client -fixture
//	    prints frames exactly as spdystream writes them, one "name hex" pair a line, for byte fixtures.
package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/moby/spdystream"
	"github.com/moby/spdystream/spdy"
)

func main() {
	addr := flag.String("addr", "", "host:port of a raw SPDY/3.1 server")
	streams := flag.Int("streams", 3, "echo streams opened concurrently")
	size := flag.Int("bytes", 100_000, "bytes written on each echo stream")
	fixture := flag.Bool("fixture", false, "print frames as spdystream writes them and exit")
	flag.Parse()
	if *fixture {
		if err := printFixtures(); err != nil {
			fail(err)
		}
		return
	}
	if *addr == "" {
		fail(errors.New("-addr is required"))
	}
	if err := run(*addr, *streams, *size); err != nil {
		fail(err)
	}
	fmt.Println("ok")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "spdy-client:", err)
	os.Exit(1)
}

func run(addr string, streams, size int) error {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	_ = raw.SetDeadline(time.Now().Add(30 * time.Second))
	conn, err := spdystream.NewConnection(raw, false)
	if err != nil {
		return err
	}
	go conn.Serve(spdystream.NoOpStreamHandler)

	if _, err := conn.Ping(); err != nil {
		return fmt.Errorf("ping: %w", err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := echo(conn, i, size); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}

	headers := http.Header{}
	headers.Set("streamtype", "reset")
	stream, err := conn.CreateStream(headers, nil, false)
	if err != nil {
		return err
	}
	if err := stream.WaitTimeout(5 * time.Second); !errors.Is(err, spdystream.ErrReset) {
		return fmt.Errorf("reset stream: want %v, got %v", spdystream.ErrReset, err)
	}

	if _, err := conn.Ping(); err != nil {
		return fmt.Errorf("second ping: %w", err)
	}
	return conn.Close()
}

func payload(i, size int) []byte {
	b := make([]byte, size)
	x := uint32(i*7919 + 1)
	for j := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[j] = byte(x)
	}
	return b
}

func echo(conn *spdystream.Connection, i, size int) error {
	headers := http.Header{}
	headers.Set("streamtype", "echo")
	headers.Set("x-stream-index", strconv.Itoa(i))
	stream, err := conn.CreateStream(headers, nil, false)
	if err != nil {
		return err
	}
	if err := stream.WaitTimeout(5 * time.Second); err != nil {
		return fmt.Errorf("waiting for SYN_REPLY: %w", err)
	}
	want := payload(i, size)
	got := make(chan []byte, 1)
	readErr := make(chan error, 1)
	go func() {
		b, err := io.ReadAll(stream)
		got <- b
		readErr <- err
	}()
	// 32 KiB writes, like io.Copy in client-go's remotecommand.
	for off := 0; off < len(want); off += 32 * 1024 {
		end := min(off+32*1024, len(want))
		if _, err := stream.Write(want[off:end]); err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
	if err := stream.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	b := <-got
	if err := <-readErr; err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(b, want) {
		return fmt.Errorf("echo differs: sent %d bytes, got %d", len(want), len(b))
	}
	return nil
}

// printFixtures writes, with one Framer (so one header compression context, as on a connection), the
// frames an exec through client-go starts with.
func printFixtures() error {
	var buf bytes.Buffer
	framer, err := spdy.NewFramer(&buf, nil)
	if err != nil {
		return err
	}
	emit := func(name string, frame spdy.Frame) error {
		buf.Reset()
		if err := framer.WriteFrame(frame); err != nil {
			return err
		}
		fmt.Printf("%s %s\n", name, hex.EncodeToString(buf.Bytes()))
		return nil
	}
	h1 := http.Header{}
	h1.Set("streamtype", "error")
	h1.Set("requestid", "0")
	h3 := http.Header{}
	h3.Set("streamtype", "stdin")
	h3.Set("requestid", "0")
	frames := []struct {
		name  string
		frame spdy.Frame
	}{
		{"syn_stream_1", &spdy.SynStreamFrame{StreamId: 1, Headers: h1}},
		{"syn_stream_3", &spdy.SynStreamFrame{StreamId: 3, Headers: h3}},
		{"data_3", &spdy.DataFrame{StreamId: 3, Data: []byte("hello\n")}},
		{"data_3_fin", &spdy.DataFrame{StreamId: 3, Flags: spdy.DataFlagFin, Data: []byte{}}},
		{"ping_1", &spdy.PingFrame{Id: 1}},
		{"rst_stream_1", &spdy.RstStreamFrame{StreamId: 1, Status: spdy.Cancel}},
		{"goaway", &spdy.GoAwayFrame{LastGoodStreamId: 0, Status: spdy.GoAwayOK}},
	}
	for _, f := range frames {
		if err := emit(f.name, f.frame); err != nil {
			return err
		}
	}
	return nil
}
