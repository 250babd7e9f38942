// Package eventlog is the specification and the code of cvmboot's measured event log: the
// events, the record format, the replay of the registers and the binding into REPORT_DATA. It
// is what a verifier imports; cvmboot's writer (internal/measure) appends to the log and
// extends the registers.
//
// cvmboot records its security-relevant boot decisions as measured events: each decision
// is appended to an event log and extended into the platform's measurement registers,
// so that a remote verifier can replay the log and compare it with the registers a TPM quote or
// a TDX quote reports, or with the log digest bound into an SEV-SNP report's REPORT_DATA.
//
// # Events
//
// An event is a type ("cvmboot.verity", "cvmboot.storage", "cvmboot.overlay", "cvmboot.config",
// "cvmboot.cmdline", "cvmboot.phase", or another "cvmboot." name) and a JSON object of data.
// The data is encoded canonically (keys sorted, no white space, no HTML escaping) and never
// holds key material: Canonical refuses members named like keys, passphrases or secrets.
//
// The measured bytes of an event are the canonical content {"data":…,"type":…}, so the type is
// bound into the digest and a record cannot be relabelled. Phases are the exception: their
// measured bytes are the bare phase name ("enter-initrd"), exactly as systemd-pcrphase measures
// it, so that PCR 11 predictions made by systemd-measure and ukify stay valid when cvmboot
// replaces systemd in the initrd. Phase names are limited to [a-z0-9:-], which can never be a
// JSON object, so the two rules cannot produce the same bytes.
//
// # Order
//
// cvmboot measures in one order in every mode (its own initramfs, a systemd initrd, the
// booted system), the order of its boot sequence: cvmboot.phase "enter-initrd" (in the
// initrd only), cvmboot.config, cvmboot.cmdline, cvmboot.initdata (when initdata.source names
// one), cvmboot.verity for the root and then /usr
// (when roothash=/usrhash= name them), cvmboot.storage, cvmboot.overlay (in the initrd),
// cvmboot.phase "leave-initrd" (in the initrd). A disabled feature is measured too, as a
// decision ({"encrypted":false}, {"enabled":false}).
//
// # Registers
//
//	event type       TPM PCR   TDX RTMR   why
//	cvmboot.phase    11        3          systemd: PCR 11 holds the UKI and the boot phases
//	everything else  15        3          systemd: PCR 15 holds system identity and file systems
//
// TPM: every active PCR bank is extended (sha1, sha256, sha384, sha512); an active bank of
// another algorithm (SM3) is an error rather than a bank left open to forged extends.
//
// TDX: RTMR 3 is extended with the SHA-384 of the record's Attestation Agent event log entry
// (domain "cvmboot", the type without "cvmboot." as operation, the measured bytes as content;
// see Record.AAELEvent and pkg/aael), and cvmboot appends that entry to the Agent's log, so
// that Trustee's replay of CCEL + AAEL and a replay of this log give the same RTMR 3. The
// sha384 digest a record lists (for a TPM bank) stays the digest of the measured bytes.
//
// PCR 8: a cvmboot.initdata record bound to "pcr8" (on a TPM) also extends PCR 8's SHA-256
// bank, once and from zero, with the initdata document's digest itself (PCRInitdata).
//
// TDX: RTMR 3, through the kernel's sysfs file
// /sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384 (Linux 6.16 and later). The
// TDX PCR→RTMR mapping sends PCRs 8-15 to RTMR 2, but RTMR 2 already holds the firmware's and
// systemd-stub's measurements of the kernel command line and initrd, which a verifier could only
// replay with the firmware's CCEL log; RTMR 3 is the register for runtime events, untouched by
// firmware, so cvmboot's log alone replays it from zero. Older kernels have no way to extend an
// RTMR (configfs-tsm only produces reports): there, as on SEV-SNP, which has no runtime register
// at all, the log is bound only by the REPORT_DATA of the report taken at boot (see ReportData).
// A record says which registers it was extended into: "pcr" and "rtmr" are absent when it was not.
//
// # Event log
//
// The log is JSON Lines at /run/cvmboot/eventlog: one record per line, written with a single
// append under an exclusive lock, in the shape of a TCG Canonical Event Log JSON record:
//
//	{"recnum":0,"pcr":15,"rtmr":3,"digests":[{"hashAlg":"sha256","digest":"…"},{"hashAlg":"sha384","digest":"…"}],
//	 "content_type":"cvmboot","content":{"data":{"roothash":"…","target":"root"},"type":"cvmboot.verity"}}
//
// recnum counts from 0; digests hold one entry per algorithm used (sha256 always, sha384 with an
// RTMR, every active TPM bank), each the hash of the measured bytes. ParseLog checks all of it.
//
// # Binding
//
// REPORT_DATA = SHA-512("cvmboot-evidence-v1\x00" ‖ SHA-256(event log bytes) ‖ nonce), the
// nonce being at most 64 bytes. A TPM quote's qualifying data is SHA-256(REPORT_DATA), because
// many TPMs accept at most 32 or 48 bytes there.
package eventlog
