// Package mount does the early-boot mounts of the cvmboot agent: the API
// file systems, the read-only root, and the PID 1 hand-off (switch_root).
package mount

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// MountInfo is one line of /proc/self/mountinfo (see proc(5)).
type MountInfo struct {
	ID           int
	ParentID     int
	Major, Minor uint32
	Root         string // path of the mount's root within its file system
	MountPoint   string
	Options      string   // per-mount options
	Optional     []string // shared:N, master:N, propagate_from:N, unbindable
	FSType       string
	Source       string
	SuperOptions string
}

// maxMountinfoLine bounds one line; mount points are at most PATH_MAX
// (escaped up to 4×) plus options.
const maxMountinfoLine = 64 * 1024

// ParseMountInfo parses the mountinfo format. Octal escapes (\040 space,
// \011 tab, \012 newline, \134 backslash) are decoded.
func ParseMountInfo(r io.Reader) ([]MountInfo, error) {
	var out []MountInfo
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxMountinfoLine)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		mi, err := parseMountInfoLine(line)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
		out = append(out, mi)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	return out, nil
}

func parseMountInfoLine(line string) (MountInfo, error) {
	var mi MountInfo
	f := strings.Fields(line)
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 7 || sep < 0 || len(f) < sep+3 {
		return mi, fmt.Errorf("%q: expected 'ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE [SUPEROPTIONS]'", line)
	}
	var err error
	if mi.ID, err = strconv.Atoi(f[0]); err != nil {
		return mi, fmt.Errorf("%q: mount ID %q: %w", line, f[0], err)
	}
	if mi.ParentID, err = strconv.Atoi(f[1]); err != nil {
		return mi, fmt.Errorf("%q: parent ID %q: %w", line, f[1], err)
	}
	maj, min, ok := strings.Cut(f[2], ":")
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return mi, fmt.Errorf("%q: device %q is not MAJOR:MINOR", line, f[2])
	}
	mi.Major, mi.Minor = uint32(a), uint32(b)
	mi.Root = unescapeOctal(f[3])
	mi.MountPoint = unescapeOctal(f[4])
	mi.Options = f[5]
	mi.Optional = f[6:sep]
	mi.FSType = unescapeOctal(f[sep+1])
	mi.Source = unescapeOctal(f[sep+2])
	if len(f) > sep+3 {
		mi.SuperOptions = f[sep+3]
	}
	return mi, nil
}

// unescapeOctal decodes the kernel's \NNN escapes; malformed escapes are
// kept literally.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] >= '0' && s[i+1] <= '3' && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// ReadMountInfo reads and parses a mountinfo file.
func ReadMountInfo(path string) ([]MountInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseMountInfo(f)
}

// Lookup returns the topmost mount on target (the last one listed, as later
// mounts stack over earlier ones), or nil when target is not a mount point.
func Lookup(mounts []MountInfo, target string) *MountInfo {
	target = filepath.Clean(target)
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].MountPoint == target {
			return &mounts[i]
		}
	}
	return nil
}
