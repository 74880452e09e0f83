// Test tooling: a SPDY/3.1 client built on moby/spdystream (what client-go and the API server use), to
// check vmlet's SPDY codec against the real thing.
module vmlet.dev/tools/spdy-client

go 1.26.0

require github.com/moby/spdystream v0.5.1
