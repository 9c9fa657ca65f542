package ipc

import "testing"

// TestRepollPace checks the pace of the polls a reader makes while
// polling does not pay: every repollMin-th read at first, twice as far
// apart after each fruitless poll up to repollMax, back to repollMin
// after a poll that caught data or when polling stops anew, and at the
// next read when a due poll could not be made.
func TestRepollPace(t *testing.T) {
	var re repoll
	// next counts the reads up to and including the next poll.
	next := func() int {
		for n := 1; n <= 4*repollMax; n++ {
			if re.due() {
				return n
			}
		}
		t.Fatalf("no poll within %d reads", 4*repollMax)
		return 0
	}
	want := repollMin
	for range 10 {
		if got := next(); got != want {
			t.Fatalf("poll after %d reads, want %d", got, want)
		}
		re.paid(false)
		want = min(2*want, repollMax)
	}
	if want != repollMax {
		t.Fatalf("the pace stopped at %d, want repollMax %d", want, repollMax)
	}
	if got := next(); got != repollMax {
		t.Fatalf("poll after %d reads at the slowest pace, want %d", got, repollMax)
	}
	re.paid(true)
	if got := next(); got != repollMin {
		t.Fatalf("after a poll that paid: poll after %d reads, want %d", got, repollMin)
	}

	// A poll that was due but could not run (another goroutine was
	// polling) is made at the next read.
	re.paid(false)
	re.paid(false)
	for range 5 {
		re.due()
	}
	re.again()
	if got := next(); got != 1 {
		t.Fatalf("after again: poll after %d reads, want 1", got)
	}

	// Polling that stops starts the pace over.
	re.paid(false)
	re.due()
	re.restart()
	if got := next(); got != repollMin {
		t.Fatalf("after restart: poll after %d reads, want %d", got, repollMin)
	}
}
