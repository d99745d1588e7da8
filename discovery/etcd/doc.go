// Package etcd is a discovery.Source of pool members kept under a key
// prefix in etcd (go.etcd.io/etcd/client/v3), and Register, with which
// a backend adds itself on a lease so that it disappears when it dies.
//
// It is a package of its own, apart from package discovery, so that a
// program that discovers members from host names, DNS or a file does not
// link etcd's client and gRPC.
package etcd
