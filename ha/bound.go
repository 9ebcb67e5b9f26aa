package ha

// byteBound bounds a map in entries and in bytes. It sits beside the map
// it bounds (whose owner holds the lock) and counts what the map's entries
// use now, as estimated by size: the same key and value must always give
// the same size, so removing an entry gives back what adding it took.
type byteBound[K comparable, V any] struct {
	maxEntries int
	maxBytes   int64
	used       int64
	size       func(K, V) int64
}

// put adds k to m, first dropping arbitrary entries (Go randomises where
// iteration starts) until it fits, so a full cache degrades gradually
// instead of being emptied at once. An entry larger than the whole bound is
// not kept; put reports whether k was.
func (b *byteBound[K, V]) put(m map[K]V, k K, v V) bool {
	b.remove(m, k)
	n := b.size(k, v)
	if n > b.maxBytes || b.maxEntries < 1 {
		return false
	}
	for old, ov := range m {
		if len(m) < b.maxEntries && b.used+n <= b.maxBytes {
			break
		}
		b.used -= b.size(old, ov)
		delete(m, old)
	}
	m[k] = v
	b.used += n
	return true
}

// remove deletes k from m.
func (b *byteBound[K, V]) remove(m map[K]V, k K) {
	if v, ok := m[k]; ok {
		b.used -= b.size(k, v)
		delete(m, k)
	}
}

// reset is called when the map is replaced by an empty one.
func (b *byteBound[K, V]) reset() { b.used = 0 }
