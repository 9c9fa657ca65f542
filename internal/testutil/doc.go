// Package testutil holds small helpers shared by the test suites of the
// project's packages: a short temporary directory for socket paths, a
// goroutine-safe buffer, polling with a deadline, external-tool checks,
// and views of this process's descriptors, children and goroutines
// taken from /proc and the runtime.
//
// It is ordinary (non-test) code so that several packages' tests can
// import it, but only tests should. It imports no other package of the
// project and is Linux-specific where it reads /proc.
package testutil
