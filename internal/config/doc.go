// Package config reads the TOML file that describes the programs a
// supervisor runs: several named programs, each with its own command,
// number of workers and settings. It loads and validates the file
// ([Load], [Parse]), orders the programs by their dependencies
// ([File.StartOrder]) and tells what changed between two versions of
// the file ([Compare]), for a reload. It starts nothing and imports
// none of the packages that do: the command maps a [Program] onto the
// supervisor's configuration.
//
// # Format
//
//	# pairvisor.toml
//	[programs.db]
//	command = "python3"                 # required; found on PATH unless it has a slash
//	args = ["db.py", "--port", "54%i"]  # %i: the worker's slot number (1..workers); %%: a literal %
//	env = { DATA = "/var/lib/db/%i" }   # added to the environment; values expanded like args
//	dir = "/srv/db"                     # working directory, as written (no % expansion)
//	workers = 1                         # 1 to 10000 (default 1)
//	ready = "notify"                    # "hello" (default) | "notify" | "started"
//	start_secs = "1s"                   # ready = "started" only: alive this long is ready
//	watchdog = "30s"                    # ready = "notify" only: WATCHDOG_USEC; no WATCHDOG=1 for this long = hung
//	health_cmd = ["pg_isready", "-p", "54%i"]  # exec probe: an array, run without a shell
//	health_interval = "10s"             # health_cmd only
//	health_timeout = "5s"               # health_cmd only
//	health_misses = 3                   # health_cmd only
//	restart = "on-failure"              # "always" | "on-failure" (default) | "never"
//	backoff_min = "100ms"
//	backoff_max = "30s"                 # not less than backoff_min
//	healthy_after = "10s"
//	max_restarts = 0                    # within restart_window; 0: no limit
//	restart_window = "1m"
//	start_timeout = "10s"
//	stop_timeout = "5s"
//	stop_signal = "TERM"                # TERM (default), INT, HUP, QUIT, USR1, USR2, KILL; "SIG" prefix allowed
//	ping_interval = "1s"                # ready = "hello" only
//	ping_timeout = "1s"                 # ready = "hello" only
//	ping_misses = 3                     # ready = "hello" only
//	after = ["other"]                   # start once these are ready; stop before them
//	listen = ["http=tcp://:8080", "unix:/run/db.sock"]  # sockets bound once, passed to every worker (docs/LISTENERS.md)
//
// The only top-level key is "programs", a table with one table per
// program; there must be at least one program, and at most 1000. A
// program's name (the NAME of [programs.NAME]) matches
// [a-z0-9][a-z0-9_-]{0,62}. Any other key, at the top level or in a
// program's table, is an error.
//
// Durations are Go duration strings ("1.5s", "100ms", "1m30s"); a
// negative one is an error. A duration or count left out, or zero, means
// the supervisor's default. health_cmd is an array (argv); a string is
// an error, since an argv split of a string would have to guess at
// quoting: write ["sh", "-c", "..."] for a shell command. In args, env
// values and health_cmd, "%i" is the worker's slot number and "%%" a
// literal "%"; any other "%" is an error. An env key may not begin with
// PAIRVISOR_, the supervisor's own variables.
//
// # Errors
//
// Parse reports every problem it finds, not only the first, sorted by
// line, each naming the file, the line and the key:
//
//	pairvisor.toml:12: programs.web: unknown key "wrokers" (did you mean "workers"?)
//	pairvisor.toml:7: programs.db.workers: must be at least 1, got 0
//	pairvisor.toml:9: programs.db.workers: must be an integer, got string "two"
//	pairvisor.toml:20: programs.web.after: no program named "dbb"
//	pairvisor.toml:20: programs.web.after: dependency cycle: web -> api -> web
//
// A file that is not valid TOML gets only its syntax error, with line
// and column ("pairvisor.toml:3:11: expected ..."); a file larger than
// 1 MiB, only that. See [Error] and [Errors].
package config
