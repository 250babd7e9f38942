package tpmseal

// TokenType is the LUKS2 token type systemd-cryptsetup opens with the TPM.
const TokenType = "systemd-tpm2"

// Token is a systemd-tpm2 LUKS2 token as cvmboot uses it.
type Token struct {
	Keyslot    int      // the keyslot whose passphrase is the sealed secret
	Blob       []byte   // TPM2B_PRIVATE || TPM2B_PUBLIC of the sealed object
	PCRs       []int    // ascending
	PrimaryAlg string   // "ecc" or "rsa": the primary key the object was created under
	PolicyHash []byte   // the object's authPolicy
	PCRValues  [][]byte // expected values of PCRs (cvmboot's tokens); nil in systemd's
	// Generation orders cvmboot's tokens: the conversion's is 1, each enrolled one the
	// highest before it plus one. 0 in systemd's tokens and cvmboot's first ones.
	Generation int
}

// MaxGeneration bounds a token's generation: far more UKI updates than a machine sees, far
// from overflowing the next one.
const MaxGeneration = 1 << 20

// Primary key algorithms of the token's "tpm2-primary-alg".
const (
	PrimaryECC = "ecc"
	PrimaryRSA = "rsa"
)
