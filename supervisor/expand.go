package supervisor

import (
	"strconv"
	"strings"
)

// expand returns s with "%i" replaced by the worker's slot number id
// and "%%" by "%"; any other "%" stays as it is. It is how Args, Env
// values and HealthCmd differ between copies of a program.
func expand(s string, id int) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+1 < len(s) {
			switch s[i+1] {
			case 'i':
				b.WriteString(strconv.Itoa(id))
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

// expandAll expands each of ss (see expand); for env entries "K=V" only
// V is expanded, since the name is not the user's to vary.
func expandAll(ss []string, id int, env bool) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		if k, v, ok := strings.Cut(s, "="); env && ok {
			out[i] = k + "=" + expand(v, id)
		} else {
			out[i] = expand(s, id)
		}
	}
	return out
}
