package boot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/pkg/aael"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// Attestation is the measured side of the boot: an event log on the platform's runtime
// registers, and evidence bound to it at the handoff.
type Attestation interface {
	// Start finds the TEE or TPM, checks attest.require and opens the event log. active is
	// false when the machine has nothing to measure into (and nothing was required).
	Start(require config.AttestRequire) (facts stage.Facts, active bool, err error)
	// Measure records a decision in the log and extends it into the registers.
	Measure(ev eventlog.Event) error
	// Evidence writes the platform's evidence, bound to the log and nonce, and releases
	// the registers.
	Evidence(ctx context.Context, nonce []byte) (stage.Facts, error)
	// Platforms are the platforms Start found, TEE first.
	Platforms() []evidence.Platform
	// HostConfig returns what the host set at launch in platform p's report for the guest to
	// check, from a report taken now: SEV-SNP HOST_DATA, TDX MRCONFIGID.
	HostConfig(ctx context.Context, p evidence.Platform) ([]byte, error)
}

// attest finds the TEE or TPM, opens the event log and measures what configured the boot:
// the phase (in the initrd), the config and the command line (which carries roothash=).
// From a unit the device may still be coming up (udev loads its driver): a required one is
// waited for up to devices.timeout.
func (b *Boot) attest(ctx context.Context) (stage.Facts, error) {
	facts, active, err := b.Attest.Start(b.Config.Attest.Require)
	if b.Mode.Units() && b.Config.Attest.Require != config.AttestNone {
		deadline := time.Now().Add(b.Config.Devices.Timeout.Std())
		for err != nil && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				return nil, err
			case <-time.After(200 * time.Millisecond):
			}
			facts, active, err = b.Attest.Start(b.Config.Attest.Require)
		}
	}
	if err != nil {
		return nil, err
	}
	b.dec.Attested, b.dec.Measuring = true, active
	if !active {
		return nil, stage.Skip("no TEE or TPM found and attest.require is none: nothing is measured")
	}
	b.measuring = true
	sum := sha256.Sum256([]byte(b.CmdlineRaw))
	var events []eventlog.Event
	if b.Mode.Initrd() {
		events = append(events, eventlog.Phase("enter-initrd"))
	}
	events = append(events, b.configEvent(), eventlog.Cmdline{SHA256: hex.EncodeToString(sum[:]), Pinned: b.CmdlinePin != ""}.Event())
	for _, ev := range events {
		if err := b.Attest.Measure(ev); err != nil {
			return nil, err
		}
	}
	facts["measured"] = fmt.Sprint(len(events))
	return facts, nil
}

// resumeMeasuring reopens the event log and registers in a unit that runs after the attest
// unit, so that its decisions are measured as PID 1's are. A required platform whose attest
// step did not run stops the step: its decisions would go unmeasured.
func (b *Boot) resumeMeasuring() error {
	if b.measuring || !b.Mode.Units() {
		return nil
	}
	if !b.dec.Attested {
		if b.Config.Attest.Require != config.AttestNone {
			return fmt.Errorf("attest.require is %s but no attest step ran in this boot (is cvmboot-attest.service in the initrd?): this step's decisions would go unmeasured",
				b.Config.Attest.Require)
		}
		return nil
	}
	// A required platform is opened again whatever the decisions say: they are a file in
	// /run, and "nothing to measure" must not be something a file can claim.
	if !b.dec.Measuring && b.Config.Attest.Require == config.AttestNone {
		return nil
	}
	_, active, err := b.Attest.Start(b.Config.Attest.Require)
	if err != nil {
		return err
	}
	b.measuring = active
	return nil
}

func (b *Boot) configEvent() eventlog.Event {
	if i := b.ConfigInfo; i != nil {
		// The lifecycle digested the config already (report.Config).
		return eventlog.Config{SHA256: i.SHA256, Path: i.Path, Found: i.Found, Overrides: i.Overrides}.Event()
	}
	c := eventlog.Config{SHA256: fmt.Sprintf("%x", b.Config.Digest())}
	return c.Event()
}

// measure records a decision when the boot is measuring; a failure fails the stage, since
// evidence missing a decision would misrepresent the boot.
func (b *Boot) measure(ev eventlog.Event) error {
	if !b.measuring {
		return nil
	}
	return b.Attest.Measure(ev)
}

// finishAttestation marks the end of the initramfs phase and writes the evidence.
func (b *Boot) finishAttestation(ctx context.Context) (stage.Facts, error) {
	if !b.measuring {
		return nil, nil
	}
	for _, ev := range []eventlog.Event{eventlog.Phase("leave-initrd"), eventlog.Handoff()} {
		if err := b.Attest.Measure(ev); err != nil {
			return nil, err
		}
	}
	return b.Attest.Evidence(ctx, b.Config.Attest.Nonce)
}

// platformAttestation is the real Attestation over internal/tee and internal/measure.
type platformAttestation struct {
	log      *zap.Logger
	det      *tee.Detection
	events   *measure.Log
	closeTPM func() error
}

func (p *platformAttestation) Start(require config.AttestRequire) (stage.Facts, bool, error) {
	if _, err := tee.MountConfigfs(tee.Options{}); err != nil && !errors.Is(err, tee.ErrNoConfigfs) {
		return nil, false, err
	}
	p.det = tee.Detect(tee.Options{})
	p.log.Info("attestation platform detected", zap.String("platforms", p.det.Summary()))
	if err := p.det.Require(require); err != nil {
		return nil, false, err
	}
	facts := stage.Facts(p.det.Facts())
	if len(p.det.Sources()) == 0 {
		return facts, false, nil
	}
	ext, closeTPM, err := p.det.Registers()
	if err != nil {
		return nil, false, err
	}
	p.closeTPM = closeTPM
	if p.events, err = measure.Open(measure.DefaultLogPath, ext...); err != nil {
		closeTPM()
		return nil, false, err
	}
	for _, e := range ext {
		if e.Kind() == eventlog.KindRTMR {
			// Trustee replays RTMR 3 from the Attestation Agent's log: each extend gets an entry.
			p.events.AAEL = aael.Path
			facts["aael"] = aael.Path
		}
	}
	facts["eventlog"] = measure.DefaultLogPath
	return facts, true, nil
}

func (p *platformAttestation) Measure(ev eventlog.Event) error {
	rec, err := p.events.Measure(ev)
	if err != nil {
		return fmt.Errorf("measuring %s: %w", ev.Type, err)
	}
	fields := []zap.Field{zap.String("event", ev.Type), zap.Int("recnum", rec.RecNum)}
	if rec.PCR != nil {
		fields = append(fields, zap.Int("pcr", *rec.PCR))
	}
	if rec.RTMR != nil {
		fields = append(fields, zap.Int("rtmr", *rec.RTMR))
	}
	p.log.Info("measured", fields...)
	return nil
}

func (p *platformAttestation) Platforms() []evidence.Platform {
	var out []evidence.Platform
	for _, s := range p.det.Sources() {
		out = append(out, s.Platform())
	}
	return out
}

func (p *platformAttestation) HostConfig(ctx context.Context, pl evidence.Platform) ([]byte, error) {
	for _, s := range p.det.Sources() {
		if s.Platform() == pl {
			return tee.HostConfig(ctx, s)
		}
	}
	return nil, fmt.Errorf("no %s on this machine", pl)
}

func (p *platformAttestation) Evidence(ctx context.Context, nonce []byte) (stage.Facts, error) {
	defer p.closeTPM()
	ev, err := tee.Collect(ctx, p.events, p.det.Sources(), nonce, evidence.DefaultDir)
	if err != nil {
		return nil, err
	}
	return stage.Facts(tee.Facts(ev, evidence.DefaultDir)), nil
}
