package mount

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseMountInfo(t *testing.T) {
	tests := []struct {
		name string
		line string
		want MountInfo
		err  string
	}{
		{
			name: "root ext4 no optional fields",
			line: "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard",
			want: MountInfo{ID: 27, ParentID: 1, Major: 254, Minor: 0, Root: "/", MountPoint: "/", Options: "rw,relatime",
				Optional: []string{}, FSType: "ext4", Source: "/dev/vda", SuperOptions: "rw,discard"},
		},
		{
			name: "shared proc",
			line: "22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw",
			want: MountInfo{ID: 22, ParentID: 27, Major: 0, Minor: 21, Root: "/", MountPoint: "/proc", Options: "rw,nosuid,nodev,noexec,relatime",
				Optional: []string{"shared:5"}, FSType: "proc", Source: "proc", SuperOptions: "rw"},
		},
		{
			name: "escaped space and two optional fields",
			line: `36 35 98:0 /mnt1 /mnt/my\040disk rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue`,
			want: MountInfo{ID: 36, ParentID: 35, Major: 98, Minor: 0, Root: "/mnt1", MountPoint: "/mnt/my disk", Options: "rw,noatime",
				Optional: []string{"master:1", "shared:7"}, FSType: "ext3", Source: "/dev/root", SuperOptions: "rw,errors=continue"},
		},
		{
			name: "escaped tab newline backslash",
			line: `40 27 0:50 / /tmp/a\011b\012c\134d rw - tmpfs my\040src rw`,
			want: MountInfo{ID: 40, ParentID: 27, Major: 0, Minor: 50, Root: "/", MountPoint: "/tmp/a\tb\nc\\d", Options: "rw",
				Optional: []string{}, FSType: "tmpfs", Source: "my src", SuperOptions: "rw"},
		},
		{
			name: "no super options",
			line: "41 27 0:51 / /x rw - tmpfs none",
			want: MountInfo{ID: 41, ParentID: 27, Major: 0, Minor: 51, Root: "/", MountPoint: "/x", Options: "rw", Optional: []string{}, FSType: "tmpfs", Source: "none"},
		},
		{
			name: "malformed escape kept",
			line: `42 27 0:52 / /y\04 rw - tmpfs \999 rw`,
			want: MountInfo{ID: 42, ParentID: 27, Major: 0, Minor: 52, Root: "/", MountPoint: `/y\04`, Options: "rw", Optional: []string{}, FSType: "tmpfs", Source: `\999`, SuperOptions: "rw"},
		},
		{name: "no separator", line: "22 27 0:21 / /proc rw shared:5 proc proc rw", err: "expected"},
		{name: "separator too early", line: "22 27 0:21 / - proc proc", err: "expected"},
		{name: "no source", line: "22 27 0:21 / /proc rw - proc", err: "expected"},
		{name: "bad id", line: "x 27 0:21 / /proc rw - proc proc rw", err: "mount ID"},
		{name: "bad parent", line: "1 y 0:21 / /proc rw - proc proc rw", err: "parent ID"},
		{name: "bad device", line: "1 2 021 / /proc rw - proc proc rw", err: "MAJOR:MINOR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseMountInfo(strings.NewReader(tc.line + "\n"))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || !reflect.DeepEqual(got[0], tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestLookupStacked(t *testing.T) {
	in := "1 0 0:1 / / rw - rootfs rootfs rw\n" +
		"20 1 0:20 / /dev rw - tmpfs tmpfs rw\n" +
		"21 1 0:21 / /dev rw - devtmpfs devtmpfs rw\n" +
		"\n" +
		"22 21 0:22 / /dev/pts rw - devpts devpts rw\n"
	mounts, err := ParseMountInfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if mi := Lookup(mounts, "/dev/"); mi == nil || mi.FSType != "devtmpfs" {
		t.Errorf("Lookup(/dev) = %+v, want the top (devtmpfs) mount", mi)
	}
	if mi := Lookup(mounts, "/run"); mi != nil {
		t.Errorf("Lookup(/run) = %+v", mi)
	}
}

func TestReadMountInfoSelf(t *testing.T) {
	mounts, err := ReadMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	if Lookup(mounts, "/") == nil || Lookup(mounts, "/proc") == nil {
		t.Errorf("/ or /proc missing from %d mounts", len(mounts))
	}
	if _, err := ReadMountInfo("/nonexistent/mountinfo"); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}

func FuzzMountInfo(f *testing.F) {
	f.Add("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n")
	f.Add(`36 35 98:0 /mnt1 /mnt/my\040disk rw,noatime master:1 shared:7 - ext3 /dev/root rw` + "\n")
	f.Add("1 0 0:1 / / rw - rootfs rootfs rw\n\n22 21 0:22 / /dev/pts rw - devpts devpts\n")
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, s string) {
		mounts, err := ParseMountInfo(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, m := range mounts {
			if m.FSType == "" || m.Source == "" || m.MountPoint == "" {
				t.Fatalf("accepted incomplete entry %+v", m)
			}
		}
		_ = Lookup(mounts, "/")
	})
}

func TestUnescapeOctal(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:        "plain",
		`a\040b`:       "a b",
		`\134\134`:     `\\`,
		`end\04`:       `end\04`,
		`\400`:         `\400`,
		`\0000`:        "\x000",
		`x\`:           `x\`,
		`\101\102\103`: "ABC",
	} {
		if got := unescapeOctal(in); got != want {
			t.Errorf("unescapeOctal(%q) = %q, want %q", in, got, want)
		}
	}
}
