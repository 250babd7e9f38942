// Package tee finds the machine's attestation facilities and takes evidence from them.
//
//   - AMD SEV-SNP: configfs-tsm (provider sev_guest, Linux 6.7 and later) first, else the
//     /dev/sev-guest ioctls; the host's certificate table when it provides one.
//   - Intel TDX: a quote through configfs-tsm (provider tdx_guest), which needs the host's
//     quoting service; when none answers, the TDREPORT from /dev/tdx_guest, which a remote
//     verifier can read but not authenticate.
//   - TPM 2.0 (/dev/tpmrm0): a quote of PCRs 11 and 15 by an attestation key created in the
//     TPM (a restricted ECC P-256 primary key under the endorsement hierarchy, else the owner
//     hierarchy), with the key's public area in the evidence.
//
// configfs-tsm is plain files, so cvmboot drives it itself: create a report entry, write the
// 64-byte REPORT_DATA to inblob, read outblob (and auxblob), check the provider and that the
// entry's generation advanced by exactly one (no other writer), remove the entry. The ioctls use
// only the ABI structures of go-sev-guest and go-tdx-guest, not their clients, which would add
// protobuf to the boot binary, register global flags and sleep 2 s between SEV ioctls.
//
// A boot uses it as: MountConfigfs, Detect, Detection.Require (fail closed per attest.require),
// Detection.Registers for measure.Open, then Collect with Detection.Sources once the decisions
// are measured.
package tee
