package harness

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Markers rootcheck prints around /run/cvmboot/report.json.
const (
	RootcheckReportBegin = "ROOTCHECK: REPORT BEGIN"
	RootcheckReportEnd   = "ROOTCHECK: REPORT END"
	CheckReportBegin     = "E2E-CHECK: REPORT BEGIN"
	CheckReportEnd       = "E2E-CHECK: REPORT END"
)

// kernelLine matches a printk line with a timestamp, which can land between
// the lines a program writes to the console.
var kernelLine = regexp.MustCompile(`^\[\s*\d+\.\d+\]`)

// ExtractReport returns the JSON document printed between the last begin and
// end marker lines of a serial log, with console noise (carriage returns,
// interleaved kernel messages) removed.
func ExtractReport(serial, begin, end string) (json.RawMessage, error) {
	lines := strings.Split(strings.ReplaceAll(serial, "\r", ""), "\n")
	last := -1
	for i, l := range lines {
		if strings.Contains(l, begin) {
			last = i
		}
	}
	if last < 0 {
		return nil, fmt.Errorf("serial log: no %q line", begin)
	}
	var body []string
	closed := false
	for _, l := range lines[last+1:] {
		if strings.Contains(l, end) {
			closed = true
			break
		}
		if kernelLine.MatchString(l) {
			continue
		}
		body = append(body, l)
	}
	if !closed {
		return nil, fmt.Errorf("serial log: %q without a following %q", begin, end)
	}
	doc := bytes.TrimSpace([]byte(strings.Join(body, "\n")))
	if !json.Valid(doc) {
		return nil, fmt.Errorf("serial log: text between %q and %q is not JSON: %q", begin, end, truncate(string(doc), 200))
	}
	return json.RawMessage(doc), nil
}

// PrettyJSON indents a JSON document for display.
func PrettyJSON(doc []byte) string {
	var b bytes.Buffer
	if err := json.Indent(&b, doc, "", "  "); err != nil {
		return string(doc)
	}
	return b.String()
}

var doneLine = regexp.MustCompile(`ROOTCHECK: DONE pass=(\d+) fail=(\d+)`)

// RootcheckDone returns the counts from rootcheck's final line; ok is false
// when rootcheck never finished.
func RootcheckDone(serial string) (pass, fail int, ok bool) {
	m := doneLine.FindAllStringSubmatch(serial, -1)
	if len(m) == 0 {
		return 0, 0, false
	}
	last := m[len(m)-1]
	pass, err1 := strconv.Atoi(last[1])
	fail, err2 := strconv.Atoi(last[2])
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return pass, fail, true
}

// LinesWithPrefix returns the console lines containing prefix, trimmed of
// what precedes it (console lines can carry a partial kernel message first).
func LinesWithPrefix(serial, prefix string) []string {
	var out []string
	for _, l := range strings.Split(strings.ReplaceAll(serial, "\r", ""), "\n") {
		if i := strings.Index(l, prefix); i >= 0 {
			out = append(out, l[i:])
		}
	}
	return out
}

// Console markers that split a boot into phases.
var (
	kernelStartLine = regexp.MustCompile(`Linux version \d`)
	initrdStartLine = regexp.MustCompile(`Run /init as init process`)
)

// PhaseSummary splits a boot by the arrival time of console lines: firmware
// (OVMF and the UKI stub) until the kernel's first line, kernel until it runs
// /init, and the rest (initramfs, root, poweroff). Phases whose marker never
// appeared are left out.
func (r *BootResult) PhaseSummary() string {
	k, okK := r.FirstLine(kernelStartLine)
	if !okK {
		return fmt.Sprintf("no kernel output within %.1fs", r.Duration.Seconds())
	}
	out := fmt.Sprintf("firmware+UKI %.1fs", k.At.Seconds())
	i, okI := r.FirstLine(initrdStartLine)
	if !okI {
		return out + fmt.Sprintf(", kernel (no /init) %.1fs", (r.Duration-k.At).Seconds())
	}
	return out + fmt.Sprintf(", kernel %.1fs, /init to exit %.1fs", (i.At-k.At).Seconds(), (r.Duration-i.At).Seconds())
}

// ExtractFiles returns the files rootcheck printed with rootcheck.dump=DIR ("ROOTCHECK: FILE
// BEGIN path size", base64 lines, "ROOTCHECK: FILE END path"), keyed by their guest path.
// Interleaved kernel messages are skipped; a size mismatch is an error.
func ExtractFiles(serial string) (map[string][]byte, error) {
	files := map[string][]byte{}
	var cur string
	var size int
	var b64 strings.Builder
	for _, l := range strings.Split(strings.ReplaceAll(serial, "\r", ""), "\n") {
		_, rest, ok := strings.Cut(l, "ROOTCHECK: ")
		if !ok || kernelLine.MatchString(l) {
			continue
		}
		switch {
		case strings.HasPrefix(rest, "FILE BEGIN "):
			f := strings.Fields(strings.TrimPrefix(rest, "FILE BEGIN "))
			if len(f) != 2 {
				return nil, fmt.Errorf("serial log: bad line %q", l)
			}
			cur, b64 = f[0], strings.Builder{}
			if _, err := fmt.Sscan(f[1], &size); err != nil {
				return nil, fmt.Errorf("serial log: bad size in %q", l)
			}
		case strings.HasPrefix(rest, "B64 ") && cur != "":
			b64.WriteString(strings.TrimPrefix(rest, "B64 "))
		case strings.HasPrefix(rest, "FILE END ") && cur != "":
			data, err := base64.StdEncoding.DecodeString(b64.String())
			if err != nil || len(data) != size {
				return nil, fmt.Errorf("serial log: file %s: %d bytes decoded (%v), %d announced", cur, len(data), err, size)
			}
			files[cur], cur = data, ""
		}
	}
	if cur != "" {
		return nil, fmt.Errorf("serial log: file %s not finished", cur)
	}
	return files, nil
}
