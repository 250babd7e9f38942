package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// WriteArtifacts saves what is needed to investigate a failed boot into dir:
// the serial log, the qemu and swtpm command lines, the disk image path and a
// summary. notes (file name → content) adds anything scenario specific.
func WriteArtifacts(dir string, res *BootResult, diskPath string, notes map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files := map[string]string{"disk-path.txt": diskPath + "\n"}
	if res != nil {
		files["serial.log"] = res.Serial
		files["qemu-cmdline.txt"] = ShellQuote(res.QemuArgs) + "\n"
		if len(res.SwtpmArgs) > 0 {
			files["swtpm-cmdline.txt"] = ShellQuote(res.SwtpmArgs) + "\n"
		}
		files["result.txt"] = fmt.Sprintf("reason: %s\ndetail: %s\nduration: %s\nshutdown events: %s\nqemu stderr:\n%s",
			res.Reason, res.Detail, res.Duration, strings.Join(res.ShutdownEvents, ", "), res.QemuStderr)
	}
	for name, content := range notes {
		files[name] = content
	}
	for name, content := range files {
		p := filepath.Join(dir, filepath.Base(name))
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("write artifact %s: %w", p, err)
		}
	}
	return nil
}
