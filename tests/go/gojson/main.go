// Command gojson is Go's own encoding/json at work on damocles-manager's sector state, the
// referee of vsm-pool's Go JSON codec (tests/gojson/). Standard library only.
//
//	gojson fixtures    writes named states built in Go, one "name<TAB>json" line each
//	gojson roundtrip   reads JSON lines on stdin; for each decodes it as damocles'
//	                   `sectors state import-json` does (json.Unmarshal into *core.SectorState)
//	                   and writes "ok<TAB>json.Marshal(state)", "null<TAB>" (the line was
//	                   null: damocles gets a nil state) or "err<TAB>Go's error text"
//
// Go 1.22 changed one thing in what json.Marshal writes here: '\b' and '\f' inside strings
// became \b and \f (before: \u0008, \u000c). damocles-manager is built with Go >= 1.24, so
// an older toolchain's output gets that one change applied (go122Escapes) before it is
// written, and the bytes are those of damocles.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gojson fixtures|roundtrip")
		os.Exit(2)
	}
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	defer out.Flush()
	switch os.Args[1] {
	case "fixtures":
		for _, f := range fixtures() {
			b, err := json.Marshal(f.state)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", f.name, err)
				os.Exit(1)
			}
			fmt.Fprintf(out, "%s\t%s\n", f.name, go122Escapes(b))
		}
	case "roundtrip":
		in := bufio.NewScanner(os.Stdin)
		in.Buffer(make([]byte, 1<<20), 1<<26)
		for in.Scan() {
			var state *SectorState
			if err := json.Unmarshal(in.Bytes(), &state); err != nil {
				fmt.Fprintf(out, "err\t%s\n", strings.ReplaceAll(err.Error(), "\n", " "))
				continue
			}
			if state == nil {
				fmt.Fprint(out, "null\t\n")
				continue
			}
			b, err := json.Marshal(*state) // as damocles' StateManager.save: the value
			if err != nil {
				fmt.Fprintf(out, "err\tmarshal: %s\n", err)
				continue
			}
			fmt.Fprintf(out, "ok\t%s\n", go122Escapes(b))
		}
		if err := in.Err(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: gojson fixtures|roundtrip")
		os.Exit(2)
	}
}

// go122Escapes rewrites \u0008 and \u000c escapes as \b and \f when this toolchain is older
// than Go 1.22 (a backslash escaping a backslash is skipped, so only real escapes change).
func go122Escapes(b []byte) []byte {
	if !before122() || !bytes.Contains(b, []byte(`\u000`)) {
		return b
	}
	var out bytes.Buffer
	for i := 0; i < len(b); i++ {
		if b[i] == '\\' && i+1 < len(b) {
			if b[i+1] == 'u' && i+6 <= len(b) {
				switch string(b[i+2 : i+6]) {
				case "0008":
					out.WriteString(`\b`)
					i += 5
					continue
				case "000c":
					out.WriteString(`\f`)
					i += 5
					continue
				}
			}
			out.WriteByte(b[i])
			out.WriteByte(b[i+1])
			i++
			continue
		}
		out.WriteByte(b[i])
	}
	return out.Bytes()
}

func before122() bool {
	v := strings.TrimPrefix(runtime.Version(), "go")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return false // a development build: assume current
	}
	major, _ := strconv.Atoi(parts[0])
	minor, _ := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return major == 1 && minor < 22
}
