package config

import (
	"fmt"
	"strconv"
	"strings"
)

// Expand returns s with each "%i" replaced by slot (the worker's slot
// number, 1 to Workers) and each "%%" by "%". Any other "%" is left as
// it is; [Parse] accepts no other, so in a value from a parsed file
// there is none.
func Expand(s string, slot int) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	n := strconv.Itoa(slot)
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+1 < len(s) {
			switch s[i+1] {
			case 'i':
				b.WriteString(n)
				i++
				continue
			case '%':
				b.WriteByte('%')
				i++
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// checkExpand reports a "%" in s that is neither "%i" nor "%%".
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

// ForSlot returns p as worker slot (1 to p.Workers) runs it: a copy with
// [Expand] applied to Args, the values of Env and HealthCmd.
func (p Program) ForSlot(slot int) Program {
	ex := func(in []string, f func(string) string) []string {
		if in == nil {
			return nil
		}
		out := make([]string, len(in))
		for i, s := range in {
			out[i] = f(s)
		}
		return out
	}
	value := func(s string) string { return Expand(s, slot) }
	p.Args = ex(p.Args, value)
	p.HealthCmd = ex(p.HealthCmd, value)
	p.Env = ex(p.Env, func(kv string) string {
		k, v, _ := strings.Cut(kv, "=")
		return k + "=" + Expand(v, slot)
	})
	p.After = append([]string(nil), p.After...)
	return p
}
