// Package integration is the root of idemlock's test-only module: the
// tests and commands that import several backends, kept apart so that the
// root module (the contract, memlock, kvlock, conformance, idempotency)
// needs no third-party module and each networked backend's module needs
// only its own client.
//
//   - idempotency: the idempotency tests on every networked backend;
//   - torture and cmd/torture: the torture harness and `make torture`;
//   - testenv, faults: the tests of internal/testenv and internal/faults
//     that talk to the servers through their client libraries;
//   - cmd/checkout: examples/checkout's story on every backend;
//   - modules: the check that the root module lists no module but itself
//     in `go list -m all`, and that a program importing only lock and
//     backends/redislock lists none of the other backends' modules.
//
// `make test` tests this module with the others.
package integration
