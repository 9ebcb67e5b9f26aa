package inventory

import "sync"

// DeviceChange says that a device stopped being active: it was disabled
// (Removed false) or deleted (Removed true). Device is the record as stored
// after the change (before deletion, for a removal).
type DeviceChange struct {
	Device  *Device
	Removed bool
}

var deactivateListeners struct {
	sync.RWMutex
	next int
	fns  map[int]func(DeviceChange)
}

// OnDeactivate registers fn to run, synchronously and in this process, after
// Store.Update or an import stores a disabled status or Store.Delete removes a
// device. It returns a function that unregisters fn. Listeners must not rely
// on being called (a crash can come between the write and the call): the
// device-attest plugin sweeps for missed changes.
func OnDeactivate(fn func(DeviceChange)) (unregister func()) {
	l := &deactivateListeners
	l.Lock()
	defer l.Unlock()
	if l.fns == nil {
		l.fns = map[int]func(DeviceChange){}
	}
	id := l.next
	l.next++
	l.fns[id] = fn
	return func() {
		l.Lock()
		defer l.Unlock()
		delete(l.fns, id)
	}
}

func notifyDeactivated(c DeviceChange) {
	l := &deactivateListeners
	l.RLock()
	fns := make([]func(DeviceChange), 0, len(l.fns))
	for _, fn := range l.fns {
		fns = append(fns, fn)
	}
	l.RUnlock()
	for _, fn := range fns {
		fn(c)
	}
}
