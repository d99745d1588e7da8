package health

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/miekg/dns"
)

// DNS checks a DNS server by sending it one query and checking the
// response code and, optionally, that the answer section is not empty.
// Name is required.
type DNS struct {
	// Name is the name queried, made fully qualified if it is not.
	Name string
	// Type is the query type (dns.TypeA, ...). Zero means dns.TypeA.
	Type uint16
	// WantRcode is the response code that passes. Zero is NOERROR.
	WantRcode int
	// WantAnswer requires at least one record in the answer section.
	WantAnswer bool
	// Net is "udp" or "tcp". Empty means "udp".
	Net string
}

// Probe sends one query to the server at addr over a new socket and
// checks the response. It blocks until the response or the end of ctx,
// and is safe for concurrent use.
func (q DNS) Probe(ctx context.Context, addr netip.AddrPort) (Report, error) {
	if q.Name == "" {
		return Report{}, errors.New("health: dns probe: Name is required")
	}
	network := q.Net
	if network == "" {
		network = "udp"
	}
	if network != "udp" && network != "tcp" {
		return Report{}, fmt.Errorf("health: dns probe: unknown network %q", network)
	}
	typ := q.Type
	if typ == 0 {
		typ = dns.TypeA
	}
	m := new(dns.Msg).SetQuestion(dns.Fqdn(q.Name), typ)
	c := &dns.Client{Net: network}
	r, _, err := c.ExchangeContext(ctx, m, addr.String())
	if err != nil {
		return Report{}, fmt.Errorf("health: dns probe: %w", ctxErr(ctx, err))
	}
	if r.Rcode != q.WantRcode {
		return Report{}, fmt.Errorf("%w: dns probe: rcode %s, want %s", ErrMismatch,
			dns.RcodeToString[r.Rcode], dns.RcodeToString[q.WantRcode])
	}
	if q.WantAnswer && len(r.Answer) == 0 {
		return Report{}, fmt.Errorf("%w: dns probe: no answer for %s %s", ErrMismatch,
			m.Question[0].Name, dns.TypeToString[typ])
	}
	return Report{}, nil
}
