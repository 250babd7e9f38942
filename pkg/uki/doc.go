// Package uki computes, from a unified kernel image (UKI) file alone, what the firmware and
// systemd-stub measure when they boot it: the reference values a verifier compares a TPM quote
// or an event log against.
//
//   - Authenticode: the PE image hash of the whole UKI, the digest of the firmware's PCR 4
//     EV_EFI_BOOT_SERVICES_APPLICATION event for it (equal to Debian's `pesign -h`).
//   - StubEvents and Replay: the sections systemd-stub extends into PCR 11 (name, then data, in
//     the stub's fixed order for its version, read from the .sdmagic section), and the PCR 11
//     value they give (equal to `systemd-measure calculate` over the same sections).
//
// Parse treats the file as untrusted: every offset and size is checked before use, errors wrap
// ErrFormat and name the offending field, and the file is streamed, never read whole.
//
// Not computed here: the PCR 4 value (it also holds firmware and boot loader events), PCR 9 (the
// initrd the kernel's EFI stub measures), PCR 12 (a command line that overrides the UKI's,
// credentials, add-ons), TDX RTMR 1/2 and the SEV-SNP launch measurement.
package uki
