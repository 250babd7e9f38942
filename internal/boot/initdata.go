package boot

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/coco"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/initdata"
)

// InitdataSource finds Confidential Containers' initdata and installs its files (internal/coco).
type InitdataSource interface {
	// Scan reads every whole disk once: the one carrying the initdata magic and its document,
	// or "" and nil.
	Scan() (device string, raw []byte, err error)
	// ReadDevice reads the document of the initdata block device at path.
	ReadDevice(path string) ([]byte, error)
	// ReadFile reads the document from a file; a missing file is os.ErrNotExist.
	ReadFile(path string) ([]byte, error)
	// Install writes the document and the files the guest components read; it returns them.
	Install(doc *initdata.Document) ([]string, error)
}

// initdata takes the host's initdata document where initdata.source says, refuses one that the
// TEE's launch configuration (SEV-SNP HOST_DATA, TDX MRCONFIGID) contradicts, measures its
// digest (on a TPM also extending PCR 8 once, as Confidential Containers does) and writes its
// files for the guest components. Measured before it is written: nothing reads the files before
// the verifier can know them.
func (b *Boot) initdata(ctx context.Context) (stage.Facts, error) {
	cfg := b.Config.Initdata
	if cfg.Source == config.InitdataNone || cfg.Source == "" {
		return nil, stage.Skip("initdata.source is none: no initdata is read")
	}
	if err := b.resumeMeasuring(); err != nil {
		return nil, err
	}
	raw, where, err := b.findInitdata(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if raw == nil {
		if cfg.Required {
			return nil, fmt.Errorf("initdata.required is true but no initdata was found (initdata.source %s: %s)", cfg.Source, where)
		}
		if err := b.measure(eventlog.Initdata{Found: false, Source: where}.Event()); err != nil {
			return nil, err
		}
		return nil, stage.Skip("no initdata (%s)", where)
	}
	doc, err := initdata.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("initdata from %s: %w", where, err)
	}
	digest := doc.Digest()
	ev := eventlog.Initdata{Found: true, Source: where, Version: doc.Version, Algorithm: doc.Algorithm, Digest: hex.EncodeToString(digest)}
	bound, err := b.bindInitdata(ctx, doc, digest, where)
	if err != nil {
		return nil, err
	}
	ev.Bound = bound
	if err := b.measure(ev.Event()); err != nil {
		return nil, err
	}
	written, err := b.InitdataSource.Install(doc)
	if err != nil {
		return nil, err
	}
	facts := stage.Facts{"source": where, "algorithm": doc.Algorithm, "digest": ev.Digest, "files": strings.Join(written, ",")}
	if len(bound) > 0 {
		facts["bound"] = strings.Join(bound, ",")
	}
	if ign := doc.Ignored(); len(ign) > 0 {
		facts["ignored"] = strings.Join(ign, ",")
	}
	return facts, nil
}

// findInitdata returns the document's bytes and where they came from; nil bytes when the
// source holds none (where then says where the boot looked).
func (b *Boot) findInitdata(ctx context.Context, cfg config.Initdata) ([]byte, string, error) {
	switch cfg.Source {
	case config.InitdataAuto:
		dev, raw, err := b.InitdataSource.Scan()
		if err != nil || dev == "" {
			return nil, "every disk (none carries the initdata magic)", err
		}
		return raw, "device " + dev, nil
	case config.InitdataDevice:
		dev, err := b.Devices.Wait(ctx, cfg.Path, b.Config.Devices.Timeout.Std())
		if err != nil {
			if cfg.Required {
				return nil, "", fmt.Errorf("initdata device: %w", err)
			}
			return nil, "device " + cfg.Path + " (absent)", nil
		}
		raw, err := b.InitdataSource.ReadDevice(dev)
		if errors.Is(err, initdata.ErrNoMagic) {
			return nil, "", fmt.Errorf("initdata device %s (%s): %w", dev, cfg.Path, err)
		}
		return raw, "device " + dev, err
	case config.InitdataFile:
		raw, err := b.InitdataSource.ReadFile(cfg.Path)
		if errors.Is(err, os.ErrNotExist) {
			return nil, "file " + cfg.Path + " (absent)", nil
		}
		return raw, "file " + cfg.Path, err
	}
	return nil, "", fmt.Errorf("initdata.source is %q: expected none, auto, device or file", cfg.Source)
}

// bindInitdata checks the digest against what each platform binds it with and returns the
// bindings: the TEE's launch field must equal the digest (fitted as Trustee does), and a
// TPM gets PCR 8.
func (b *Boot) bindInitdata(ctx context.Context, doc *initdata.Document, digest []byte, where string) ([]string, error) {
	if !b.measuring {
		b.log().Warn("initdata is bound to nothing: no TEE or TPM measures this boot", zap.String("source", where))
		return nil, nil
	}
	var bound []string
	tpm := false
	for _, p := range b.Attest.Platforms() {
		var want []byte
		var field, binding string
		switch p {
		case evidence.PlatformSNP:
			want, field, binding = initdata.HostData(digest), "SEV-SNP HOST_DATA", eventlog.BoundHostData
		case evidence.PlatformTDX:
			want, field, binding = initdata.MRConfigID(digest), "TDX MRCONFIGID", eventlog.BoundMRConfigID
		case evidence.PlatformTPM:
			tpm = true
			continue
		default:
			continue
		}
		got, err := b.Attest.HostConfig(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("initdata: reading the %s: %w", field, err)
		}
		if !bytes.Equal(got, want) {
			return nil, fmt.Errorf("initdata from %s has %s digest %x, but the %s the host launched this VM with is %x (expected %x): the host's initdata is not the one it bound",
				where, doc.Algorithm, digest, field, got, want)
		}
		bound = append(bound, binding)
	}
	if tpm {
		if doc.Algorithm == "sha256" {
			bound = append(bound, eventlog.BoundPCR8)
		} else if len(bound) == 0 {
			return nil, fmt.Errorf("initdata from %s uses %s, but on a vTPM only a sha256 document can be bound (PCR 8 takes a 32-byte digest: Trustee's and the Attestation Agent's rule)", where, doc.Algorithm)
		} else {
			b.log().Warn("initdata not extended into PCR 8: only a sha256 document is (the TEE's launch field binds it)", zap.String("algorithm", doc.Algorithm))
		}
	}
	return bound, nil
}

// cocoInitdata is InitdataSource on the real disks and files.
type cocoInitdata struct{}

func (cocoInitdata) Scan() (string, []byte, error) {
	return coco.Disks{SysBlock: "/sys/block", Dev: "/dev"}.Scan()
}
func (cocoInitdata) ReadDevice(path string) ([]byte, error) { return coco.ReadDevice(path) }
func (cocoInitdata) ReadFile(path string) ([]byte, error)   { return coco.ReadFile(path) }
func (cocoInitdata) Install(doc *initdata.Document) ([]string, error) {
	return coco.Install(coco.Dir, doc)
}
