// Package route is the routing hash shared by the center, which purges an
// item in the group its route value picks, and the readers, which must read
// it from the same group.
package route

import "hash/crc32"

// GroupFor picks the group of a route value among n groups:
//
//	((crc32(value) >> 16) & 0x7fff) % n
//
// with crc32 the IEEE polynomial over the value's decimal or text form. It is
// the hash nginx's `hash $key;` upstream balancer (Cache::Memcached
// compatible) uses for equal-weight servers on its first try, so an nginx
// upstream block listing one server per group, in the config's group order,
// sends an item's reads to the group flashsync purges. It depends only on the
// value and the group count: stable across restarts and processes.
func GroupFor(value []byte, n int) int {
	if n <= 1 {
		return 0
	}
	h := (crc32.ChecksumIEEE(value) >> 16) & 0x7fff
	return int(h % uint32(n))
}
