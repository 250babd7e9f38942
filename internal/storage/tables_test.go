package storage

import (
	"sort"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/dm"
)

const testUUID = "9426fc3b-40d0-4ed2-bb2d-8e2348b5c030"

// TestTables pins every table string. The integrity and crypt tables follow
// cryptsetup's get_dm_integrity_params / get_dm_crypt_params option order.
func TestTables(t *testing.T) {
	desc := KeyDescription(testUUID)
	tests := []struct {
		name string
		got  dm.Target
		want string
	}{
		{"crypt without integrity", CryptTarget(LayoutNone, KeyringRef(64, desc), "254:3", 16<<20, 4161536),
			"0 4161536 crypt aes-xts-plain64 :64:logon:cvmboot:9426fc3b-40d0-4ed2-bb2d-8e2348b5c030-d0 0 254:3 32768 1 sector_size:4096"},
		{"crypt over hmac-sha256 integrity", CryptTarget(LayoutHMACSHA256, KeyringRef(96, desc), "253:0", 0, 16484472),
			"0 16484472 crypt capi:authenc(hmac(sha256),xts(aes))-plain64 :96:logon:cvmboot:9426fc3b-40d0-4ed2-bb2d-8e2348b5c030-d0 0 253:0 0 2 sector_size:4096 integrity:32:aead"},
		{"crypt over aead integrity", CryptTarget(LayoutAEAD, KeyringRef(32, desc), "253:0", 0, 4096),
			"0 4096 crypt capi:gcm(aes)-random :32:logon:cvmboot:9426fc3b-40d0-4ed2-bb2d-8e2348b5c030-d0 0 253:0 0 2 sector_size:4096 integrity:28:aead"},
		{"integrity", IntegrityTarget("254:0", 16<<20, 32, 16484472),
			"0 16484472 integrity 254:0 32768 32 D 3 block_size:4096 fix_padding fix_hmac"},
		{"integrity format", IntegrityFormatTarget("254:0", 16<<20, 28),
			"0 8 integrity 254:0 32768 28 D 4 journal_sectors:8 block_size:4096 fix_padding fix_hmac"},
	}
	for _, tt := range tests {
		if got := tt.got.String(); got != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, got, tt.want)
		}
	}
	for got, want := range map[string]string{
		CryptUUID(testUUID, DeviceName):     "CRYPT-LUKS2-9426fc3b40d04ed2bb2d8e2348b5c030-cvmboot-storage",
		IntegrityUUID(testUUID, DeviceName): "CRYPT-SUBDEV-9426fc3b40d04ed2bb2d8e2348b5c030-cvmboot-storage_dif",
		IntegrityName(DeviceName):           "cvmboot-storage_dif",
	} {
		if got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
}

// kernelTables are `dmsetup table` lines of a volume cryptsetup 2.6.1 made
// (luksFormat --integrity hmac-sha256 --integrity-no-wipe --sector-size 4096,
// open --integrity-no-journal) under the Debian 6.1 kernel. The kernel
// prints options in its own order and adds its defaults; the crypt line
// and the integrity line's mode, tag size and block size must match ours.
var kernelTables = map[string]string{
	"lab":     "0 16484472 crypt capi:authenc(hmac(sha256),xts(aes))-plain64 :96:logon:cryptsetup:9426fc3b-40d0-4ed2-bb2d-8e2348b5c030-d0 0 253:0 0 2 integrity:32:aead sector_size:4096",
	"lab_dif": "0 16484472 integrity 254:0 32768 32 D 5 block_size:4096 journal_sectors:130944 interleave_sectors:32768 buffer_sectors:128 fix_padding",
}

// normalize sorts a table's optional arguments after their count and drops
// the kernel's echoed defaults, so tables compare by content.
func normalize(line string, fixed int, drop ...string) string {
	f := strings.Fields(line)
	head, opts := f[:fixed], f[fixed+1:]
	var kept []string
	for _, o := range opts {
		keep := true
		for _, d := range drop {
			keep = keep && !strings.HasPrefix(o, d)
		}
		if keep {
			kept = append(kept, o)
		}
	}
	sort.Strings(kept)
	return strings.Join(head, " ") + " | " + strings.Join(kept, " ")
}

func TestTablesMatchCryptsetup(t *testing.T) {
	crypt := CryptTarget(LayoutHMACSHA256, KeyringRef(96, "cryptsetup:"+testUUID+"-d0"), "253:0", 0, 16484472).String()
	if got, want := normalize(crypt, 8), normalize(kernelTables["lab"], 8); got != want {
		t.Errorf("crypt table differs from cryptsetup's:\n got %s\nwant %s", got, want)
	}
	integrity := IntegrityTarget("254:0", 16<<20, 32, 16484472).String()
	// fix_hmac only matters with internal hashes, so the kernel does not
	// echo it; the others are its defaults.
	drop := []string{"journal_sectors:", "interleave_sectors:", "buffer_sectors:", "fix_hmac"}
	if got, want := normalize(integrity, 7, drop...), normalize(kernelTables["lab_dif"], 7, drop...); got != want {
		t.Errorf("integrity table differs from cryptsetup's:\n got %s\nwant %s", got, want)
	}
}

func TestLayoutFor(t *testing.T) {
	for in, want := range map[string]Layout{"hmac-sha256": LayoutHMACSHA256, "": LayoutHMACSHA256, "aead": LayoutAEAD, "off": LayoutNone} {
		got, err := LayoutFor(configIntegrity(in))
		if err != nil || got != want {
			t.Errorf("LayoutFor(%q) = %+v, %v", in, got, err)
		}
	}
	if _, err := LayoutFor("hmac-sha512"); err == nil {
		t.Error("LayoutFor(hmac-sha512) succeeded")
	}
}

func configIntegrity(s string) config.Integrity { return config.Integrity(s) }
