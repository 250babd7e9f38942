// Package initdata is Confidential Containers' initdata: the TOML document a pod's host passes
// to its VM (the Attestation Agent's, the Confidential Data Hub's configuration, the agent
// policy), its digest, and how that digest is bound to the platform — SEV-SNP HOST_DATA, TDX
// MRCONFIGID, or a single extend of vTPM PCR 8 — as kata-containers, the Attestation Agent
// (guest-components) and Trustee's verifiers compute it. One file per direction of one format:
// reader.go reads the document and the kata block device, writer.go writes the block device,
// binding.go computes the register values.
//
// The digest is of the exact bytes delivered, never of a normalized form: a trailing newline
// is another document.
package initdata
