package harness

import (
	"context"
	"debug/pe"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Firmware paths from Debian's ovmf package (4 MiB variant, no Secure Boot keys).
const (
	OVMFCode     = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars     = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	SystemdStub  = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	ukiSectAlign = 0x1000
)

// CopyOVMFVars writes a private copy of the OVMF variable store into dir;
// every boot needs its own because the firmware writes to it.
func CopyOVMFVars(dir string) (string, error) {
	if !exists(OVMFCode) {
		return "", fmt.Errorf("OVMF firmware %s missing (apt-get install ovmf)", OVMFCode)
	}
	dst := filepath.Join(dir, "OVMF_VARS.fd")
	if err := copyFile(OVMFVars, dst, 0o644); err != nil {
		return "", fmt.Errorf("copy OVMF vars: %w", err)
	}
	return dst, nil
}

// UKISpec describes a unified kernel image.
type UKISpec struct {
	Stub      string // systemd EFI stub; SystemdStub when empty
	Kernel    string // vmlinuz
	Initrd    string // initramfs (any format the kernel accepts)
	Cmdline   string
	OSRelease string // os-release text for .osrel; a small default when empty
}

// UKISection is one section added to the stub, with its virtual address.
type UKISection struct {
	Name string
	File string
	Size int64
	VMA  uint64
}

// Fixed addresses that have booted on this machine's stub; used unless they
// would overlap the stub or each other.
var fixedUKIVMAs = []uint64{0x20000, 0x30000, 0x2000000, 0x3000000}

// PlanUKISections assigns VMAs to the .osrel, .cmdline, .linux and .initrd
// sections (given in that order) after a stub whose image ends at stubEnd.
// It keeps the fixed addresses when they fit and otherwise packs sections
// one after another, page aligned.
func PlanUKISections(stubEnd uint64, sections []UKISection) []UKISection {
	out := append([]UKISection(nil), sections...)
	fits := len(out) == len(fixedUKIVMAs) && stubEnd <= fixedUKIVMAs[0]
	for i := range out {
		if !fits {
			break
		}
		end := fixedUKIVMAs[i] + uint64(out[i].Size)
		if i+1 < len(fixedUKIVMAs) && end > fixedUKIVMAs[i+1] {
			fits = false
		}
	}
	if fits {
		for i := range out {
			out[i].VMA = fixedUKIVMAs[i]
		}
		return out
	}
	next := alignUp(stubEnd, ukiSectAlign)
	for i := range out {
		out[i].VMA = next
		next = alignUp(next+uint64(out[i].Size), ukiSectAlign)
	}
	return out
}

// StubImageEnd returns the end of the stub's highest section as a VMA
// (image base + virtual address + size).
func StubImageEnd(stub string) (uint64, error) {
	f, err := pe.Open(stub)
	if err != nil {
		return 0, fmt.Errorf("EFI stub %s: %w", stub, err)
	}
	defer f.Close()
	var base uint64
	switch oh := f.OptionalHeader.(type) {
	case *pe.OptionalHeader64:
		base = oh.ImageBase
	case *pe.OptionalHeader32:
		base = uint64(oh.ImageBase)
	}
	var end uint64
	for _, s := range f.Sections {
		size := uint64(s.VirtualSize)
		if size < uint64(s.Size) {
			size = uint64(s.Size)
		}
		if e := base + uint64(s.VirtualAddress) + size; e > end {
			end = e
		}
	}
	if end == 0 {
		return 0, fmt.Errorf("EFI stub %s: no sections", stub)
	}
	return end, nil
}

// BuildUKI assembles the UKI at out with objcopy and returns the section plan.
func BuildUKI(ctx context.Context, spec UKISpec, out string) ([]UKISection, error) {
	stub := spec.Stub
	if stub == "" {
		stub = SystemdStub
	}
	stubEnd, err := StubImageEnd(stub)
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(filepath.Dir(out), ".uki-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	osrel := spec.OSRelease
	if osrel == "" {
		osrel = "ID=cvmboot-e2e\nNAME=\"cvmboot e2e\"\nPRETTY_NAME=\"cvmboot e2e test image\"\n"
	}
	osrelFile := filepath.Join(work, "osrel")
	cmdlineFile := filepath.Join(work, "cmdline")
	if err := os.WriteFile(osrelFile, []byte(osrel), 0o644); err != nil {
		return nil, err
	}
	// The stub passes the section verbatim; a trailing NUL keeps old stubs happy.
	if err := os.WriteFile(cmdlineFile, []byte(strings.TrimSpace(spec.Cmdline)+"\x00"), 0o644); err != nil {
		return nil, err
	}
	var sections []UKISection
	for _, s := range []struct{ name, file string }{
		{".osrel", osrelFile}, {".cmdline", cmdlineFile}, {".linux", spec.Kernel}, {".initrd", spec.Initrd},
	} {
		st, err := os.Stat(s.file)
		if err != nil {
			return nil, fmt.Errorf("UKI section %s: %w", s.name, err)
		}
		sections = append(sections, UKISection{Name: s.name, File: s.file, Size: st.Size()})
	}
	sections = PlanUKISections(stubEnd, sections)
	var args []string
	for _, s := range sections {
		args = append(args, "--add-section", s.Name+"="+s.File,
			"--change-section-vma", fmt.Sprintf("%s=%#x", s.Name, s.VMA))
	}
	args = append(args, stub, out)
	if o, err := runCmd(ctx, "", "objcopy", args...); err != nil {
		return nil, fmt.Errorf("objcopy %s: %w\n%s", strings.Join(args, " "), err, o)
	}
	return sections, nil
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) / a * a }

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}
