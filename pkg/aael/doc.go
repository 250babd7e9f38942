// Package aael is the Confidential Containers Attestation Agent's event log
// (/run/attestation-agent/eventlog, "AAEL"): TCG crypto-agile TCG_PCR_EVENT2 records of type
// EV_EVENT_TAG, one digest each, whose tagged event (id 0x4141454c "AAEL") carries the text
// "<domain> <operation> <content>"; the digest, extended into the register, covers the whole
// tagged event. Trustee replays the firmware's CCEL followed by these records against the TDX
// RTMRs, so an agent that extends RTMR 3 must write a record here for every extend, in order.
// Layout and digest as guest-components' attestation-agent/src/eventlog/tcg2.rs and trustee's
// deps/eventlog read them (guest-components 8246e5e0, trustee 78962cd4). writer.go encodes.
package aael
