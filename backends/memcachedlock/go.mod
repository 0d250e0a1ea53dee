module github.com/idemlock/lock/backends/memcachedlock

go 1.25.0

require (
	github.com/bradfitz/gomemcache v0.0.0-20260422231931-4d751bb6e37c
	github.com/idemlock/lock v0.0.0-00010101000000-000000000000
)

replace github.com/idemlock/lock => ../..
