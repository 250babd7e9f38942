package verity

import "golang.org/x/sys/unix"

// SessionKeyring adds keys to the calling thread's session keyring, which request_key —
// used by dm-verity's constructor — searches.
type SessionKeyring struct{}

// AddUserKey adds a "user" key.
func (SessionKeyring) AddUserKey(desc string, payload []byte) (int, error) {
	return unix.AddKey("user", desc, payload, unix.KEY_SPEC_SESSION_KEYRING)
}

// Unlink unlinks the key from the session keyring.
func (SessionKeyring) Unlink(id int) error {
	_, err := unix.KeyctlInt(unix.KEYCTL_UNLINK, id, unix.KEY_SPEC_SESSION_KEYRING, 0, 0)
	return err
}
