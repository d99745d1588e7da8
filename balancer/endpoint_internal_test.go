package balancer

import (
	"testing"
	"unsafe"
)

// The counters written by every unit of work share the first cache line,
// and the whole Endpoint fits the 128-byte size class (whose objects are
// 128-byte aligned), so that line is never split or shared.
func TestEndpointLayout(t *testing.T) {
	var e Endpoint
	if got := unsafe.Sizeof(e); got != 128 {
		t.Errorf("Endpoint is %d bytes, want 128", got)
	}
	if got := unsafe.Offsetof(e.addr); got != 64 {
		t.Errorf("read-mostly fields start at %d, want 64", got)
	}
}
