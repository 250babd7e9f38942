package storage

import (
	"fmt"
	"strings"

	"github.com/cvmboot/cvmboot/internal/dm"
)

// Sector counts in tables are 512-byte units whatever the encryption sector.
const sectorBytes = 512

// EncryptionSectorSize is the dm-crypt sector and the dm-integrity block.
const EncryptionSectorSize = 4096

// Layout is one encryption setup: what the LUKS2 header records and what
// the device-mapper tables say. See the package documentation for why each
// config value maps to these.
type Layout struct {
	Cipher        string // LUKS2 segment encryption
	LUKSIntegrity string // LUKS2 segment integrity type; "" for none
	KeySize       int    // volume key bytes (encryption key ‖ MAC key)
	// TagSize is the dm-integrity tag per sector; 0 without integrity.
	TagSize int
	// CryptCipher is the dm-crypt cipher specification.
	CryptCipher string
}

// HasIntegrity reports whether the layout stacks dm-crypt on dm-integrity.
func (l Layout) HasIntegrity() bool { return l.TagSize > 0 }

// Layouts by storage.integrity.
var (
	// LayoutNone: plain aes-xts-plain64 with a 512-bit key (AES-256).
	LayoutNone = Layout{Cipher: "aes-xts-plain64", KeySize: 64, CryptCipher: "aes-xts-plain64"}
	// LayoutHMACSHA256: aes-xts-plain64 authenticated by HMAC-SHA256 over
	// each sector, tags in dm-integrity; key = 64 bytes XTS ‖ 32 bytes MAC.
	LayoutHMACSHA256 = Layout{Cipher: "aes-xts-plain64", LUKSIntegrity: "hmac(sha256)", KeySize: 96, TagSize: 32,
		CryptCipher: "capi:authenc(hmac(sha256),xts(aes))-plain64"}
	// LayoutAEAD: AES-256-GCM with a random 96-bit IV per sector write; the
	// 28-byte tag is the IV and the 16-byte GCM tag.
	LayoutAEAD = Layout{Cipher: "aes-gcm-random", LUKSIntegrity: "aead", KeySize: 32, TagSize: 28,
		CryptCipher: "capi:gcm(aes)-random"}
)

// KeyDescription is the kernel keyring description of a volume's key, in
// cryptsetup's form ("cryptsetup:<uuid>-d0") with our prefix.
func KeyDescription(luksUUID string) string { return "cvmboot:" + luksUUID + "-d0" }

// KeyringRef is the dm-crypt key parameter naming a logon key.
func KeyringRef(keySize int, desc string) string { return fmt.Sprintf(":%d:logon:%s", keySize, desc) }

// CryptUUID is the device-mapper UUID cryptsetup gives an active LUKS2
// volume: CRYPT-LUKS2-<uuid without dashes>-<name>. cryptsetup status and
// close recognise the volume by it.
func CryptUUID(luksUUID, name string) string {
	return "CRYPT-LUKS2-" + strings.ReplaceAll(luksUUID, "-", "") + "-" + name
}

// IntegrityName is the name of the dm-integrity device under name.
func IntegrityName(name string) string { return name + "_dif" }

// IntegrityUUID is the device-mapper UUID of the dm-integrity device under
// a LUKS2 volume (cryptsetup ≥ 2.7 uses the SUBDEV type; older versions
// compare only the uuid part, so both recognise it).
func IntegrityUUID(luksUUID, name string) string {
	return "CRYPT-SUBDEV-" + strings.ReplaceAll(luksUUID, "-", "") + "-" + IntegrityName(name)
}

// integrityOptions are the options cryptsetup passes for a LUKS2 volume
// with integrity, in its order: the block size is the encryption sector,
// fix_padding and fix_hmac are the current formats (kernel ≥ 5.11).
func integrityOptions() string {
	return fmt.Sprintf("3 block_size:%d fix_padding fix_hmac", EncryptionSectorSize)
}

// IntegrityTarget is the dm-integrity table over dev (MAJOR:MINOR) at
// offset bytes: no journal (mode D), external tags of tagSize bytes written
// by dm-crypt (no internal_hash), providedSectors from the superblock.
func IntegrityTarget(dev string, offset int64, tagSize int, providedSectors uint64) dm.Target {
	return IntegrityTargetMode(dev, offset, tagSize, providedSectors, 'D')
}

// IntegrityTargetMode is IntegrityTarget in mode D (direct, no journal) or J (journaled:
// a data sector and its tag are written together or not at all, what a volume that
// outlives a crash needs).
func IntegrityTargetMode(dev string, offset int64, tagSize int, providedSectors uint64, mode byte) dm.Target {
	return dm.Target{Start: 0, Length: providedSectors, Type: "integrity",
		Params: fmt.Sprintf("%s %d %d %c %s", dev, offset/sectorBytes, tagSize, mode, integrityOptions())}
}

// formatJournalSectors asks for the smallest journal (one section) when the
// superblock is formatted: the volume runs without journal (mode D), and
// the kernel writes the whole journal at format time (64 MiB on volumes of
// 8 GiB and more with the default size, 136 KiB with this; measured).
// cryptsetup opens such a volume in either mode.
const formatJournalSectors = 8

// IntegrityFormatTarget is the 8-sector temporary table that makes the
// kernel write a fresh dm-integrity superblock over the zeroed one and
// choose provided_data_sectors, as cryptsetup's INTEGRITY_format does.
// Options in cryptsetup's order (journal_sectors first).
func IntegrityFormatTarget(dev string, offset int64, tagSize int) dm.Target {
	return integrityFormatTarget(dev, offset, tagSize, formatJournalSectors)
}

// integrityFormatTarget formats with journalSectors of journal; 0 leaves the size to the
// kernel (its default, as cryptsetup's, for volumes that run in mode J).
func integrityFormatTarget(dev string, offset int64, tagSize, journalSectors int) dm.Target {
	if journalSectors == 0 {
		return dm.Target{Start: 0, Length: 8, Type: "integrity",
			Params: fmt.Sprintf("%s %d %d D 3 block_size:%d fix_padding fix_hmac", dev, offset/sectorBytes, tagSize, EncryptionSectorSize)}
	}
	return dm.Target{Start: 0, Length: 8, Type: "integrity",
		Params: fmt.Sprintf("%s %d %d D 4 journal_sectors:%d block_size:%d fix_padding fix_hmac",
			dev, offset/sectorBytes, tagSize, journalSectors, EncryptionSectorSize)}
}

// CryptTarget is the dm-crypt table: key is the key parameter (a keyring
// reference from KeyringRef), dev MAJOR:MINOR, offset bytes into dev,
// sectors 512-byte sectors. Options come in cryptsetup's order
// (get_dm_crypt_params): sector_size, then integrity.
func CryptTarget(l Layout, key, dev string, offset int64, sectors uint64) dm.Target {
	opts := []string{fmt.Sprintf("sector_size:%d", EncryptionSectorSize)}
	if l.HasIntegrity() {
		opts = append(opts, fmt.Sprintf("integrity:%d:aead", l.TagSize))
	}
	return dm.Target{Start: 0, Length: sectors, Type: "crypt",
		Params: fmt.Sprintf("%s %s 0 %s %d %d %s", l.CryptCipher, key, dev, offset/sectorBytes, len(opts), strings.Join(opts, " "))}
}
