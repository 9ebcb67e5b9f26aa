package audit

// remembered is how many event IDs p holds in memory.
func remembered(p *Plugin) int { return len(p.seen.ids) }
