package config

import "fmt"

// checkExpand reports a "%" in s that is neither "%i" nor "%%": the
// escapes the supervisor expands for each worker slot (its Config.Args,
// Env values and HealthCmd; see the supervisor package).
func checkExpand(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			continue
		}
		if i+1 == len(s) {
			return fmt.Errorf(`ends in a lone "%%" (write "%%%%" for a literal %%)`)
		}
		if c := s[i+1]; c != 'i' && c != '%' {
			return fmt.Errorf(`unknown escape %q: "%%i" is the worker's slot number and "%%%%" a literal %%`, s[i:i+2])
		}
		i++
	}
	return nil
}
