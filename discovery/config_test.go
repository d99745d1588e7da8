package discovery

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// TestConfigYAML decodes the sources' configs as a configuration file
// writes them (the form doc.go shows).
func TestConfigYAML(t *testing.T) {
	var got struct {
		Static StaticConfig `yaml:"static"`
		DNS    DNSConfig    `yaml:"dns"`
		File   FileConfig   `yaml:"file"`
	}
	text := `
static:  {members: [{addr: "localhost:9101"}, {addr: "web-1.example.test:80", weight: 2, zone: a, meta: {url: "http://web-1"}}], interval: 30s, network: ip4}
dns:     {name: _http._tcp.web.example.test, type: SRV, servers: ["127.0.0.53"], tcp: true, timeout: 1s, min_ttl: 1s, max_ttl: 5m, allow_empty: true}
file:    {path: /etc/lbkit/web.yaml, debounce: 50ms, interval: 1m}
`
	dec := yaml.NewDecoder(strings.NewReader(text))
	dec.KnownFields(true)
	require.NoError(t, dec.Decode(&got))
	assert.Equal(t, StaticConfig{
		Members:  []Member{{Addr: "localhost:9101"}, {Addr: "web-1.example.test:80", Weight: 2, Zone: "a", Meta: map[string]string{"url": "http://web-1"}}},
		Interval: 30 * time.Second,
		Network:  "ip4",
	}, got.Static)
	assert.Equal(t, DNSConfig{
		Name: "_http._tcp.web.example.test", Type: "SRV", Servers: []string{"127.0.0.53"}, TCP: true,
		Timeout: time.Second, MinTTL: time.Second, MaxTTL: 5 * time.Minute, AllowEmpty: true,
	}, got.DNS)
	assert.Equal(t, FileConfig{Path: "/etc/lbkit/web.yaml", Debounce: 50 * time.Millisecond, Interval: time.Minute}, got.File)
	for _, err := range []error{
		func() error { _, err := NewStatic(got.Static); return err }(),
		func() error { _, err := NewDNS(got.DNS); return err }(),
		func() error { _, err := NewFile(got.File); return err }(),
	} {
		assert.NoError(t, err)
	}
}
