// Package luks2 writes and reads LUKS2 headers without cryptsetup, so that
// the boot agent can format a volume with a random key and later recognise,
// inspect or destroy it. Headers it writes are accepted by cryptsetup 2.x
// (isLuks, luksDump, open) and by blkid.
//
// # On-disk layout
//
// Two header copies (primary at 0, secondary at hdr_size), each a 4 KiB
// big-endian binary header followed by a NUL-padded JSON area, then the
// keyslots area, then data at segments.0.offset:
//
//	[0, H)            primary copy, magic "LUKS\xba\xbe"
//	[H, 2H)           secondary copy, magic "SKUL\xba\xbe", same seqid, own salt
//	[2H, 2H+K)        keyslots area (config.keyslots_size = K)
//	[2H+K, offset)    zero
//	[offset, end)     data (dm-crypt, or dm-integrity + dm-crypt)
//
// With the defaults H = 16 KiB, K = 16 MiB - 32 KiB and offset = 16 MiB,
// exactly what cryptsetup luksFormat produces. The checksum of each copy is
// sha256 over the binary header with its csum field zeroed, followed by the
// whole JSON area.
//
// # Keyslots
//
// A passphrase keyslot stores the volume key AF-split into 4000 stripes
// (LUKS1 splitter, sha256 diffusion), padded to whole 512-byte sectors and
// encrypted with aes-xts-plain64 under a 64-byte key derived by PBKDF2 or
// Argon2 from the passphrase; the XTS tweak is the sector number counted
// from the area start. Each keyslot's area is the material rounded up to
// 4 KiB (258048 bytes for a 64-byte key, 385024 for 96). A header with no
// keyslots is valid: the agent keeps its random key in memory only.
//
// Format fills the whole keyslots area with random bytes before writing the
// keyslots, as cryptsetup does, so used and unused keyslot space look the
// same and no earlier volume's keyslots survive. The bytes outside the
// keyslot areas are that random filler; the bytes of an area beyond its
// material (up to the 4 KiB boundary) are filler as well.
//
// The volume key digest is PBKDF2-sha256 over the key with a 32-byte salt,
// 1000 iterations by default: the volume key is random, so iterations buy
// nothing and cost boot time.
//
// # Integrity
//
// "hmac(sha256)" pairs with aes-xts-plain64 (or aes-xts-random); the volume
// key is the encryption key followed by the 32-byte MAC key (96 bytes for
// aes-xts-512) and cryptsetup builds dm-crypt with
// capi:authenc(hmac(sha256),xts(aes))-plain64 over a dm-integrity device
// with 32-byte tags.
//
// "aead" is only for ciphers that are AEAD modes themselves: cryptsetup
// formats it with aes-gcm-random, aes-ccm-random or aegis128-random
// (its luks2-integrity-test), and maps it to capi:gcm(aes)-random with
// integrity:28:aead (12-byte random IV + 16-byte tag). The whole volume key
// is the cipher key (no separate MAC key). "aes-xts-plain64" with "aead" is
// not an authenticated mode at all and cryptsetup refuses it
// ("Cipher ... is not available"); Format refuses it too. Format accepts
// aes-gcm-random (16 or 32-byte key) and aegis128-random (16) with "aead".
//
// Format only writes the LUKS2 metadata; the dm-integrity superblock at the
// data offset and the initial wipe are the activator's job.
//
// # Reading
//
// Read validates both copies (magic, version, hdr_offset, hdr_size from the
// allowed set 16 KiB ... 4 MiB, checksum, JSON) and uses the valid one with
// the highest seqid. Allocation is bounded by hdr_size (at most 4 MiB per
// copy); keyslot material reads are bounded by keyslots_size (128 MiB) and a
// 1 KiB volume key limit; Argon2 memory is capped at 4 GiB. The JSON parser
// requires cryptsetup's field types exactly (64-bit values as decimal
// strings, small ones as JSON integers below 2^31), rejects duplicate keys,
// invalid UTF-8 and anything but NUL after the text, and ignores fields it
// does not know, like cryptsetup.
//
// Read gives cryptsetup's verdict on cryptsetup's own LUKS2 validation images
// (part of the tests). Its ambiguous-signature check knows fewer formats than
// libblkid (see signatures.go): there it accepts what cryptsetup refuses. Like cryptsetup since 2.0.3 it
// drops, in memory, keyslot KDF members the KDF does not use (parameters
// of a previous KDF left behind by older cryptsetup; Metadata.Repaired says
// what went). KDF types other than pbkdf2, argon2i and argon2id (such as
// "argon2", argon2i's name in early headers) are listed but cannot be
// opened, as with cryptsetup. When one copy is invalid or older, Read
// refuses the device if it also carries another format's signature
// (ErrAmbiguous), as cryptsetup does through libblkid; signatures.go lists
// the formats looked for.
//
// # Key hygiene
//
// Nothing in this package logs or formats key material; Header holds no key.
// Buffers this package allocates for secrets are cleared before they are
// released: KDF output (the keyslot area key), AF-split plaintext, the
// decrypted keyslot material, PBKDF2 intermediate blocks and digest
// outputs. PBKDF2 (the volume key digest, pbkdf2 keyslots) keeps the HMAC
// key, its pads and the hash states after them in a locked page it wipes,
// never in crypto/hmac's heap pads (TestPBKDF2LeavesNoKeyCopy scans the
// process for them). Caller buffers (Options.VolumeKey, passphrases) are
// neither kept nor cleared. The volume key returned by Unlock belongs to the
// caller, who must clear it. Copies inside other Go crypto code (AES key
// schedules of keyslot areas, Argon2 memory) are not reached; cvmboot's
// storage uses neither (its header has no keyslot).
package luks2
