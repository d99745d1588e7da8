// Package l2lb is a layer-2 load balancer with direct server return, like
// LVS-DR or Katran without encapsulation: an XDP program matches frames
// for virtual services (VIP, port, protocol; IPv4 and IPv6; TCP and UDP),
// picks a backend by a Maglev table held in a BPF map, rewrites the
// destination MAC to the backend's and the source MAC to the balancer's,
// and sends the frame back out of the interface it came in on (XDP_TX).
// The backend answers the client directly; replies never cross the
// balancer.
package l2lb
