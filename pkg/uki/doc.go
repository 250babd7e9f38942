// Package uki computes, from a unified kernel image (UKI) file alone, what the firmware and
// systemd-stub measure when they boot it: the reference values a verifier compares a TPM quote
// or an event log against.
//
//   - Authenticode: the PE image hash of the whole UKI, the digest of the firmware's PCR 4
//     EV_EFI_BOOT_SERVICES_APPLICATION event for it (SHA-256 equal to Debian's `pesign -h`),
//     and with SHA-384 the digest of TDX firmware's RTMR 1 event for it (the same bytes; the
//     padded form equal to `osslsigncode extract-data -h sha384`).
//   - StubEvents and Replay: the sections systemd-stub extends into PCR 11 (name, then data, in
//     the stub's fixed order for its version, read from the .sdmagic section), and the PCR 11
//     value they give (equal to `systemd-measure calculate` over the same sections).
//   - Replay384: TDX RTMR 2 after the same events' SHA-384 digests, for stubs that measure
//     through EFI_CC_MEASUREMENT_PROTOCOL (StubMeasuresCC: 256 and later).
//
// Parse treats the file as untrusted: every offset and size is checked before use, errors wrap
// ErrFormat and name the offending field, and the file is streamed, never read whole.
//
// Not computed here: the PCR 4 and TDX RTMR 1 values (they also hold firmware and boot loader
// events: only the UKI's own event digest is), PCR 9 and the kernel's events in RTMR 2 (the
// initrd and command line the kernel's EFI stub measures), what a boot adds to PCR 12 (a
// command line that overrides the UKI's, credentials, add-ons: pkg/reference expects none),
// MRTD and the SEV-SNP launch measurement (firmware).
package uki
