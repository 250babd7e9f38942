package evidence

import "github.com/google/go-tpm/tpm2"

// DecodeTPMForTest runs the TPM structure decoders on hostile bytes.
func DecodeTPMForTest(data []byte) {
	_, _ = unmarshalTPM[tpm2.TPMSAttest]("quote", data)
	_, _ = unmarshalTPM[tpm2.TPMTSignature]("signature", data)
	_, _ = unmarshalTPM[tpm2.TPMTPublic]("public area", data)
}
