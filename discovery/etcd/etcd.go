package etcd

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/discovery"
)

// Defaults of a Source and of Register.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 5 * time.Second
	retryMin              = 500 * time.Millisecond
	retryMax              = 30 * time.Second
)

// Config configures a Source.
type Config struct {
	// Prefix is the key prefix under which members are kept, one key per
	// member, e.g. "/lbkit/pools/web/". Each value is a JSON member
	// ({"addr": "198.18.0.11:8080", "weight": 2, "zone": "a", "meta":
	// {...}}; see discovery.Member) whose addr is an IP:port. Required.
	Prefix string `json:"prefix" yaml:"prefix"`
	// Endpoints are the etcd servers' client URLs, e.g.
	// "http://127.0.0.1:2379". Required unless Client is set.
	Endpoints []string `json:"endpoints,omitempty" yaml:"endpoints,omitempty"`
	// Username and Password authenticate to etcd when set.
	Username string `json:"username,omitempty" yaml:"username,omitempty"`
	Password string `json:"password,omitempty" yaml:"password,omitempty"`
	// DialTimeout bounds the first connection. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration `json:"dial_timeout,omitempty" yaml:"dial_timeout,omitempty"`
	// RequestTimeout bounds each read of the prefix. Zero means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration `json:"request_timeout,omitempty" yaml:"request_timeout,omitempty"`
	// Client, when set, is used instead of dialing Endpoints (which are
	// then ignored), and is not closed by the source.
	Client *clientv3.Client `json:"-" yaml:"-"`
}

// Source is a discovery.Source of the members kept under a key prefix in
// etcd. It reads the prefix once and then watches it from the revision
// of that read, so every change arrives in order and none is missed;
// nothing is polled. When the watch breaks (the revision it needs was
// compacted away, the cluster lost its leader, the connection was lost
// for good) it reads the prefix again and watches from there, keeping
// the last members meanwhile. Members registered with Register disappear
// when their lease expires. Create one with New. Its Watch may run in
// several goroutines; each keeps its own state.
type Source struct {
	cfg Config
}

var _ discovery.Source = (*Source)(nil)

// New checks cfg and returns its source. It does not connect.
func New(cfg Config) (*Source, error) {
	if cfg.Prefix == "" {
		return nil, errors.New("etcd: Prefix is required")
	}
	if cfg.Client == nil && len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: Endpoints or Client is required")
	}
	if cfg.DialTimeout < 0 || cfg.RequestTimeout < 0 {
		return nil, errors.New("etcd: negative timeout")
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	return &Source{cfg: cfg}, nil
}

// String names the source in log lines.
func (s *Source) String() string { return "etcd " + s.cfg.Prefix }

// Watch reports the members under the prefix, then every change, until
// ctx ends; then it returns nil. A value that is not a valid member is
// reported to sink.Fail and its key keeps the member it had, if any. It
// returns an error when the client is closed.
func (s *Source) Watch(ctx context.Context, sink discovery.Sink) error {
	c := s.cfg.Client
	if c == nil {
		var err error
		c, err = clientv3.New(clientv3.Config{
			Endpoints:   s.cfg.Endpoints,
			Username:    s.cfg.Username,
			Password:    s.cfg.Password,
			DialTimeout: s.cfg.DialTimeout,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			return fmt.Errorf("etcd: %s: %w", s.cfg.Prefix, err)
		}
		defer c.Close()
	}
	members := map[string]balancer.Backend{}
	retry := retryMin
	for {
		rev, err := s.read(ctx, c, members, sink)
		if err == nil {
			retry = retryMin
			err = s.follow(ctx, c, rev+1, members, sink)
		}
		if ctx.Err() != nil {
			return nil
		}
		if c.Ctx().Err() != nil {
			return fmt.Errorf("etcd: %s: client closed", s.cfg.Prefix)
		}
		sink.Fail(err)
		if err != nil && !errors.Is(err, errResume) {
			t := time.NewTimer(retry)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			retry = min(2*retry, retryMax)
		}
	}
}

// errResume marks a watch that ended in a way a fresh read mends at
// once (a compaction).
var errResume = errors.New("etcd: reading the prefix again")

// read replaces members with what is under the prefix, reports them and
// returns the revision read.
func (s *Source) read(ctx context.Context, c *clientv3.Client, members map[string]balancer.Backend, sink discovery.Sink) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	resp, err := c.Get(rctx, s.cfg.Prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("etcd: read %s: %w", s.cfg.Prefix, err)
	}
	var errs []error
	fresh := make(map[string]balancer.Backend, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		b, err := ParseMember(kv.Value)
		if err != nil {
			errs = append(errs, fmt.Errorf("etcd: key %s: %w", key, err))
			if old, ok := members[key]; ok {
				fresh[key] = old
			}
			continue
		}
		fresh[key] = b
	}
	clear(members)
	for k, b := range fresh {
		members[k] = b
	}
	sink.Set(sorted(members))
	if len(errs) > 0 {
		sink.Fail(errors.Join(errs...))
	}
	return resp.Header.Revision, nil
}

// follow applies the changes under the prefix from revision rev on,
// until the watch ends; it returns why.
func (s *Source) follow(ctx context.Context, c *clientv3.Client, rev int64, members map[string]balancer.Backend, sink discovery.Sink) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range c.Watch(wctx, s.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev)) {
		if wr.CompactRevision != 0 {
			return fmt.Errorf("%w: revision %d was compacted (oldest kept: %d)", errResume, rev, wr.CompactRevision)
		}
		if err := wr.Err(); err != nil {
			return fmt.Errorf("etcd: watch %s: %w", s.cfg.Prefix, err)
		}
		var errs []error
		for _, ev := range wr.Events {
			key := string(ev.Kv.Key)
			rev = ev.Kv.ModRevision + 1
			switch ev.Type {
			case mvccpb.DELETE:
				delete(members, key)
			case mvccpb.PUT:
				b, err := ParseMember(ev.Kv.Value)
				if err != nil {
					errs = append(errs, fmt.Errorf("etcd: key %s: %w", key, err))
					continue
				}
				members[key] = b
			}
		}
		if len(wr.Events) > 0 {
			sink.Set(sorted(members))
		}
		if len(errs) > 0 {
			sink.Fail(errors.Join(errs...))
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("etcd: watch %s: ended", s.cfg.Prefix)
}

// sorted returns the members in key order, one per address (the first
// key's).
func sorted(members map[string]balancer.Backend) []balancer.Backend {
	keys := make([]string, 0, len(members))
	for k := range members {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]balancer.Backend, 0, len(keys))
	seen := make(map[netip.AddrPort]bool, len(keys))
	for _, k := range keys {
		b := members[k]
		if !seen[b.Addr] {
			seen[b.Addr] = true
			out = append(out, b)
		}
	}
	return out
}

// ParseMember parses a member's value: a JSON discovery.Member whose
// addr is an IP:port.
func ParseMember(value []byte) (balancer.Backend, error) {
	var m discovery.Member
	d := json.NewDecoder(strings.NewReader(string(value)))
	d.DisallowUnknownFields()
	if err := d.Decode(&m); err != nil {
		return balancer.Backend{}, fmt.Errorf("etcd: member value: %w", err)
	}
	ap, err := netip.ParseAddrPort(m.Addr)
	if err != nil || ap.Port() == 0 {
		return balancer.Backend{}, fmt.Errorf("etcd: member addr %q: want IP:port", m.Addr)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return balancer.Backend{Addr: ap, Weight: m.Weight, Zone: m.Zone, Meta: m.Meta}, nil
}

// MarshalMember returns b as a member's value, the form ParseMember
// reads.
func MarshalMember(b balancer.Backend) ([]byte, error) {
	return json.Marshal(discovery.Member{Addr: b.Addr.String(), Weight: b.Weight, Zone: b.Zone, Meta: b.Meta})
}

// Register makes b a member under prefix (key prefix+b.Addr) for as long
// as ctx lasts and this process keeps its lease alive: it grants a lease
// of ttl (rounded up to whole seconds; etcd raises it to its minimum),
// puts the member on it and keeps the lease alive. A process that dies
// stops renewing, so its member disappears at most ttl later. When ctx
// ends, Register revokes the lease, which removes the member at once,
// and returns nil. If the lease is lost (etcd unreachable for longer
// than ttl) it registers again when etcd is back. It returns an error
// when the first registration fails or the client is closed. It blocks:
// run it in its own goroutine.
func Register(ctx context.Context, c *clientv3.Client, prefix string, b balancer.Backend, ttl time.Duration) error {
	if !b.Addr.IsValid() {
		return errors.New("etcd: register: backend has no address")
	}
	if ttl <= 0 {
		return errors.New("etcd: register: ttl must be positive")
	}
	value, err := MarshalMember(b)
	if err != nil {
		return fmt.Errorf("etcd: register %s: %w", b.Addr, err)
	}
	key := prefix + b.Addr.String()
	secs := int64(cmp.Or((ttl+time.Second-1)/time.Second, 1))
	retry := retryMin
	for first := true; ; first = false {
		registered, err := keepRegistered(ctx, c, key, value, secs)
		if ctx.Err() != nil {
			return nil
		}
		if c.Ctx().Err() != nil {
			return fmt.Errorf("etcd: register %s: client closed", key)
		}
		if first && !registered {
			return fmt.Errorf("etcd: register %s: %w", key, err)
		}
		if registered {
			retry = retryMin
		}
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		retry = min(2*retry, retryMax)
	}
}

// keepRegistered puts key on a new lease and keeps the lease alive
// until ctx ends (then revokes it) or the lease is lost. It reports
// whether the key was put.
func keepRegistered(ctx context.Context, c *clientv3.Client, key string, value []byte, secs int64) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, DefaultRequestTimeout)
	defer cancel()
	lease, err := c.Grant(rctx, secs)
	if err != nil {
		return false, err
	}
	if _, err := c.Put(rctx, key, string(value), clientv3.WithLease(lease.ID)); err != nil {
		return false, err
	}
	alive, err := c.KeepAlive(ctx, lease.ID)
	if err != nil {
		return true, err
	}
	for range alive {
	}
	if ctx.Err() != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultRequestTimeout)
		defer cancel()
		c.Revoke(rctx, lease.ID) // on failure the lease expires by itself
		return true, nil
	}
	return true, errors.New("lease lost")
}
