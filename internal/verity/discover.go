package verity

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/blockdev"
	"github.com/cvmboot/cvmboot/internal/efivar"
)

// Partition type GUIDs of the Discoverable Partitions Specification for x86-64, the
// architecture of the confidential VMs cvmboot boots.
const (
	TypeRoot          = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
	TypeRootVerity    = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
	TypeRootVeritySig = "41092b05-9fc8-4523-994f-2def0408b176"
	TypeUsr           = "8484680c-9521-48c6-9c11-b0720656f69e"
	TypeUsrVerity     = "77ff5f63-e7b6-4633-acf4-1565b864c0e6"
	TypeUsrVeritySig  = "e7bb33fb-06cf-4e81-8273-e543b413e2e2"
)

// partitionTypes returns the data, hash and signature partition types of a volume.
func partitionTypes(volume string) (data, hash, sig string) {
	if volume == "usr" {
		return TypeUsr, TypeUsrVerity, TypeUsrVeritySig
	}
	return TypeRoot, TypeRootVerity, TypeRootVeritySig
}

// locate finds the data and hash devices and checks them against the root hash.
//
// Devices named on the command line are waited for. Derived PARTUUID= specs are looked up
// on every scan; when they do not match (yet), the partitions with the volume's type GUIDs
// on the boot disk (every disk when the firmware did not say) are tried, every data/hash
// pair being checked against the root hash: only a pair whose digest chain matches is
// used, so picking by type cannot pick another build's partitions. A PARTUUID match wins
// over the type fallback, and its check result is final.
func (a *activation) locate(ctx context.Context) (*pair, error) {
	if a.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.Timeout)
		defer cancel()
	}
	v := a.vol
	var data, hash *blockdev.Device
	var err error
	if !v.DataDerived {
		if data, err = a.Devices.Wait(ctx, v.DataSpec, 0); err != nil {
			return nil, fmt.Errorf("verity %s data device (%s): %w", v.Name, v.Params["data"], err)
		}
	}
	if !v.HashDerived {
		if hash, err = a.Devices.Wait(ctx, v.HashSpec, 0); err != nil {
			return nil, fmt.Errorf("verity %s hash device (%s): %w", v.Name, v.Params["hash device"], err)
		}
	}
	if data != nil && hash != nil {
		p, err := a.checkPair(data, hash)
		if err != nil {
			return nil, err
		}
		p.dataSrc, p.hashSrc = "command line "+v.DataSpec, "command line "+v.HashSpec
		return p, nil
	}

	start := time.Now()
	var lastDevs []*blockdev.Device
	var rejected []string
	for scans := 1; ; scans++ {
		devs, err := a.Devices.Scan()
		if err != nil {
			return nil, fmt.Errorf("verity %s: scanning block devices: %w", v.Name, err)
		}
		lastDevs = devs
		d, h := data, hash
		if d == nil {
			if d, err = resolve(v.DataSpec, devs); err != nil {
				return nil, fmt.Errorf("verity %s data partition: %w", v.Name, err)
			}
		}
		if h == nil {
			if h, err = resolve(v.HashSpec, devs); err != nil {
				return nil, fmt.Errorf("verity %s hash partition: %w", v.Name, err)
			}
		}
		if d != nil && h != nil {
			p, err := a.checkPair(d, h)
			if err != nil {
				return nil, err
			}
			p.dataSrc, p.hashSrc = a.source(v.DataDerived, v.DataSpec), a.source(v.HashDerived, v.HashSpec)
			a.log.Info("verity partitions found by PARTUUID", zap.Duration("after", time.Since(start)), zap.Int("scans", scans))
			return p, nil
		}
		p, rej, err := a.byPartitionType(devs, data, hash)
		if err != nil {
			return nil, err
		}
		rejected = rej
		if p != nil {
			a.log.Warn("verity partitions found by GPT type, not by the PARTUUIDs the root hash gives",
				zap.String("expected_data", v.DataSpec), zap.String("expected_hash", v.HashSpec),
				zap.String("data", p.data.Path), zap.String("hash", p.hash.Path))
			return p, nil
		}
		// Once every partition of the boot disk's GPT is in sysfs and every pair of the
		// volume's types on it was checked and rejected, waiting longer only delays the same
		// answer (a wrong roothash=, another build). The volume may still be on another disk
		// found by PARTUUID: only a boot disk that holds rejected pairs ends the wait, and
		// naming the devices on the command line avoids that.
		if disk := a.bootDisk(devs); disk != "" && len(rejected) > 0 && diskComplete(devs, disk) {
			return nil, a.notFound(nil, d, h, devs, rejected, disk)
		}
		select {
		case <-ctx.Done():
			return nil, a.notFound(ctx, d, h, lastDevs, rejected, a.bootDisk(lastDevs))
		case <-time.After(a.PollInterval):
		}
	}
}

func (a *activation) source(derived bool, spec string) string {
	if derived {
		return "partuuid " + strings.TrimPrefix(spec, "PARTUUID=") + " from the root hash"
	}
	return "command line " + spec
}

// resolve finds spec among devs: nil when absent, an error when ambiguous.
func resolve(spec string, devs []*blockdev.Device) (*blockdev.Device, error) {
	sp, err := blockdev.ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	d, err := blockdev.Resolve(sp, devs)
	if errors.Is(err, blockdev.ErrNotFound) {
		return nil, nil
	}
	return d, err
}

// byPartitionType tries the partitions of the volume's GPT types. fixedData/fixedHash are
// devices the command line named; the others are picked among the candidates.
func (a *activation) byPartitionType(devs []*blockdev.Device, fixedData, fixedHash *blockdev.Device) (*pair, []string, error) {
	dataType, hashType, _ := partitionTypes(a.vol.Name)
	disk := a.bootDisk(devs)
	candidates := func(fixed *blockdev.Device, typ string) []*blockdev.Device {
		if fixed != nil {
			return []*blockdev.Device{fixed}
		}
		var out []*blockdev.Device
		for _, d := range devs {
			if d.IsPartition && d.Size > 0 && d.PartTypeGUID == typ && (disk == "" || d.Parent == disk) {
				out = append(out, d)
			}
		}
		return out
	}
	var ok []*pair
	var rejected []string
	for _, h := range candidates(fixedHash, hashType) {
		for _, d := range candidates(fixedData, dataType) {
			if fixedData == nil && fixedHash == nil && d.Parent != h.Parent {
				continue // a volume's partitions are on one disk
			}
			key := d.Path + "|" + h.Path
			err, seen := a.checked[key]
			var p *pair
			if !seen || err == nil {
				p, err = a.checkPair(d, h)
				a.checked[key] = err
			}
			if err != nil {
				rejected = append(rejected, fmt.Sprintf("%s + %s: %v", d.Name, h.Name, err))
				continue
			}
			p.dataSrc, p.hashSrc = "gpt-type "+dataType, "gpt-type "+hashType
			if fixedData != nil {
				p.dataSrc = "command line " + a.vol.DataSpec
			}
			if fixedHash != nil {
				p.hashSrc = "command line " + a.vol.HashSpec
			}
			ok = append(ok, p)
		}
	}
	switch len(ok) {
	case 0:
		return nil, rejected, nil
	case 1:
		return ok[0], rejected, nil
	}
	var names []string
	for _, p := range ok {
		names = append(names, p.data.Path+" + "+p.hash.Path)
	}
	return nil, nil, fmt.Errorf("verity %s: %d partition pairs of the GPT types match the root hash (%s): refusing to choose", a.vol.Name, len(ok), strings.Join(names, "; "))
}

// bootDisk returns the kernel name of the disk the firmware booted from, by the ESP
// PARTUUID in LoaderDevicePartUUID, or "" when unknown.
func (a *activation) bootDisk(devs []*blockdev.Device) string {
	say := func(msg string, fields ...zap.Field) {
		if !a.bootDiskSaid {
			a.bootDiskSaid = true
			a.log.Info(msg, fields...)
		}
	}
	u, err := efivar.LoaderDevicePartUUID(a.EFIVarsDir)
	if err != nil || u == "" {
		say("boot disk unknown: every disk is searched by partition type", zap.Error(err))
		return ""
	}
	for _, d := range devs {
		if d.IsPartition && d.PartUUID == u {
			say("boot disk from LoaderDevicePartUUID", zap.String("esp_partuuid", u), zap.String("disk", d.Parent))
			return d.Parent
		}
	}
	return ""
}

// diskComplete tells whether every used entry of disk's GPT has its partition in sysfs.
func diskComplete(devs []*blockdev.Device, disk string) bool {
	want, have := 0, 0
	for _, d := range devs {
		switch {
		case !d.IsPartition && d.Name == disk:
			want = d.GPTPartitions
		case d.IsPartition && d.Parent == disk:
			have++
		}
	}
	return want > 0 && have >= want
}

// NotFoundError says that no partition pair matches a volume's root hash. Its message is
// one short line; Detail has the pairs rejected and the devices seen, a line each, so that
// the console never splits a FATAL line.
type NotFoundError struct {
	Summary string
	Lines   []string
}

func (e *NotFoundError) Error() string { return e.Summary }

// Detail implements the boot's FATAL detail lines.
func (e *NotFoundError) Detail() []string { return e.Lines }

// maxDetailLine bounds a detail line below the kernel's console record size.
const maxDetailLine = 900

// notFound explains a discovery that found no matching pair: after the timeout (ctx done),
// or at once when the boot disk's candidates were all rejected (ctx nil). data and hash
// are the devices the command line or the derived PARTUUIDs gave, if any.
func (a *activation) notFound(ctx context.Context, data, hash *blockdev.Device, devs []*blockdev.Device, rejected []string, disk string) error {
	v := a.vol
	var b strings.Builder
	fmt.Fprintf(&b, "verity %s: no partition pair matches %s=%s", v.Name, hashOption(v.Name), hex.EncodeToString(v.RootHash))
	var found, missing []string
	for _, x := range []struct {
		role, spec string
		dev        *blockdev.Device
	}{{"data", v.DataSpec, data}, {"hash", v.HashSpec, hash}} {
		if x.dev != nil {
			found = append(found, fmt.Sprintf("%s %s is %s", x.role, x.spec, x.dev.Path))
		} else {
			missing = append(missing, fmt.Sprintf("%s %s", x.role, x.spec))
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(&b, ": no %s", strings.Join(missing, ", no "))
	}
	if len(found) > 0 {
		fmt.Fprintf(&b, "; %s", strings.Join(found, ", "))
	}
	switch {
	case ctx == nil:
		fmt.Fprintf(&b, "; every pair of the volume's GPT types on boot disk %s was checked (%d rejected)", disk, len(rejected))
	case a.Timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded):
		fmt.Fprintf(&b, "; waited %s", a.Timeout)
	default:
		fmt.Fprintf(&b, " (%v)", ctx.Err())
	}
	dataType, hashType, _ := partitionTypes(v.Name)
	var lines []string
	if len(rejected) == 0 {
		where := "on any disk"
		if disk != "" {
			where = "on boot disk " + disk
		}
		lines = append(lines, fmt.Sprintf("no pair of partitions of GPT types %s (data) and %s (hash) %s", dataType, hashType, where))
	}
	sort.Strings(rejected)
	for _, r := range rejected {
		lines = append(lines, clip("rejected "+r, maxDetailLine))
	}
	var seen []string
	for _, d := range devs {
		if d.Size > 0 {
			seen = append(seen, d.Summary()+typeNote(d))
		}
	}
	if len(seen) == 0 {
		lines = append(lines, "no block devices seen")
	}
	for _, s := range seen {
		lines = append(lines, clip("seen "+s, maxDetailLine))
	}
	return &NotFoundError{Summary: b.String(), Lines: lines}
}

// hashOption is the command-line option that carries the volume's root hash.
func hashOption(volume string) string {
	if volume == "usr" {
		return "usrhash"
	}
	return "roothash"
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n-- // never half a character
	}
	return s[:n] + "…"
}

func typeNote(d *blockdev.Device) string {
	if d.PartTypeGUID == "" {
		return ""
	}
	return " TYPE-GUID=" + d.PartTypeGUID
}

// signature loads root-hash-signature=: base64:…, an absolute path, or "auto" for the
// signature partition next to the hash partition. It returns nil without the option.
func (a *activation) signature(p *pair) ([]byte, string, error) {
	s := a.vol.Options.RootHashSignature
	name := a.vol.Name
	switch {
	case s == "":
		return nil, "none", nil
	case strings.HasPrefix(s, "base64:"):
		sig, err := decodeBase64(strings.TrimPrefix(s, "base64:"))
		if err == nil {
			err = checkPKCS7(sig)
		}
		if err != nil {
			return nil, "", fmt.Errorf("verity %s: root-hash-signature=base64:…: %v", name, err)
		}
		return sig, "base64 option", nil
	case s == "auto":
		return a.signatureFromPartition(p)
	}
	sig, err := a.ReadFile(s)
	if err != nil {
		return nil, "", fmt.Errorf("verity %s: root-hash-signature=%s: %w", name, s, err)
	}
	if err := checkPKCS7(sig); err != nil {
		return nil, "", fmt.Errorf("verity %s: root-hash-signature=%s: %v", name, s, err)
	}
	return sig, "file " + s, nil
}

// signatureFromPartition reads the signature partitions on the hash partition's disk and
// takes the one whose rootHash is the volume's.
func (a *activation) signatureFromPartition(p *pair) ([]byte, string, error) {
	_, _, sigType := partitionTypes(a.vol.Name)
	devs, err := a.Devices.Scan()
	if err != nil {
		return nil, "", err
	}
	var tried []string
	for _, d := range devs {
		if !d.IsPartition || d.PartTypeGUID != sigType || d.Parent != p.hash.Parent || d.Size == 0 {
			continue
		}
		if err := a.Devices.EnsureNode(d); err != nil {
			return nil, "", err
		}
		sp, err := a.readSigPartition(d)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", d.Path, err))
			continue
		}
		if !bytes.Equal(sp.RootHash, a.vol.RootHash) {
			tried = append(tried, fmt.Sprintf("%s: signs root hash %s", d.Path, shortHex(sp.RootHash)))
			continue
		}
		return sp.Signature, "partition " + d.Path, nil
	}
	if len(tried) == 0 {
		tried = append(tried, "none found")
	}
	return nil, "", fmt.Errorf("verity %s: root-hash-signature=auto: no partition of type %s on %s holds a signature of %s (%s)", a.vol.Name, sigType, p.hash.Parent, a.rootWhat, strings.Join(tried, "; "))
}

func (a *activation) readSigPartition(d *blockdev.Device) (*SigPartition, error) {
	f, err := a.Open(d.Path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n := min(d.Size, MaxSigPartitionRead)
	b := make([]byte, n)
	if got, err := f.ReadAt(b, 0); int64(got) < n && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading %d bytes: %w", n, err)
	} else {
		b = b[:got]
	}
	return ParseSigPartition(b)
}
