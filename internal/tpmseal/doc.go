// Package tpmseal seals a LUKS2 unlock secret to TPM PCR values and reads and writes it as a
// "systemd-tpm2" LUKS2 token, in the format systemd-cryptenroll --tpm2-device of systemd 252
// writes and systemd-cryptsetup reads.
//
// # What systemd 252 writes, and so what this package writes
//
// The secret is 32 random bytes held in a TPM sealed-data object (KEYEDHASH, scheme NULL,
// nameAlg sha256, attributes fixedTPM|fixedParent and nothing else: no userWithAuth, so only
// its policy opens it) created under a transient primary key of the owner hierarchy made from
// systemd's template (ECC NIST P-256 with AES-128-CFB, restricted decrypt, empty unique; RSA
// 2048 when the token says "rsa"). The object's authPolicy is one TPM2_PolicyPCR over the
// token's PCRs in one bank. The LUKS2 keyslot's passphrase is the secret in standard base64;
// the keyslot uses PBKDF2-sha512 with 1000 iterations (the secret is high-entropy).
//
// The token is
//
//	{"type":"systemd-tpm2","keyslots":["1"],"tpm2-blob":BASE64(TPM2B_PRIVATE||TPM2B_PUBLIC),
//	 "tpm2-pcrs":[4,11],"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc",
//	 "tpm2-policy-hash":HEX,"tpm2-pin":false}
//
// cvmboot adds "cvmboot_pcr_values", the expected value of each PCR in "tpm2-pcrs" (hex, same
// order), so that a refusal names the PCRs whose values differ, and "cvmboot_generation", which
// orders its tokens (the newest replaces the older after a UKI update); systemd ignores both.
// Tokens that need more than a PCR policy (a PIN, a signed PCR policy, a pcrlock policy, a
// persistent SRK) are refused as unsupported, by name.
//
// # Secrets in memory
//
// The secret lives in the caller's locked page. The TPM commands that carry it (Create's
// sensitive data, Unseal's answer) go through go-tpm's marshalling: their buffers are on the Go
// heap. The sessions encrypt the secret on the TPM's bus, the transport here zeroes every
// command and answer buffer it sees once the call is done, and the returned structures are
// zeroed; go-tpm's own intermediate buffers are not reachable and are left to the collector.
package tpmseal
