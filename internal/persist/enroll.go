package persist

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cvmboot/cvmboot/internal/luks2"
	"github.com/cvmboot/cvmboot/internal/storage"
	"github.com/cvmboot/cvmboot/internal/tpmseal"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/reference"
)

// RequestPath is where `cvmboot enroll` leaves an enrollment request, relative to the root.
// It lives on the persistent root itself: dm-integrity and dm-crypt keep the host from
// writing one (a request names the PCR values a new secret is sealed to).
const RequestPath = "var/lib/cvmboot/persistent-root-enroll.json"

// RequestVersion is the request format.
const RequestVersion = 1

// Request asks the next boot to seal a new secret for another UKI: the values PolicyPCRs will
// hold when that UKI boots (hex, in PolicyPCRs' order).
type Request struct {
	Version   int      `json:"version"`
	UKISHA256 string   `json:"uki_sha256"`
	PCRs      []int    `json:"pcrs"`
	Values    []string `json:"values"`
}

// maxRequestBytes bounds what ParseRequest reads.
const maxRequestBytes = 4 << 10

// ParseRequest reads a request strictly: its version, PolicyPCRs, and one SHA-256 value each.
func ParseRequest(raw []byte) (*Request, [][]byte, error) {
	if len(raw) > maxRequestBytes {
		return nil, nil, fmt.Errorf("enrollment request: %d bytes, more than %d", len(raw), maxRequestBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var r Request
	if err := dec.Decode(&r); err != nil {
		return nil, nil, fmt.Errorf("enrollment request: %w", err)
	}
	if dec.More() {
		return nil, nil, fmt.Errorf("enrollment request: data after the object")
	}
	switch {
	case r.Version != RequestVersion:
		return nil, nil, fmt.Errorf("enrollment request: version %d, this cvmboot reads %d", r.Version, RequestVersion)
	case !slices.Equal(r.PCRs, PolicyPCRs):
		return nil, nil, fmt.Errorf("enrollment request: PCRs %v, cvmboot seals to %v", r.PCRs, PolicyPCRs)
	case len(r.Values) != len(r.PCRs):
		return nil, nil, fmt.Errorf("enrollment request: %d values for %d PCRs", len(r.Values), len(r.PCRs))
	}
	if b, err := hex.DecodeString(r.UKISHA256); err != nil || len(b) != sha256.Size {
		return nil, nil, fmt.Errorf("enrollment request: uki_sha256 %q is not a SHA-256 in hex", r.UKISHA256)
	}
	values := make([][]byte, len(r.Values))
	for i, v := range r.Values {
		b, err := hex.DecodeString(v)
		if err != nil || len(b) != sha256.Size {
			return nil, nil, fmt.Errorf("enrollment request: value of PCR %d %q is not a SHA-256 in hex", r.PCRs[i], v)
		}
		values[i] = b
	}
	return &r, values, nil
}

// Predict returns the values PolicyPCRs will hold in the initramfs when next boots on this
// machine in place of the UKI that booted now, whose token is cur. fw is the firmware's TPM
// event log of this boot (SHA-256); now are the TPM's PolicyPCRs, read in the booted system.
//
// It first checks that cur is this boot's token and that the log is this boot's: PCR 2 and
// 12 in the TPM are cur's (nothing extends them after the initramfs), the log's PCR 4 and 9
// replay to the TPM's and to cur's, and the log's PCR 11 followed by cvmboot's enter-initrd
// phase to cur's. Otherwise the prediction would rest on a boot it does not understand, or
// on a token the host wrote into the header, and it is refused. Then PCR 4 is the same log
// with the two boot applications (the UKI, then the kernel it loads) replaced by next's
// Authenticode digests; PCR 9 and PCR 11 are next's reference values; PCR 2 (drivers) and
// PCR 12 (nothing from outside the UKI) are the TPM's.
func Predict(cur *tpmseal.Token, fw []evidence.FirmwareEvent, next *reference.Values, now [][]byte) ([][]byte, error) {
	if !slices.Equal(cur.PCRs, PolicyPCRs) || len(cur.PCRValues) != len(cur.PCRs) || len(now) != len(PolicyPCRs) {
		return nil, fmt.Errorf("the current token is sealed to PCRs %v with %d recorded values; cvmboot's name all of %v", cur.PCRs, len(cur.PCRValues), PolicyPCRs)
	}
	recorded, tpm := map[int][]byte{}, map[int][]byte{}
	for i, p := range cur.PCRs {
		recorded[p], tpm[p] = cur.PCRValues[i], now[i]
	}
	for _, p := range []int{2, 12} {
		if !bytes.Equal(tpm[p], recorded[p]) {
			return nil, fmt.Errorf("PCR %d: the TPM holds %x, the token was sealed to %x: the token is not this boot's", p, tpm[p], recorded[p])
		}
	}
	enter, err := reference.PhaseDigest("enter-initrd")
	if err != nil {
		return nil, err
	}
	replay := func(pcr int, swap func(i int, e evidence.FirmwareEvent) []byte) [32]byte {
		var v [32]byte
		for i, e := range fw {
			if e.Index != pcr || e.Type == evidence.EvNoAction {
				continue
			}
			d := e.Digest
			if swap != nil {
				if s := swap(i, e); s != nil {
					d = s
				}
			}
			v = sha256.Sum256(append(v[:], d...))
		}
		return v
	}
	p11 := replay(11, nil)
	p11 = sha256.Sum256(append(p11[:], enter[:]...))
	for _, c := range []struct {
		pcr   int
		found [32]byte
		what  string
	}{{4, replay(4, nil), "the firmware log"}, {9, replay(9, nil), "the firmware log"}, {11, p11, "the firmware log and cvmboot's enter-initrd phase"}} {
		if !bytes.Equal(c.found[:], recorded[c.pcr]) {
			return nil, fmt.Errorf("PCR %d: %s replay to %x, but the token was sealed to %x: this boot is not the one the token records, nothing to predict from", c.pcr, c.what, c.found, recorded[c.pcr])
		}
		if c.pcr != 11 && !bytes.Equal(c.found[:], tpm[c.pcr]) {
			return nil, fmt.Errorf("PCR %d: %s replay to %x, but the TPM holds %x: the log is not this boot's", c.pcr, c.what, c.found, tpm[c.pcr])
		}
	}

	var apps []int
	for i, e := range fw {
		if e.Index == 4 && e.Type == evidence.EvEFIBootServicesApplication {
			apps = append(apps, i)
		}
	}
	if len(apps) != 2 {
		return nil, fmt.Errorf("PCR 4 holds %d boot applications, expected 2 (the UKI started by the firmware, then its kernel): another boot path is not predicted", len(apps))
	}
	ukiApp, kernelApp, err := hexDigests(next.UKI.AuthenticodeSHA256, next.UKI.LinuxAuthenticodeSHA256)
	if err != nil {
		return nil, fmt.Errorf("the new UKI's Authenticode digests: %w", err)
	}
	p4 := replay(4, func(i int, _ evidence.FirmwareEvent) []byte {
		switch i {
		case apps[0]:
			return ukiApp
		case apps[1]:
			return kernelApp
		}
		return nil
	})
	if next.PCR9.Value == "" {
		return nil, fmt.Errorf("the new UKI's PCR 9 cannot be predicted: %s", next.PCR9.Note)
	}
	if len(next.PCR11.Phases) == 0 || next.PCR11.Phases[0].Phase != "enter-initrd" {
		return nil, fmt.Errorf("the new UKI's reference values lack PCR 11 after enter-initrd")
	}
	p9, p11n, err := hexDigests(next.PCR9.Value, next.PCR11.Phases[0].Value)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(PolicyPCRs))
	for i, p := range PolicyPCRs {
		switch p {
		case 4:
			out[i] = p4[:]
		case 9:
			out[i] = p9
		case 11:
			out[i] = p11n
		default:
			out[i] = slices.Clone(tpm[p])
		}
	}
	return out, nil
}

func hexDigests(a, b string) ([]byte, []byte, error) {
	x, err := hex.DecodeString(a)
	if err != nil || len(x) != sha256.Size {
		return nil, nil, fmt.Errorf("%q is not a SHA-256", a)
	}
	y, err := hex.DecodeString(b)
	if err != nil || len(y) != sha256.Size {
		return nil, nil, fmt.Errorf("%q is not a SHA-256", b)
	}
	return x, y, nil
}

// NewRequest is the request for the UKI of SHA-256 ukiSHA256 (hex) and the values.
func NewRequest(ukiSHA256 string, values [][]byte) ([]byte, error) {
	r := Request{Version: RequestVersion, UKISHA256: ukiSHA256, PCRs: PolicyPCRs}
	for _, v := range values {
		r.Values = append(r.Values, hex.EncodeToString(v))
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// EnrollOptions are `cvmboot enroll`'s inputs; the zero value of each path is the running
// system's.
type EnrollOptions struct {
	UKI string // the UKI that will boot next
	// SHA256 is the SHA-256 the owner expects of UKI's bytes (hex): the file may come from
	// where the host can write (the ESP), and a secret sealed for the host's UKI is the
	// host's.
	SHA256      string
	TPMs        TPMs   // DeviceTPM{} when nil
	Root        string // the persistent root, mounted; "/"
	SysDir      string // "/sys"
	DevDir      string // "/dev"
	FirmwareLog string // the TPM's firmware event log; tee.FirmwareLogPath
}

// Enroll writes an enrollment request on the running persistent root for the UKI at
// o.UKI: the values PolicyPCRs will hold when it boots (Predict, from the token of this
// boot's UKI and the firmware log). The next boot, still with this UKI, seals a secret to
// them in a new keyslot; the first boot of the new UKI then opens the root with it and
// removes the older keyslots. It returns the request and the partition it is for.
func Enroll(o EnrollOptions) (*Request, string, error) {
	o.Root, o.SysDir, o.DevDir = cmp.Or(o.Root, "/"), cmp.Or(o.SysDir, "/sys"), cmp.Or(o.DevDir, "/dev")
	if o.TPMs == nil {
		o.TPMs = DeviceTPM{}
	}
	// The UKI is read once and judged from those bytes: the file may be swapped meanwhile.
	data, err := os.ReadFile(o.UKI)
	if err != nil {
		return nil, "", err
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != strings.ToLower(o.SHA256) {
		return nil, "", fmt.Errorf("the UKI %s has SHA-256 %x, the one to enroll is %s: refusing to seal the root's key for another UKI", o.UKI, sum, cmp.Or(o.SHA256, "(none given)"))
	}
	next, err := reference.ComputeBytes(data, o.UKI, reference.Options{Phases: []string{"enter-initrd"}})
	if err != nil {
		return nil, "", fmt.Errorf("the new UKI: %w", err)
	}
	part, err := findPartition(o.SysDir, o.DevDir)
	if err != nil {
		return nil, "", err
	}
	f, err := os.Open(part)
	if err != nil {
		return nil, "", err
	}
	h, err := luks2.Read(f)
	f.Close()
	if err != nil {
		return nil, "", fmt.Errorf("the persistent root %s: %w", part, err)
	}
	if err := CheckHeader(h); err != nil {
		return nil, "", fmt.Errorf("the persistent root %s: %w", part, err)
	}
	logBytes, err := os.ReadFile(o.FirmwareLog)
	if err != nil {
		return nil, "", fmt.Errorf("the firmware's TPM event log: %w (is securityfs mounted on /sys/kernel/security?)", err)
	}
	fw, err := readFirmwareLog(logBytes)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", o.FirmwareLog, err)
	}
	tpm, closeTPM, err := o.TPMs.Open()
	if err != nil {
		return nil, "", err
	}
	now, err := tpmseal.ReadPCRs(tpm, PolicyPCRs)
	closeTPM()
	if err != nil {
		return nil, "", err
	}
	var errs []error
	for _, id := range sortedKeys(h.Metadata.Tokens) {
		tok, err := tpmseal.ParseToken(h.Metadata.Tokens[id].JSON)
		if err != nil || tok.PCRValues == nil {
			continue
		}
		values, err := Predict(tok, fw, next, now)
		if err != nil {
			errs = append(errs, fmt.Errorf("token %d: %w", id, err))
			continue
		}
		raw, err := NewRequest(next.UKI.SHA256, values)
		if err != nil {
			return nil, "", err
		}
		req, _, err := ParseRequest(raw)
		if err != nil {
			return nil, "", err
		}
		if err := writeSynced(filepath.Join(o.Root, RequestPath), raw); err != nil {
			return nil, "", err
		}
		return req, part, nil
	}
	if len(errs) == 0 {
		return nil, "", fmt.Errorf("the persistent root %s has no cvmboot token", part)
	}
	return nil, "", fmt.Errorf("no token of the persistent root %s is this boot's: %w", part, errors.Join(errs...))
}

// findPartition finds the partition under the running persistent root: the one device
// below its dm-integrity device (sysfs slaves). The partition's GPT name is no help: one
// made in this boot was added with BLKPG, and the kernel learns its name only from the
// next boot's partition scan.
func findPartition(sysDir, devDir string) (string, error) {
	want := storage.IntegrityName(DeviceName)
	dms, err := filepath.Glob(filepath.Join(sysDir, "block", "dm-*"))
	if err != nil {
		return "", err
	}
	for _, dm := range dms {
		name, err := os.ReadFile(filepath.Join(dm, "dm", "name"))
		if err != nil || strings.TrimSpace(string(name)) != want {
			continue
		}
		slaves, err := os.ReadDir(filepath.Join(dm, "slaves"))
		if err != nil {
			return "", err
		}
		if len(slaves) != 1 {
			return "", fmt.Errorf("%s (%s) sits on %d devices, expected one partition", want, filepath.Base(dm), len(slaves))
		}
		return filepath.Join(devDir, slaves[0].Name()), nil
	}
	return "", fmt.Errorf("no device-mapper device is named %s: this machine does not run a persistent root", want)
}

// writeSynced writes a file whole or not at all: a temporary file, flushed, renamed.
func writeSynced(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir flushes a directory's entries.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
