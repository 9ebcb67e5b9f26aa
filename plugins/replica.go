package plugins

import (
	"fmt"
	"strings"
)

// ReplicaID is the one format of a replica identifier:
//
//	hostname|address|pid-random
//
// hostname|address is stable across restarts of one replica and unique
// among live processes (only one can listen on the address), so a restarted
// daemon can tell claims of its previous incarnation (PreviousIncarnation)
// and take them over at once; pid-random tells incarnations apart.
func ReplicaID(hostname, address string, pid int, random string) string {
	return fmt.Sprintf("%s|%s|%d-%s", hostname, address, pid, random)
}

// PreviousIncarnation reports whether other is an earlier (or later)
// incarnation of the replica self: the same hostname|address, another
// process. That process is dead, since self holds its listen address.
func PreviousIncarnation(self, other string) bool {
	i := strings.LastIndexByte(self, '|')
	return i > 0 && other != self && strings.HasPrefix(other, self[:i+1])
}
