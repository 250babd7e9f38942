// Package tpmvouch decides whether the TEE vouches for the TPM: whether a secret sealed to it
// stays inside the TEE.
//
// A TPM the host emulates (swtpm beside qemu) holds its seeds outside the guest: whatever it
// seals, the host can unseal. Only a TPM the TEE vouches for may hold the persistent root's
// key. On SEV-SNP that is an SVSM's vTPM: the SVSM runs at VMPL 0 inside the guest's encrypted
// memory and, asked through configfs-tsm for its vTPM service, requests a report whose
// REPORT_DATA is SHA-512(nonce || manifest), the manifest being the TPMT_PUBLIC of the vTPM's
// endorsement key (SVSM specification 58019, section 8). CheckSVSM checks that binding; the
// caller then talks to the TPM only through sessions salted to that key (internal/tpmseal), so
// a TPM that does not hold its private half, whatever public key it claims, cannot answer.
//
// The report's signature is not checked here: it reaches the guest over the SVSM's guest
// request channel, keyed by a VMPCK the host never holds, and checking the VCEK's signature
// would need AMD's certificates, which the initramfs has no network to fetch. A verifier
// checks it with the rest of the evidence. The launch measurement, which tells this SVSM from
// another, is likewise the verifier's to judge; it is logged here.
//
// Other TEEs (TDX with a paravisor or TD-partitioning vTPM, Azure's paravisor vTPM) are not
// checked by this version: Refused says so. Azure's paravisor publishes the report that binds
// its vTPM's keys (HCLAkPub, HCLEkPub) in the vTPM's own NV index 0x01400001: it reaches the
// guest through the very TPM it would vouch for, so a host-emulated TPM could serve a report
// it made up. Unlike the SVSM's, it is authentic only once its signature is checked (the
// VCEK's chain on SEV-SNP), and the initramfs has no network to fetch those certificates. Only a machine that is no TEE at all is
// Unavailable (ErrUnavailable), the one case a test setting may let an unvouched TPM seal.
package tpmvouch
