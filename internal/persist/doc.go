// Package persist is root.persistent: encrypt-on-first-boot. At the first boot it turns the
// verified root into a persistent, writable, encrypted root; at later boots it unlocks it.
//
// # First boot (conversion)
//
// The disk's free space becomes partition "cvmboot-root": a LUKS2 header without keyslots
// (cipher aes-xts-plain64, 4 KiB sectors, hmac(sha256) over dm-integrity, a random volume key
// in locked memory), dm-integrity and dm-crypt. The verified root is copied into it block by
// block from the dm-verity device, so every block is checked against the root hash as it is
// read. Then a 32-byte secret is sealed to the TPM's current sha256 PCRs 2, 4, 9, 11 and 12
// (see PolicyPCRs) and the conversion is committed by adding the keyslot for that secret and its
// systemd-tpm2 token to the header, in systemd-cryptenroll's format. Until that header write,
// the key exists only in memory: a conversion cut short leaves a header without keyslots,
// which the next boot recognises and converts again from the start. The image's own
// partitions (root, hash) are only read, never written: they stay as the image was
// uploaded, and a machine whose TPM state is lost can be converted anew from them (its data
// is then lost).
//
// # Later boots
//
// The header is read once into memory and checked against exactly what the conversion
// writes (CheckHeader): a host that edits the unauthenticated JSON (cipher_null, another
// segment) is refused, naming the field, before anything is activated. The TPM unseals the
// secret only under the policy; the keyslot gives the volume key; dm-integrity and dm-crypt
// are built from the checked in-memory header. The file system is grown to the partition
// at every boot when it is smaller (after a conversion, or a grown disk).
//
// # UKI updates
//
// A secret is sealed to one UKI's PCRs. `cvmboot enroll --uki` (Enroll) predicts another
// UKI's (Predict) and leaves a request on the root itself, which the host cannot write. The
// stage keeps the volume key in locked memory until the root is mounted (MountRoot), then
// carries the request out (a keyslot for the new UKI, its token one generation newer) and,
// when a newer generation opened the root, removes cvmboot's older keyslots that this boot's
// PCRs do not satisfy (maintainKeys). In a systemd initrd the unit that unlocks forgets the
// key; the root unit, when there is such work, reads the header again, checks it and unseals
// once more before cvmboot's leave-initrd measurement (MaintainMounted).
//
// # Which TPM may seal
//
// A TPM the host emulates can unseal whatever was sealed to it. Only a TPM the TEE vouches
// for may hold the key: on SEV-SNP an SVSM's vTPM, whose endorsement key the SVSM binds into
// a report (internal/tpmvouch). The TPM's endorsement key is compared with the bound one
// before the LUKS2 header is written and at every unseal, and every seal and unseal runs in
// a session salted to the bound key, which a TPM without its private half cannot answer. On
// a machine that is no TEE at all the TPM is refused unless root.insecure_unvouched_tpm
// allows it, which the measurement, the report and `cvmboot status` then say in words; a TEE
// without a TPM of its own (SEV-SNP without an SVSM, TDX) and a check that fails (a report
// that does not bind the key, another TPM answering) are refused whatever the setting.
package persist
