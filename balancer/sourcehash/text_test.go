package sourcehash

import "testing"

func TestHashTypeText(t *testing.T) {
	for _, h := range []HashType{Consistent, MapBased} {
		b, err := h.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back HashType
		if err := back.UnmarshalText(b); err != nil || back != h {
			t.Fatalf("%v: round trip gave %v, %v", h, back, err)
		}
	}
	var h HashType
	if h.UnmarshalText([]byte("jump")) == nil {
		t.Error("unknown name accepted")
	}
	if _, err := HashType(9).MarshalText(); err == nil {
		t.Error("unknown value marshalled")
	}
}
