package kmod

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/kmod/kmodtest"
)

func TestReadModinfo(t *testing.T) {
	good := kmodtest.Module("dm_verity", []string{"dm-mod", "dm_bufio", "reed_solomon"}, "softdep=pre: crc32c post: foo")

	// Same module with a section header entry size larger than 64, as the ELF spec allows.
	wide := func() []byte {
		b := slices.Clone(good)
		shoff := binary.LittleEndian.Uint64(b[40:])
		var out bytes.Buffer
		out.Write(b[:shoff])
		for i := range 3 {
			out.Write(b[shoff+uint64(i)*64 : shoff+uint64(i+1)*64])
			out.Write(make([]byte, 16))
		}
		r := out.Bytes()
		binary.LittleEndian.PutUint16(r[58:], 80)
		return r
	}()

	patch := func(off int, v uint64, size int) []byte {
		b := slices.Clone(good)
		switch size {
		case 2:
			binary.LittleEndian.PutUint16(b[off:], uint16(v))
		case 8:
			binary.LittleEndian.PutUint64(b[off:], v)
		}
		return b
	}
	shoff := int(binary.LittleEndian.Uint64(good[40:]))

	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{name: "valid", data: good},
		{name: "wide section headers", data: wide},
		{name: "empty", data: nil, wantErr: "not an ELF file: 0 bytes"},
		{name: "not ELF", data: bytes.Repeat([]byte("x"), 100), wantErr: "magic"},
		{name: "bad class", data: func() []byte { b := slices.Clone(good); b[4] = 3; return b }(), wantErr: "ELF class 3"},
		{name: "bad data encoding", data: func() []byte { b := slices.Clone(good); b[5] = 0; return b }(), wantErr: "data encoding 0"},
		{name: "no section table", data: patch(40, 0, 8), wantErr: "no section table"},
		{name: "section table past end", data: patch(40, 1<<40, 8), wantErr: "outside"},
		{name: "too many sections", data: patch(60, 0xfff0, 2), wantErr: "runs past the end"},
		{name: "name table index out of range", data: patch(62, 7, 2), wantErr: "name table index 7"},
		{name: "small shentsize", data: patch(58, 32, 2), wantErr: "section header size 32"},
		{name: "modinfo past end", data: patch(shoff+64+32, 1<<20, 8), wantErr: ".modinfo section"},
		{name: "no modinfo", data: kmodtest.ELF(), wantErr: ""}, // empty section: valid, no fields
		{name: "renamed section", data: func() []byte {
			b := slices.Clone(good)
			i := bytes.Index(b, []byte(".modinfo\x00"))
			b[i+1] = 'X'
			return b
		}(), wantErr: "no .modinfo section"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := ReadModinfo(bytes.NewReader(tt.data), int64(len(tt.data)))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.name == "valid" || tt.name == "wide section headers" {
				if info.Name != "dm_verity" {
					t.Errorf("name = %q, want dm_verity", info.Name)
				}
				if want := []string{"dm_mod", "dm_bufio", "reed_solomon"}; !slices.Equal(info.Depends, want) {
					t.Errorf("depends = %q, want %q", info.Depends, want)
				}
				if !slices.Equal(info.SoftPre, []string{"crc32c"}) || !slices.Equal(info.SoftPost, []string{"foo"}) {
					t.Errorf("softdep pre %q post %q, want [crc32c] [foo]", info.SoftPre, info.SoftPost)
				}
				if got := info.Fields["vermagic"]; len(got) != 1 || !strings.HasPrefix(got[0], "6.1.0-test") {
					t.Errorf("vermagic = %q", got)
				}
			}
		})
	}
}

func TestParseModinfo(t *testing.T) {
	tests := []struct {
		name     string
		data     string
		wantName string
		wantDeps []string
		wantPre  []string
		wantErr  string
	}{
		{name: "no depends", data: "name=overlay\x00depends=\x00", wantName: "overlay"},
		{name: "padding and junk", data: "\x00\x00name=a-b\x00noequals\x00=x\x00depends=c,,d-e,c\x00\x00", wantName: "a_b", wantDeps: []string{"c", "d_e"}},
		{name: "softdep without marker ignored", data: "softdep=gcm ccm\x00", wantPre: nil},
		{name: "softdep pre and post", data: "softdep=pre: crypto-md5 crc32 post: x\x00softdep=pre: crc32\x00", wantPre: []string{"crypto_md5", "crc32"}},
		{name: "bad name", data: "name=a b\x00", wantErr: "not a valid module name"},
		{name: "bad depends", data: "depends=ok,../evil\x00", wantErr: `"../evil" is not a valid module name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := ParseModinfo([]byte(tt.data))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if info.Name != tt.wantName || !slices.Equal(info.Depends, tt.wantDeps) || !slices.Equal(info.SoftPre, tt.wantPre) {
				t.Errorf("got name %q depends %q pre %q, want %q %q %q", info.Name, info.Depends, info.SoftPre, tt.wantName, tt.wantDeps, tt.wantPre)
			}
		})
	}
}

func TestNameFromPath(t *testing.T) {
	tests := []struct {
		path string
		want string
		ok   bool
	}{
		{"kernel/drivers/md/dm-verity.ko", "dm_verity", true},
		{"kernel/drivers/md/dm-verity.ko.xz", "dm_verity", true},
		{"a/virtio_blk.ko.zst", "virtio_blk", true},
		{"x.ko.gz", "x", true},
		{"modules.dep", "", false},
		{"kernel/.ko", "", false},
		{"kernel/foo.ko.bz2", "", false},
	}
	for _, tt := range tests {
		got, ok := NameFromPath(tt.path)
		if got != tt.want || ok != tt.ok {
			t.Errorf("NameFromPath(%q) = %q, %v; want %q, %v", tt.path, got, ok, tt.want, tt.ok)
		}
	}
}
