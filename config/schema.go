package config

import (
	"time"

	"github.com/lbkit/lbkit/balancer"
)

// Config is one lbkit configuration file: the pools of backends and the
// listeners that serve from them, plus the admin endpoint, access logs and
// shutdown deadline. Get one from [Load] or [Parse], which validate it; a
// Config is not modified afterwards and may be read from any goroutine.
type Config struct {
	// Admin is the admin endpoint (/status, /metrics, drain and weight
	// changes). Default: on 127.0.0.1:9900 without a token.
	Admin Admin `yaml:"admin"`
	// AccessLog is the access log of every listener. Default: off.
	AccessLog AccessLog `yaml:"access_log"`
	// ShutdownTimeout is how long a graceful stop (SIGTERM, SIGINT) waits
	// for connections and requests in flight before closing what is left.
	// Default: 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Pools are the sets of backends listeners pick from. Names are
	// unique; a pool may feed any number of listeners of any type.
	Pools []Pool `yaml:"pools"`
	// Listeners are the front-ends. Names are unique, and no two
	// listeners may use the same address, port and protocol.
	Listeners []Listener `yaml:"listeners"`

	file string
	pos  map[any]Position
}

// DefaultAdminAddr is the admin endpoint's address when none is set.
const DefaultAdminAddr = "127.0.0.1:9900"

// DefaultShutdownTimeout is Config.ShutdownTimeout when none is set.
const DefaultShutdownTimeout = 30 * time.Second

// Admin configures the admin endpoint.
type Admin struct {
	// Addr is the endpoint's listening address, host:port. An address
	// that is not loopback (127.0.0.0/8, ::1 or "localhost"), the empty
	// host included, requires TokenFile. Default: 127.0.0.1:9900.
	Addr string `yaml:"addr"`
	// TokenFile names a file holding the bearer token that requests must
	// present ("Authorization: Bearer TOKEN"); surrounding white space is
	// ignored. Relative paths are relative to the configuration file's
	// directory. Default: none (no token asked on loopback).
	TokenFile string `yaml:"token_file"`

	// Token is the content of TokenFile, read by Load and Parse.
	Token string `yaml:"-"`
}

// AccessLog configures the access log.
type AccessLog struct {
	// Path is where lines go: "stdout", "stderr" or a file path (relative
	// to the configuration file's directory), reopened on SIGUSR1 for log
	// rotation. Default: empty, no access log.
	Path string `yaml:"path"`
	// Format is "json" (one JSON object per line, through log/slog) or
	// "combined" (the Combined Log Format of Apache and nginx). Default:
	// json.
	Format LogFormat `yaml:"format"`
}

// Pool is a named set of backends with the policy that picks among them,
// their health check and passive outlier detection.
type Pool struct {
	// Name identifies the pool in listeners, logs and metrics. Required;
	// letters, digits, '.', '_' and '-'.
	Name string `yaml:"name"`
	// Policy picks a member for each unit of work: roundrobin, weighted
	// (smooth weighted round robin), random, leastconn, ewma (peak-EWMA
	// latency), ringhash, maglev, rendezvous, sourcehash or first (the
	// first ready member in order). Default: roundrobin.
	Policy Policy `yaml:"policy"`
	// TableSize is the lookup table's size for maglev and sourcehash: a
	// prime larger than the number of members; keep it above 100 × that
	// number. Default: 65537.
	TableSize int `yaml:"table_size"`
	// HashType is sourcehash's table: "consistent" (a Maglev table; few
	// clients move when a member leaves) or "map-based" (HAProxy's
	// default: exact shares, most clients move on any change). Default:
	// consistent.
	HashType HashType `yaml:"hash_type"`
	// PointsPerWeight is ringhash's number of ring points per unit of
	// weight. Default: 160.
	PointsPerWeight float64 `yaml:"points_per_weight"`
	// MinRingSize is ringhash's least number of ring points (Envoy's
	// minimum_ring_size). Default: no minimum.
	MinRingSize int `yaml:"min_ring_size"`
	// MaxRingSize caps ringhash's ring points (Envoy's
	// maximum_ring_size). Default: 2097152.
	MaxRingSize int `yaml:"max_ring_size"`
	// LoadFactor bounds ringhash's load ("consistent hashing with bounded
	// loads"): a member takes no new work while it has more than
	// LoadFactor × its share of the work in flight. 1.25 is HAProxy's
	// "hash-balance-factor 125". At least 1 when set. Default: no bound.
	LoadFactor float64 `yaml:"load_factor"`
	// ScanLimit is leastconn's largest member count scanned in full;
	// larger sets compare two random members. Default: 8.
	ScanLimit int `yaml:"scan_limit"`

	// Key is what a listener hashes to pick a member, for the hash
	// policies (maglev, ringhash, rendezvous, sourcehash): "client",
	// "client/24", "client/24,56", "header:NAME", "cookie:NAME", "path",
	// "query:NAME" or "flow". A key a listener cannot see falls back to
	// the client address. Default: none (the policy picks freely).
	Key balancer.Key `yaml:"key"`

	// SlowStart is the time over which a member's weight ramps up to full
	// after it recovers or joins a pool in service. Default: 0 (off).
	SlowStart time.Duration `yaml:"slow_start"`
	// SlowStartMinWeight is the fraction of its weight a member starts
	// at, in (0, 1]. Default: 0.1.
	SlowStartMinWeight float64 `yaml:"slow_start_min_weight"`
	// PanicThreshold, in [0, 1], is the healthy fraction under which the
	// pool picks from every member that is not draining, healthy or not
	// (Envoy's panic mode). Default: 0 (off).
	PanicThreshold float64 `yaml:"panic_threshold"`
	// LocalZone makes the pool prefer members whose zone equals it while
	// enough of them are ready. Default: none.
	LocalZone string `yaml:"local_zone"`
	// LocalZoneMinReady is the fraction of the local zone's members that
	// must be ready for the pool to use them alone, in (0, 1]. Default:
	// 0.5.
	LocalZoneMinReady float64 `yaml:"local_zone_min_ready"`
	// EWMADecay is the time constant of each member's latency average
	// (ewma policy). Default: 10s.
	EWMADecay time.Duration `yaml:"ewma_decay"`

	// Members are the backends. Addresses are unique within the pool.
	// Default: none (an empty pool answers "no backend").
	Members []Member `yaml:"members"`
	// Health is the active health check applied to every member.
	// Default: a TCP connect every 5s.
	Health Health `yaml:"health"`
	// Passive is outlier detection from the outcomes of real traffic.
	// Default: on, ejecting after 5 consecutive failures.
	Passive Passive `yaml:"passive"`
}

// Member is one backend of a pool.
type Member struct {
	// Addr is the backend's address, IP:port ("198.18.0.11:8080",
	// "[2001:db8::1]:80") or host:port. Required; unique in the pool.
	Addr string `yaml:"addr"`
	// Weight is the member's relative share of new work, 0 to 4294967295.
	// Default: 1 (0 also means 1).
	Weight int64 `yaml:"weight"`
	// Zone names the member's location (rack, zone, city), for a pool's
	// local_zone and zone rules of redirect and dns listeners. Default:
	// none.
	Zone string `yaml:"zone"`
	// Meta is data a listener reads from the member: "url" is a redirect
	// target's base URL (default http://ADDR), "mac" an l2lb backend's
	// MAC address (default: from the neighbour table). Default: none.
	Meta map[string]string `yaml:"meta"`
}

// Health is a pool's active health check template.
type Health struct {
	// Type is the probe: tcp (connect), http, https, udp, dns, agent
	// (HAProxy agent-check) or none (passive only: members count as
	// healthy until outcomes eject them). Default: tcp.
	Type ProbeType `yaml:"type"`
	// Port, when set, probes this port on the member's address instead
	// of the member's own port (the agent's port for agent). Default: the
	// member's port.
	Port int `yaml:"port"`

	// Interval is the time between probes while a member is up. Default:
	// 5s.
	Interval time.Duration `yaml:"interval"`
	// Timeout bounds each probe. Default: 2s.
	Timeout time.Duration `yaml:"timeout"`
	// Jitter is the most each delay is shortened or lengthened at
	// random; negative disables jitter. Default: a tenth of the delay.
	Jitter time.Duration `yaml:"jitter" config:"negative"`
	// DownInterval is the time between probes while a member is down
	// (HAProxy's downinter). Default: interval.
	DownInterval time.Duration `yaml:"down_interval"`
	// FastInterval is the time between probes while a member is changing
	// state (HAProxy's fastinter). Default: the current state's interval.
	FastInterval time.Duration `yaml:"fast_interval"`
	// Rise is how many consecutive passed probes bring a member up.
	// Default: 2.
	Rise int `yaml:"rise"`
	// Fall is how many consecutive failed probes take a member down.
	// Default: 3.
	Fall int `yaml:"fall"`
	// Initial is a member's state before its first probe: unknown (out
	// of service until the first probe, which runs at once), healthy or
	// unhealthy. Default: unknown.
	Initial InitialState `yaml:"initial"`

	// Path is the http/https request target. Default: "/".
	Path string `yaml:"path"`
	// Method is the http/https request method. Default: GET.
	Method string `yaml:"method"`
	// Host is the http/https Host header and TLS server name. Default:
	// the member's address.
	Host string `yaml:"host"`
	// Status is the range of http/https statuses that pass, "200" or
	// "200-399". Default: 200-399.
	Status string `yaml:"status"`
	// BodyContains, when set, must appear in the first 64 KiB of the
	// http/https response body. Default: none.
	BodyContains string `yaml:"body_contains"`
	// AgentHeader names an http/https response header whose value holds
	// agent words ("drain", "75%", ...). Default: none.
	AgentHeader string `yaml:"agent_header"`
	// InsecureSkipVerify skips the https certificate check. Default:
	// false.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`

	// Send is the udp datagram, or what agent writes after connecting.
	// Default: empty.
	Send string `yaml:"send"`
	// Expect, when set, must appear in the udp reply. Default: none.
	Expect string `yaml:"expect"`

	// Query is the name a dns probe asks for. Required for dns.
	Query string `yaml:"query"`
	// QueryType is the dns probe's record type: A, AAAA, SRV, SOA, NS,
	// TXT or CNAME. Default: A.
	QueryType string `yaml:"query_type"`
	// Rcode is the dns response code that passes: NOERROR, NXDOMAIN,
	// REFUSED or SERVFAIL. Default: NOERROR.
	Rcode string `yaml:"rcode"`
	// WantAnswer requires at least one record in the dns answer.
	// Default: false.
	WantAnswer bool `yaml:"want_answer"`
	// Net is the dns probe's transport, udp or tcp. Default: udp.
	Net string `yaml:"net"`
}

// Passive configures outlier detection from real traffic (Envoy's outlier
// detection): what listeners report as failures (connect errors, 5xx,
// timeouts) ejects a member for a while.
type Passive struct {
	// Disabled turns passive detection off. Default: false.
	Disabled bool `yaml:"disabled"`
	// ConsecutiveFailures ejects a member after this many failures in a
	// row; negative disables the rule. Default: 5.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// FailureRate, in (0, 1], ejects a member whose failed fraction of
	// the window's outcomes reaches it. Default: 0 (off).
	FailureRate float64 `yaml:"failure_rate"`
	// Window is the span of the sliding window of outcomes. Default: 10s.
	Window time.Duration `yaml:"window"`
	// Buckets is how many buckets the window slides by. Default: 10.
	Buckets int `yaml:"buckets"`
	// MinRequests is the least number of outcomes in the window for the
	// rate rules to apply. Default: 20.
	MinRequests int `yaml:"min_requests"`
	// LatencyThreshold makes outcomes at least this slow count as slow.
	// Default: 0 (the latency rule is off).
	LatencyThreshold time.Duration `yaml:"latency_threshold"`
	// LatencyMinSlow is the least number of slow outcomes that can eject.
	// Default: 10.
	LatencyMinSlow int `yaml:"latency_min_slow"`
	// LatencyRate, in (0, 1], is the slow fraction of the window that
	// ejects. Default: 0.5.
	LatencyRate float64 `yaml:"latency_rate"`
	// BaseEjection is the first ejection's length; the n-th lasts n times
	// as long, up to MaxEjection. Default: 30s.
	BaseEjection time.Duration `yaml:"base_ejection"`
	// MaxEjection caps an ejection's length. Default: 300s.
	MaxEjection time.Duration `yaml:"max_ejection"`
	// MaxEjectedPercent, in [0, 100], is the largest share of members
	// ejected at once. Default: 10.
	MaxEjectedPercent float64 `yaml:"max_ejected_percent"`
	// HoldEjection keeps an ejected member out for its whole ejection
	// even when its active probes pass. Default: false (a passing probe
	// ends the ejection).
	HoldEjection bool `yaml:"hold_ejection"`
}

// Listener is one front-end: a name, a type and an address, and next to them
// in the same mapping the options of its type.
//
// Load and Parse put the type's options in the block matching Type
// (Redirect, DNS, HTTP, TCP, IPLB or L2LB); the other blocks are nil.
type Listener struct {
	// Name identifies the listener in logs, metrics and /status.
	// Required; unique.
	Name string `yaml:"name"`
	// Type is the strategy: redirect, dns, http, tcp, iplb or l2lb.
	// Required.
	Type ListenerType `yaml:"type"`
	// Addr is the listening address, host:port, of redirect, dns, http
	// and tcp listeners; the host is an IP address, "localhost" or empty
	// (every address). Required for them (a dns listener that only runs
	// updaters has none); iplb and l2lb listeners use vip and port
	// instead.
	Addr string `yaml:"addr"`

	// Redirect holds the options of a redirect listener.
	Redirect *Redirect `yaml:"-"`
	// DNS holds the options of a dns listener.
	DNS *DNS `yaml:"-"`
	// HTTP holds the options of an http listener.
	HTTP *HTTP `yaml:"-"`
	// TCP holds the options of a tcp listener.
	TCP *TCP `yaml:"-"`
	// IPLB holds the options of an iplb listener.
	IPLB *IPLB `yaml:"-"`
	// L2LB holds the options of an l2lb listener.
	L2LB *L2LB `yaml:"-"`
}

// TLS is a certificate a listener serves HTTPS with.
type TLS struct {
	// CertFile is the PEM certificate chain. Required.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key. Required.
	KeyFile string `yaml:"key_file"`
}

// Cookie is a signed cookie that keeps a client on one backend.
type Cookie struct {
	// Name is the cookie's name. Default: lbkit_backend.
	Name string `yaml:"name"`
	// KeyFile names a file of at least 16 bytes that signs the cookies,
	// shared by replicas that must honour each other's cookies. Default:
	// a random key per process (cookies do not survive a restart).
	KeyFile string `yaml:"key_file"`
	// MaxAge is the cookie's lifetime. Default: a session cookie.
	MaxAge time.Duration `yaml:"max_age"`
	// Secure adds the Secure attribute. Default: false.
	Secure bool `yaml:"secure"`

	// Key is the content of KeyFile, read by Load and Parse.
	Key []byte `yaml:"-"`
}

// ZoneRule sends clients in Prefix to members of Zone.
type ZoneRule struct {
	// Prefix is the client network, such as 198.18.0.0/16. Required.
	Prefix string `yaml:"prefix"`
	// Zone is the member zone those clients prefer. Required.
	Zone string `yaml:"zone"`
}

// Redirect is a redirect listener: it answers each request with a redirect
// to a member's base URL (member meta "url", default http://ADDR) plus the
// request's path and query.
type Redirect struct {
	// Pool is the pool of redirect targets. Required.
	Pool string `yaml:"pool"`
	// Code is the status of redirects for GET and HEAD: 301, 302, 303,
	// 307 or 308. Default: 302.
	Code int `yaml:"code"`
	// MaxAge, when set, lets clients cache redirects that long. Default:
	// 0 ("Cache-Control: no-store").
	MaxAge time.Duration `yaml:"max_age"`
	// Cookie, when set, keeps a client on its target with a signed
	// cookie. Default: none.
	Cookie *Cookie `yaml:"cookie"`
	// Zones send clients in a network to members of a zone while one is
	// ready (longest prefix wins). Default: none.
	Zones []ZoneRule `yaml:"zones"`
	// DuplicateLinks adds up to this many "Link: rel=duplicate" headers
	// naming other ready targets (RFC 6249). Default: 0.
	DuplicateLinks int `yaml:"duplicate_links"`
	// FallbackURL is where clients go when no target is ready. Default:
	// none (503 with Retry-After).
	FallbackURL string `yaml:"fallback_url"`
	// RetryAfter is the Retry-After of a 503. Default: 5s.
	RetryAfter time.Duration `yaml:"retry_after"`
	// TrustedProxies are the peers (addresses or prefixes) whose
	// X-Forwarded-For names the client. Default: none.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// TLS, when set, serves HTTPS. Default: plain HTTP.
	TLS *TLS `yaml:"tls"`
}

// DNS is an authoritative DNS listener that answers service names from
// pools, and optionally dynamic-DNS updaters that push a pool to other
// servers.
type DNS struct {
	// Zones are the zones served. Required unless the listener only runs
	// updaters.
	Zones []DNSZone `yaml:"zones"`
	// Services are the load-balanced names, each inside a zone.
	Services []DNSService `yaml:"services"`
	// RRL limits responses per client prefix against reflection attacks.
	// Default: off.
	RRL *RRL `yaml:"rrl"`
	// UpdateKeys are the TSIG keys whose holders may add and remove
	// members of services with an update_port through RFC 2136 UPDATE.
	// Default: none (UPDATE answers NOTIMP).
	UpdateKeys []TSIGKey `yaml:"update_keys"`
	// Updaters push pools to other authoritative servers (BIND, Knot,
	// PowerDNS) with TSIG-signed RFC 2136 UPDATEs. Default: none.
	Updaters []DNSUpdater `yaml:"updaters"`
	// UDPSockets is how many SO_REUSEPORT UDP sockets share the port.
	// Default: one per CPU.
	UDPSockets int `yaml:"udp_sockets"`
	// MaxUDPSize caps UDP responses, 512 to 65535. Default: 1232.
	MaxUDPSize int `yaml:"max_udp_size"`
	// TCPIdleTimeout closes an idle TCP connection. Default: 10s.
	TCPIdleTimeout time.Duration `yaml:"tcp_idle_timeout"`
	// MaxTCPConns bounds concurrent TCP connections. Default: 1024.
	MaxTCPConns int `yaml:"max_tcp_conns"`
}

// DNSZone is a zone a dns listener is authoritative for.
type DNSZone struct {
	// Origin is the zone's apex, such as "example.test.". Required.
	Origin string `yaml:"origin"`
	// Records is the zone's data as zone-file text, with exactly one SOA
	// (at the apex) and the apex NS records. Exactly one of Records and
	// File is required.
	Records string `yaml:"records"`
	// File names a zone file holding the records instead.
	File string `yaml:"file"`
}

// DNSService is a name a dns listener answers from a pool.
type DNSService struct {
	// Name is the service's name inside one of the zones, such as
	// "www.example.test.". Required.
	Name string `yaml:"name"`
	// Pool supplies the addresses. Required.
	Pool string `yaml:"pool"`
	// Policy chooses the answers: all (every ready member, rotated),
	// weighted (count members drawn by weight), consistent (the same
	// members per client subnet; use a hash policy on the pool) or
	// nearest (members of the zone the client's subnet maps to). Default:
	// all.
	Policy DNSPolicy `yaml:"policy"`
	// Count is how many addresses an answer names (weighted, consistent,
	// nearest). Default: 1 (weighted, consistent); every ready member of
	// the zone (nearest).
	Count int `yaml:"count"`
	// TTL of the answers, whole seconds. Default: 30s.
	TTL time.Duration `yaml:"ttl"`
	// Zones map client subnets to member zones for nearest. Default:
	// none.
	Zones []ZoneRule `yaml:"zones"`
	// Fallback is the answer when no member is ready: all (every member
	// not draining) or servfail. Default: all.
	Fallback DNSFallback `yaml:"fallback"`
	// UpdatePort opens the service to UPDATEs signed with an update key:
	// addresses added join the pool with this port. Default: 0 (refused).
	UpdatePort int `yaml:"update_port"`
}

// RRL configures DNS response rate limiting.
type RRL struct {
	// Rate is the responses per second allowed to one client prefix.
	// Required (positive).
	Rate float64 `yaml:"rate"`
	// Burst is how many responses a prefix may get at once. Default:
	// rate.
	Burst int `yaml:"burst"`
	// Slip sends every slip-th limited response truncated instead of
	// dropping it; negative drops all. Default: 2.
	Slip int `yaml:"slip"`
	// IPv4PrefixLen is the IPv4 client prefix accounted together, 1 to
	// 32. Default: 24.
	IPv4PrefixLen int `yaml:"ipv4_prefix_len"`
	// IPv6PrefixLen is the IPv6 client prefix accounted together, 1 to
	// 128. Default: 56.
	IPv6PrefixLen int `yaml:"ipv6_prefix_len"`
	// TableSize is how many prefixes are tracked. Default: 65536.
	TableSize int `yaml:"table_size"`
}

// TSIGKey is a TSIG key (RFC 8945) whose secret is read from a file.
type TSIGKey struct {
	// Name is the key's name as configured on the other side, such as
	// "lbkit.". Required.
	Name string `yaml:"name"`
	// Algorithm is hmac-sha256, hmac-sha384, hmac-sha512, hmac-sha224 or
	// hmac-sha1. Default: hmac-sha256.
	Algorithm TSIGAlgorithm `yaml:"algorithm"`
	// SecretFile names a file holding the base64 secret (as in BIND's or
	// Knot's key statement). Required.
	SecretFile string `yaml:"secret_file"`

	// Secret is the base64 secret read from SecretFile by Load and Parse.
	Secret string `yaml:"-"`
}

// DNSUpdater keeps an RRset on another DNS server equal to a pool's ready
// members, through TSIG-signed RFC 2136 UPDATEs.
type DNSUpdater struct {
	// Server is the primary server's address, IP:port. Required.
	Server string `yaml:"server"`
	// Zone is the zone to update, such as "example.test.". Required.
	Zone string `yaml:"zone"`
	// Name is the owner of the RRset, inside Zone. Required.
	Name string `yaml:"name"`
	// Type is the record type kept, A or AAAA. Default: A.
	Type string `yaml:"type"`
	// TTL of the records added. Default: 30s.
	TTL time.Duration `yaml:"ttl"`
	// Pool supplies the addresses. Required.
	Pool string `yaml:"pool"`
	// Fallback is what to publish when no member is ready: all or
	// servfail (nothing). Default: all.
	Fallback DNSFallback `yaml:"fallback"`
	// Key signs the updates. Required.
	Key TSIGKey `yaml:"key"`
	// Net is the transport of updates, udp or tcp. Default: udp.
	Net string `yaml:"net"`
	// Timeout bounds each exchange. Default: 2s.
	Timeout time.Duration `yaml:"timeout"`
	// Interval is how often the RRset is checked when nothing changed.
	// Default: 30s.
	Interval time.Duration `yaml:"interval"`
}

// HTTP is a reverse-proxy listener.
type HTTP struct {
	// Pool serves requests that no route matches. Required unless routes
	// are given.
	Pool string `yaml:"pool"`
	// Routes send requests by host and path prefix to pools; the longest
	// matching path prefix of the most specific host wins. Default: none.
	Routes []Route `yaml:"routes"`
	// MaxTries is how many members a request may be sent to, the first
	// included; 1 disables retries. Default: 3.
	MaxTries int `yaml:"max_tries"`
	// RetryStatuses are response statuses on which an idempotent request
	// is retried on another member (say 502, 503, 504). Default: none
	// (only connection failures are retried).
	RetryStatuses []int `yaml:"retry_statuses"`
	// RetryTimeout is the time after a request started past which no new
	// try begins. Default: 10s.
	RetryTimeout time.Duration `yaml:"retry_timeout"`
	// RetryBudget limits the retries in flight to a share of the requests
	// in flight, Envoy's retry_budget, so that in an outage retries add at
	// most that share to the load however many clients retry. A retry
	// over the budget is not made. Default: none.
	RetryBudget *RetryBudget `yaml:"retry_budget"`
	// Circuit holds circuit breakers (Envoy's thresholds) for the pool as
	// a whole and for each member: work over a threshold is refused at
	// once with 503. Default: none.
	Circuit *Circuit `yaml:"circuit"`
	// RetryBufferBytes buffers request bodies up to this size so they can
	// be retried. Default: 0 (bodies are not replayed).
	RetryBufferBytes int64 `yaml:"retry_buffer_bytes"`
	// MaxConns limits the requests in flight per member (HAProxy's
	// maxconn). Default: 0 (no limit).
	MaxConns int `yaml:"max_conns"`
	// MaxQueue is how many requests may wait for a free member when all
	// are at max_conns (HAProxy's maxqueue). Default: 0 (503 at once).
	MaxQueue int `yaml:"max_queue"`
	// QueueTimeout is how long a request waits in the queue. Default: 5s.
	QueueTimeout time.Duration `yaml:"queue_timeout"`
	// Sticky, when set, keeps a client on its member with a signed
	// cookie. Default: none.
	Sticky *Cookie `yaml:"sticky"`
	// TrustedProxies are the peers (addresses or prefixes) whose
	// X-Forwarded-For and Forwarded headers are extended; from others
	// they are replaced. Default: none.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// Via is the pseudonym of a Via header added to requests and
	// responses. Default: none.
	Via string `yaml:"via"`
	// Timeouts bound the phases of a request.
	Timeouts HTTPTimeouts `yaml:"timeouts"`
	// MaxIdleConns is how many idle connections are kept per member.
	// Default: 512.
	MaxIdleConns int `yaml:"max_idle_conns"`
	// TLS, when set, serves HTTPS. Default: plain HTTP.
	TLS *TLS `yaml:"tls"`
}

// RetryBudget is Envoy's retry budget.
type RetryBudget struct {
	// Percent is the share, in percent of the requests in flight, that
	// retries in flight may reach. Required, in (0, 100].
	Percent float64 `yaml:"percent"`
	// MinConcurrency is the number of retries in flight always allowed,
	// however few requests are in flight. Default: 3.
	MinConcurrency int `yaml:"min_concurrency"`
}

// Circuit is a listener's circuit breakers.
type Circuit struct {
	// MaxRequests caps the requests in flight to the pool. Default: 0
	// (no limit).
	MaxRequests int `yaml:"max_requests"`
	// MaxRetries caps the retries in flight to the pool. Default: 0 (no
	// limit).
	MaxRetries int `yaml:"max_retries"`
	// MemberMaxRequests caps the requests in flight to each member.
	// Default: 0 (no limit).
	MemberMaxRequests int `yaml:"member_max_requests"`
}

// Route sends matching requests to a pool.
type Route struct {
	// Host matches the request's host (without port): an exact name or
	// "*.example.test" for any subdomain. Default: any host.
	Host string `yaml:"host"`
	// PathPrefix matches requests whose path starts with it; it starts
	// with "/". Default: "/" (every path).
	PathPrefix string `yaml:"path_prefix"`
	// Pool serves the matching requests. Required.
	Pool string `yaml:"pool"`
}

// HTTPTimeouts bound an http listener's requests.
type HTTPTimeouts struct {
	// Connect bounds connecting to a member. Default: 5s.
	Connect time.Duration `yaml:"connect"`
	// ResponseHeader bounds the wait for a member's response header.
	// Default: 60s.
	ResponseHeader time.Duration `yaml:"response_header"`
	// Request bounds a request as a whole, body and upgraded connections
	// included. Default: 0 (no limit).
	Request time.Duration `yaml:"request"`
	// Idle closes member connections idle for longer; keep it below the
	// members' keep-alive timeout. Default: 60s.
	Idle time.Duration `yaml:"idle"`
	// ClientRead bounds reading a client's request header. Default: 10s.
	ClientRead time.Duration `yaml:"client_read"`
	// ClientIdle closes a client keep-alive connection idle for longer.
	// Default: 2m.
	ClientIdle time.Duration `yaml:"client_idle"`
}

// TCP is a layer-4 proxy listener.
type TCP struct {
	// Pool is the pool of members. Required.
	Pool string `yaml:"pool"`
	// ProxyProtocol sends and accepts PROXY protocol headers.
	ProxyProtocol ProxyProtocol `yaml:"proxy_protocol"`
	// ConnectTimeout bounds each connection attempt to a member. Default:
	// 3s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// ConnectAttempts is how many members a client connection may be
	// tried on. Default: 3.
	ConnectAttempts int `yaml:"connect_attempts"`
	// IdleTimeout closes a connection idle in both directions for that
	// long; negative disables it. Default: 10m.
	IdleTimeout time.Duration `yaml:"idle_timeout" config:"negative"`
	// MaxConns caps the open connections to each member. Default: 0 (no
	// limit).
	MaxConns int `yaml:"max_conns"`
}

// ProxyProtocol configures the PROXY protocol (HAProxy's send-proxy and
// accept-proxy) of a tcp listener.
type ProxyProtocol struct {
	// Send is the version sent to members before the client's bytes, v1
	// or v2. Default: none.
	Send ProxyVersion `yaml:"send"`
	// Accept requires every client connection to start with a PROXY
	// header (v1 or v2), whose addresses then name the client. Only
	// enable it behind a proxy that always sends one. Default: false.
	Accept bool `yaml:"accept"`
}

// IPLB is a kernel NAT virtual service (LVS-NAT through nftables). It needs
// root.
type IPLB struct {
	// VIP is the virtual IP address clients connect to. Required.
	VIP string `yaml:"vip"`
	// Port is the virtual service's port, 1 to 65535. Required.
	Port int `yaml:"port"`
	// Proto is tcp or udp. Default: tcp.
	Proto Proto `yaml:"proto"`
	// Pool is the pool of members, of the VIP's address family. Required.
	Pool string `yaml:"pool"`
	// Mode is gateway (members route replies through the balancer) or
	// fullnat (the source is rewritten too). Default: gateway.
	Mode IPLBMode `yaml:"mode"`
	// SNAT is the source address fullnat rewrites to. Default: the
	// address of the link toward the member.
	SNAT string `yaml:"snat"`
	// Scheduler is consistent (flow hash) or roundrobin. Default:
	// consistent.
	Scheduler Scheduler `yaml:"scheduler"`
	// TableSize is the number of flow slots, a prime above the member
	// count. Default: chosen from the member count.
	TableSize int `yaml:"table_size"`
	// Interface is the link the VIP arrives on. Default: any.
	Interface string `yaml:"interface"`
}

// L2LB is an XDP direct-server-return balancer (LVS-DR) on one interface.
// It needs root.
type L2LB struct {
	// Interface is the interface VIP traffic arrives on and leaves by.
	// Required.
	Interface string `yaml:"interface"`
	// Attach is how the XDP program attaches: auto (driver mode, else
	// generic), driver or generic. Default: auto.
	Attach AttachMode `yaml:"attach"`
	// VIPs are the virtual services. At least one; distinct.
	VIPs []L2VIP `yaml:"vips"`
	// MaxBackends is the number of backend ids for all VIPs together.
	// Default: 1024.
	MaxBackends int `yaml:"max_backends"`
	// ConnTableSize is the number of flows remembered. Default: 65536.
	ConnTableSize int `yaml:"conn_table_size"`
	// ResolveInterval is how often members' MAC addresses are re-read.
	// Default: 1s.
	ResolveInterval time.Duration `yaml:"resolve_interval"`
}

// L2VIP is one virtual service of an l2lb listener.
type L2VIP struct {
	// VIP is the virtual IP address. Required.
	VIP string `yaml:"vip"`
	// Port is the service's port, 1 to 65535; members listen on it too.
	// Required.
	Port int `yaml:"port"`
	// Proto is tcp or udp. Default: tcp.
	Proto Proto `yaml:"proto"`
	// Pool is the pool of members, on the interface's link. Required.
	Pool string `yaml:"pool"`
}
