module github.com/idemlock/lock

go 1.26
