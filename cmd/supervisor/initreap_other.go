//go:build !linux

package main

// reapAsInit does nothing here: containers with a pid namespace of
// their own are a Linux matter (see initreap_linux.go).
func reapAsInit() (stop func()) { return func() {} }
