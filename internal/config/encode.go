package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"

	"gopkg.in/yaml.v3"
)

// MarshalYAML gives the effective configuration with every key, in schema order, so
// yaml.Marshal(c) prints a file that Load reads back to the same Config.
func (c *Config) MarshalYAML() (any, error) {
	return encodeNode(reflectValue(c)), nil
}

// String returns the effective configuration as YAML.
func (c *Config) String() string {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		// The node tree is built from plain strings and booleans; failing is a bug here.
		panic("config: encode YAML: " + err.Error())
	}
	if err := enc.Close(); err != nil {
		panic("config: encode YAML: " + err.Error())
	}
	return b.String()
}

// CanonicalJSON is the encoding Digest hashes, so that a verifier can recompute it from the
// configuration it expects:
//   - one JSON object per section, with every key present, keys sorted by byte value;
//   - no white space; strings escaped as Go's encoding/json does, without HTML escaping;
//   - booleans as JSON booleans, lists (modules, storage.binds) as arrays of strings;
//   - every other value as its canonical text, as String prints it: enums as their name,
//     durations like "30s", sizes like "1GiB" (largest exact binary unit, else "…B"),
//     overlay.size like "50%", the GUID in lowercase, the nonce as lowercase hex.
//
// Validate rejects invalid UTF-8 and control characters, so the encoding is one-to-one.
func (c *Config) CanonicalJSON() []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(encodeJSON(reflectValue(c))); err != nil {
		panic("config: encode JSON: " + err.Error())
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// Digest is the SHA-256 of CanonicalJSON, for measuring the effective configuration.
func (c *Config) Digest() [32]byte { return sha256.Sum256(c.CanonicalJSON()) }
