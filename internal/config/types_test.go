package config

import (
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    Size
		wantErr string
	}{
		{"0", 0, ""},
		{"1", 1, ""},
		{"1B", 1, ""},
		{"1b", 1, ""},
		{"1K", KiB, ""},
		{"1KiB", KiB, ""},
		{"1kib", KiB, ""},
		{"512M", 512 * MiB, ""},
		{"512MiB", 512 * MiB, ""},
		{"1G", GiB, ""},
		{"1 GiB", GiB, ""},
		{"3TiB", 3 * TiB, ""},
		{"16777215TiB", 16777215 * TiB, ""},
		{"18446744073709551615", 1<<64 - 1, ""},
		{"", 0, `"" is not a size (like 512MiB, 1GiB; a plain number is bytes)`},
		{"GiB", 0, `"GiB" is not a size (like 512MiB, 1GiB; a plain number is bytes)`},
		{"1GB", 0, `"1GB" is not a size (like 512MiB, 1GiB; a plain number is bytes)`},
		{"1.5GiB", 0, `"1.5GiB" is not a size (like 512MiB, 1GiB; a plain number is bytes)`},
		{"+1", 0, `"+1" is not a size (like 512MiB, 1GiB; a plain number is bytes)`},
		{"0x10", 0, `"0x10" is not a size (like 512MiB, 1GiB; a plain number is bytes)`},
		{"1\u212a", 0, "\"1\u212a\"" + ` is not a size (like 512MiB, 1GiB; a plain number is bytes)`},
		{"16777216TiB", 0, `"16777216TiB" is too large (at most 16EiB)`},
		{"18446744073709551616", 0, `"18446744073709551616" is too large (at most 16EiB)`},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("ParseSize(%q) error = %v, want %s", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestSizeString(t *testing.T) {
	tests := []struct {
		in   Size
		want string
	}{
		{0, "0B"}, {1, "1B"}, {1000, "1000B"}, {KiB, "1KiB"}, {1536 * KiB, "1536KiB"},
		{1536 * MiB, "1536MiB"}, {GiB, "1GiB"}, {1024 * TiB, "1024TiB"}, {1<<64 - 1, "18446744073709551615B"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("Size(%d).String() = %q, want %q", uint64(tt.in), got, tt.want)
		}
		if back, err := ParseSize(tt.in.String()); err != nil || back != tt.in {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in.String(), back, err, tt.in)
		}
	}
}

func TestSizeOrPercent(t *testing.T) {
	tests := []struct {
		in      string
		want    SizeOrPercent
		text    string
		tmpfs   string
		of8GiB  uint64
		wantErr string
	}{
		{"50%", SizeOrPercent{Percent: 50}, "50%", "50%", 4 << 30, ""},
		{"1%", SizeOrPercent{Percent: 1}, "1%", "1%", (8 << 30) / 100, ""},
		{"100%", SizeOrPercent{Percent: 100}, "100%", "100%", 8 << 30, ""},
		{"2GiB", SizeOrPercent{Bytes: 2 * GiB}, "2GiB", "2147483648", 2 << 30, ""},
		{"0%", SizeOrPercent{}, "", "", 0, `"0%" is out of range (1% to 100%)`},
		{"101%", SizeOrPercent{}, "", "", 0, `"101%" is out of range (1% to 100%)`},
		{"%", SizeOrPercent{}, "", "", 0, `"%" is not a percentage of RAM or a size (like 50%, 512MiB)`},
		{"+5%", SizeOrPercent{}, "", "", 0, `"+5%" is not a percentage of RAM or a size (like 50%, 512MiB)`},
		{"5.5%", SizeOrPercent{}, "", "", 0, `"5.5%" is not a percentage of RAM or a size (like 50%, 512MiB)`},
		{"lots", SizeOrPercent{}, "", "", 0, `"lots" is not a percentage of RAM or a size (like 50%, 512MiB)`},
	}
	for _, tt := range tests {
		got, err := ParseSizeOrPercent(tt.in)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("ParseSizeOrPercent(%q) error = %v, want %s", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseSizeOrPercent(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			continue
		}
		if s := got.String(); s != tt.text {
			t.Errorf("%q: String() = %q, want %q", tt.in, s, tt.text)
		}
		if s := got.TmpfsOption(); s != tt.tmpfs {
			t.Errorf("%q: TmpfsOption() = %q, want %q", tt.in, s, tt.tmpfs)
		}
		if n := got.Resolve(8 << 30); n != tt.of8GiB {
			t.Errorf("%q: Resolve(8GiB) = %d, want %d", tt.in, n, tt.of8GiB)
		}
	}
	// Percentages of huge totals must not overflow.
	if got := (SizeOrPercent{Percent: 100}).Resolve(1<<64 - 1); got != 1<<64-1 {
		t.Errorf("100%% of max = %d", got)
	}
}

func TestDurationString(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{0, "0s"}, {30 * time.Second, "30s"}, {2 * time.Minute, "2m"}, {90 * time.Second, "90s"},
		{3 * time.Hour, "3h"}, {1500 * time.Millisecond, "1.5s"}, {-time.Minute, "-1m"}, {time.Nanosecond, "1ns"},
	}
	for _, tt := range tests {
		d := Duration(tt.in)
		if got := d.String(); got != tt.want {
			t.Errorf("Duration(%v).String() = %q, want %q", tt.in, got, tt.want)
		}
		var back Duration
		if err := back.UnmarshalText([]byte(d.String())); err != nil || back != d {
			t.Errorf("UnmarshalText(%q) = %v, %v", d.String(), back, err)
		}
		if d.Std() != tt.in {
			t.Errorf("Std() = %v, want %v", d.Std(), tt.in)
		}
	}
}

func TestGUID(t *testing.T) {
	g, err := ParseGUID("0FC63DAF-8483-4772-8e79-3d69d8477de4")
	if err != nil || g != linuxDataGUID {
		t.Fatalf("ParseGUID = %x, %v; want %x", g, err, linuxDataGUID)
	}
	if s := g.String(); s != "0fc63daf-8483-4772-8e79-3d69d8477de4" {
		t.Errorf("String() = %q", s)
	}
	for _, bad := range []string{
		"", "0fc63daf-8483-4772-8e79-3d69d8477de", "0fc63daf-8483-4772-8e79-3d69d8477de4x",
		"0fc63daf+8483-4772-8e79-3d69d8477de4", "0fc63daf-8483-4772-8e79-3d69d8477dg4",
		"{0fc63daf-8483-4772-8e79-3d69d8477de}", "0fc63daf84834772-8e79-3d69d8477de4---",
	} {
		if _, err := ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(%q) succeeded", bad)
		}
	}
	if !(GUID{}).IsZero() || linuxDataGUID.IsZero() {
		t.Error("IsZero is wrong")
	}
}

func TestHexBytes(t *testing.T) {
	var h HexBytes
	if err := h.UnmarshalText([]byte("DEADbeef")); err != nil || h.String() != "deadbeef" {
		t.Errorf("UnmarshalText(DEADbeef) = %q, %v", h.String(), err)
	}
	if err := h.UnmarshalText(nil); err != nil || h != nil {
		t.Errorf("UnmarshalText(empty) = %#v, %v; want nil", h, err)
	}
	for _, bad := range []string{"a", "0x00", "zz", "00 11"} {
		if err := h.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("UnmarshalText(%q) succeeded", bad)
		}
	}
}
