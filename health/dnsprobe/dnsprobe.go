// Package dnsprobe is a health probe for DNS servers, kept out of package
// health so that health depends on the standard library and the balancer
// only: import it when you check DNS backends.
//
//	chk.SetTarget(health.Target{Addr: ns, Probe: dnsprobe.Query{Name: "svc.example.", WantAnswer: true}})
package dnsprobe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/miekg/dns"

	"github.com/lbkit/lbkit/health"
)

var _ health.Prober = Query{}

// Query checks a DNS server by sending it one query and checking the
// response code and, optionally, that the answer section is not empty.
// Name is required.
type Query struct {
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
func (q Query) Probe(ctx context.Context, addr netip.AddrPort) (health.Report, error) {
	if q.Name == "" {
		return health.Report{}, errors.New("dnsprobe: Name is required")
	}
	network := q.Net
	if network == "" {
		network = "udp"
	}
	if network != "udp" && network != "tcp" {
		return health.Report{}, fmt.Errorf("dnsprobe: unknown network %q", network)
	}
	typ := q.Type
	if typ == 0 {
		typ = dns.TypeA
	}
	m := new(dns.Msg).SetQuestion(dns.Fqdn(q.Name), typ)
	c := &dns.Client{Net: network}
	r, _, err := c.ExchangeContext(ctx, m, addr.String())
	if err != nil {
		return health.Report{}, fmt.Errorf("dnsprobe: %w", ctxErr(ctx, err))
	}
	if r.Rcode != q.WantRcode {
		return health.Report{}, fmt.Errorf("%w: dnsprobe: rcode %s, want %s", health.ErrMismatch,
			dns.RcodeToString[r.Rcode], dns.RcodeToString[q.WantRcode])
	}
	if q.WantAnswer && len(r.Answer) == 0 {
		return health.Report{}, fmt.Errorf("%w: dnsprobe: no answer for %s %s", health.ErrMismatch,
			m.Question[0].Name, dns.TypeToString[typ])
	}
	return health.Report{}, nil
}

// ctxErr makes a deadline or cancellation visible through errors.Is.
func ctxErr(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}
