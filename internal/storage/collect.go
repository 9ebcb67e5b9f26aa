package storage

import (
	"errors"

	"github.com/smallstep/nosql"
)

// errPageFull stops CollectPage's walk once the page and one more item
// are found.
var errPageFull = errors.New("page full")

// CollectPage reads one page of a listing in key order: the rows of table
// after the key after (nil: from the start) that pass m and that keep
// turns into an item (ok false: skipped), at most limit of them. next is
// the key of the last item when another one follows, nil at the end.
//
// It reads from the cursor on, not the whole table: the first read asks
// for limit+1 matches (a page and one more, to know there is a next one),
// and each further read, needed when keep skips rows the prefilter let
// through, asks for four times as many, up to 5,000.
func CollectPage[T any](store nosql.DB, table, after []byte, limit int, m Match, keep func(key, value []byte) (T, bool, error)) (items []T, next []byte, err error) {
	m.sample = new(planSample) // sampled once for the whole walk
	items = make([]T, 0, min(limit, 64))
	var lastKey []byte
	chunk := limit + 1
	for {
		more, err := ForEachPageMatch(store, table, after, chunk, m, func(k, v []byte) error {
			item, ok, err := keep(k, v)
			if err != nil || !ok {
				return err
			}
			if len(items) == limit {
				next = lastKey
				return errPageFull
			}
			items, lastKey = append(items, item), append(lastKey[:0], k...)
			return nil
		})
		switch {
		case errors.Is(err, errPageFull):
			return items, next, nil
		case err != nil:
			return nil, nil, err
		case more == nil:
			return items, nil, nil
		}
		after, chunk = more, min(4*chunk, 5000)
	}
}
