// Package testutil holds what the test suites of the project's packages
// share: the helper-process harness every package's TestMain runs
// ([Harness]: re-exec role dispatch, the check for roles no test used,
// and the descriptor, goroutine and child-process leak checks), child
// processes with captured output ([Process]), a short temporary
// directory for socket paths, a goroutine-safe buffer, polling with a
// deadline, external-tool checks, and views of this process's
// descriptors, children and goroutines taken from /proc and the
// runtime.
//
// It is ordinary (non-test) code so that several packages' tests can
// import it, but only tests should. It imports no other package of the
// project and is Linux-specific where it reads /proc.
package testutil
