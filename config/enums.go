package config

import (
	"fmt"
	"slices"
	"strings"
)

// Policy names a pool's balancing policy.
type Policy string

// The policies, one package each under balancer/.
const (
	PolicyRoundRobin Policy = "roundrobin"
	PolicyWeighted   Policy = "weighted"
	PolicyRandom     Policy = "random"
	PolicyLeastConn  Policy = "leastconn"
	PolicyEWMA       Policy = "ewma"
	PolicyRingHash   Policy = "ringhash"
	PolicyMaglev     Policy = "maglev"
	PolicyRendezvous Policy = "rendezvous"
	PolicySourceHash Policy = "sourcehash"
	PolicyFirst      Policy = "first"
)

// HashType is sourcehash's table type.
type HashType string

// The sourcehash table types.
const (
	HashConsistent HashType = "consistent"
	HashMapBased   HashType = "map-based"
)

// ProbeType names a health check probe.
type ProbeType string

// The probes.
const (
	ProbeTCP   ProbeType = "tcp"
	ProbeHTTP  ProbeType = "http"
	ProbeHTTPS ProbeType = "https"
	ProbeUDP   ProbeType = "udp"
	ProbeDNS   ProbeType = "dns"
	ProbeAgent ProbeType = "agent"
	ProbeNone  ProbeType = "none"
)

// InitialState is a member's health state before its first probe.
type InitialState string

// The initial states.
const (
	InitialUnknown   InitialState = "unknown"
	InitialHealthy   InitialState = "healthy"
	InitialUnhealthy InitialState = "unhealthy"
)

// ListenerType names a listener's strategy.
type ListenerType string

// The listener types.
const (
	TypeRedirect ListenerType = "redirect"
	TypeDNS      ListenerType = "dns"
	TypeHTTP     ListenerType = "http"
	TypeTCP      ListenerType = "tcp"
	TypeIPLB     ListenerType = "iplb"
	TypeL2LB     ListenerType = "l2lb"
)

// LogFormat is the access log's line format.
type LogFormat string

// The access log formats.
const (
	LogJSON     LogFormat = "json"
	LogCombined LogFormat = "combined"
)

// DNSPolicy says which ready members a DNS answer names.
type DNSPolicy string

// The DNS answer policies.
const (
	DNSAll        DNSPolicy = "all"
	DNSWeighted   DNSPolicy = "weighted"
	DNSConsistent DNSPolicy = "consistent"
	DNSNearest    DNSPolicy = "nearest"
)

// DNSFallback says what DNS answers when no member is ready.
type DNSFallback string

// The DNS fallbacks.
const (
	FallbackAll      DNSFallback = "all"
	FallbackServFail DNSFallback = "servfail"
)

// TSIGAlgorithm is a TSIG HMAC algorithm.
type TSIGAlgorithm string

// The TSIG algorithms.
const (
	HMACSHA256 TSIGAlgorithm = "hmac-sha256"
	HMACSHA384 TSIGAlgorithm = "hmac-sha384"
	HMACSHA512 TSIGAlgorithm = "hmac-sha512"
	HMACSHA224 TSIGAlgorithm = "hmac-sha224"
	HMACSHA1   TSIGAlgorithm = "hmac-sha1"
)

// ProxyVersion is a PROXY protocol version.
type ProxyVersion string

// The PROXY protocol versions.
const (
	ProxyV1 ProxyVersion = "v1"
	ProxyV2 ProxyVersion = "v2"
)

// Proto is a transport protocol of a virtual service.
type Proto string

// The protocols.
const (
	ProtoTCP Proto = "tcp"
	ProtoUDP Proto = "udp"
)

// IPLBMode is how an iplb service translates addresses.
type IPLBMode string

// The iplb modes.
const (
	ModeGateway IPLBMode = "gateway"
	ModeFullNAT IPLBMode = "fullnat"
)

// Scheduler is how an iplb service chooses a slot for a new flow.
type Scheduler string

// The iplb schedulers.
const (
	SchedConsistent Scheduler = "consistent"
	SchedRoundRobin Scheduler = "roundrobin"
)

// AttachMode is how an l2lb listener attaches its XDP program.
type AttachMode string

// The attach modes.
const (
	AttachAuto    AttachMode = "auto"
	AttachDriver  AttachMode = "driver"
	AttachGeneric AttachMode = "generic"
)

// enum is implemented by the string types above: the values a file may use
// and what they are called in error messages.
type enum interface {
	values() (what string, vals []string)
}

func (Policy) values() (string, []string) {
	return "policy", []string{"roundrobin", "weighted", "random", "leastconn", "ewma", "ringhash", "maglev", "rendezvous", "sourcehash", "first"}
}
func (HashType) values() (string, []string) { return "hash type", []string{"consistent", "map-based"} }
func (ProbeType) values() (string, []string) {
	return "probe type", []string{"tcp", "http", "https", "udp", "dns", "agent", "none"}
}
func (InitialState) values() (string, []string) {
	return "initial state", []string{"unknown", "healthy", "unhealthy"}
}
func (ListenerType) values() (string, []string) {
	return "listener type", []string{"redirect", "dns", "http", "tcp", "iplb", "l2lb"}
}
func (LogFormat) values() (string, []string) { return "log format", []string{"json", "combined"} }
func (DNSPolicy) values() (string, []string) {
	return "dns policy", []string{"all", "weighted", "consistent", "nearest"}
}
func (DNSFallback) values() (string, []string) { return "fallback", []string{"all", "servfail"} }
func (TSIGAlgorithm) values() (string, []string) {
	return "TSIG algorithm", []string{"hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1"}
}
func (ProxyVersion) values() (string, []string) {
	return "PROXY protocol version", []string{"v1", "v2"}
}
func (Proto) values() (string, []string)    { return "protocol", []string{"tcp", "udp"} }
func (IPLBMode) values() (string, []string) { return "iplb mode", []string{"gateway", "fullnat"} }
func (Scheduler) values() (string, []string) {
	return "scheduler", []string{"consistent", "roundrobin"}
}
func (AttachMode) values() (string, []string) {
	return "attach mode", []string{"auto", "driver", "generic"}
}

// checkEnum returns an error unless s is one of e's values or empty.
func checkEnum(e enum, s string) error {
	what, vals := e.values()
	if s == "" || slices.Contains(vals, s) {
		return nil
	}
	return fmt.Errorf("unknown %s %q; expected one of %s", what, s, strings.Join(vals, ", "))
}
