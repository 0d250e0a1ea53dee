module github.com/idemlock/lock

go 1.25.0
