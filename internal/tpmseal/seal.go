package tpmseal

import (
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// SecretSize is the size of the sealed secret, as systemd's.
const SecretSize = 32

// Seal creates a sealed-data object holding secret (SecretSize bytes, the caller's locked
// memory) under policy p and returns a token for keyslot. Only the PCR values in p matter:
// they may be predicted values, not the TPM's current ones. With ek (a TEE-vouched
// endorsement key), the TPM must hold ek's private half: the command carrying the secret runs
// in a session salted to ek, whose answer only that TPM can authenticate.
func Seal(tpm TPM, p PCRPolicy, secret []byte, keyslot int, primaryAlg string, ek *tpm2.TPMTPublic) (*Token, error) {
	if len(secret) != SecretSize {
		return nil, fmt.Errorf("seal: secret has %d bytes, want %d", len(secret), SecretSize)
	}
	digest, err := p.Digest()
	if err != nil {
		return nil, err
	}
	s := &scrubbing{tpm: tpm}
	defer s.wipe()
	prim, err := createPrimary(s, primaryAlg)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	defer flush(s, prim.handle)
	salt, unsalt, err := saltKey(s, prim, ek)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	defer unsalt()

	sensitive := tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
		Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret}),
	}}
	template := tpm2.TPMTPublic{
		Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true},
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: digest},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: make([]byte, 32)}),
	}
	auth := tpm2.HMAC(tpm2.TPMAlgSHA256, 16, salt.salt(tpm2.AESEncryption(128, tpm2.EncryptIn))...)
	rsp, err := (tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: prim.handle, Name: prim.name, Auth: auth},
		InSensitive:  sensitive,
		InPublic:     tpm2.New2B(template),
	}).Execute(s)
	if err != nil {
		return nil, fmt.Errorf("seal: create the sealed object%s: %w", saltNote(ek), err)
	}
	priv := rsp.OutPrivate.Buffer
	pub := rsp.OutPublic.Bytes()
	blob := make([]byte, 0, 4+len(priv)+len(pub))
	blob = append(blob, byte(len(priv)>>8), byte(len(priv)))
	blob = append(blob, priv...)
	blob = append(blob, byte(len(pub)>>8), byte(len(pub)))
	blob = append(blob, pub...)
	t := &Token{Keyslot: keyslot, Blob: blob, PCRs: p.PCRs, PrimaryAlg: primaryAlg, PolicyHash: digest, PCRValues: p.Values}
	if err := t.check(); err != nil {
		return nil, fmt.Errorf("seal: the TPM's object: %w", err)
	}
	return t, nil
}
