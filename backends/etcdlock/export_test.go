package etcdlock

// Quiesce waits until the Locker's background worker has nothing left to
// do. Tests call it while no other call on the Locker runs.
func Quiesce(l *Locker) { l.pool.wg.Wait() }

// IdleLeases returns how many unused leases the Locker's pool keeps.
func IdleLeases(l *Locker) int {
	l.pool.mu.Lock()
	defer l.pool.mu.Unlock()
	n := 0
	for _, list := range l.pool.idle {
		n += len(list)
	}
	return n
}
