// Package pglock is idemlock's PostgreSQL backend.
package pglock
