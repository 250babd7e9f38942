package harness

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// UkifySuite is the Debian suite whose systemd-ukify the e2e uses: Debian 12 has none.
const UkifySuite = "trixie"

// Ukify returns a command that runs ukify from Debian 13's systemd-ukify package and the
// systemd-stub of the same version (systemd-boot-efi): ukify 257 rewrites .sbat larger than
// an older stub leaves room for. Both are fetched once into the cache with the machine's
// Debian mirror (apt lists kept apart from the system's, nothing installed); ukify runs with
// the system's python3 and python3-pefile.
func (c *Cache) Ukify(ctx context.Context, logf Logf) (ukify, stub string, err error) {
	dir := c.Path("ukify-" + UkifySuite)
	wrapper := filepath.Join(dir, "ukify")
	stub = filepath.Join(dir, "pkg", "usr", "lib", "systemd", "boot", "efi", "linuxx64.efi.stub")
	if exists(wrapper) && exists(stub) {
		return wrapper, stub, nil
	}
	unlock, err := c.Lock("ukify")
	if err != nil {
		return "", "", err
	}
	defer unlock()
	if exists(wrapper) && exists(stub) {
		return wrapper, stub, nil
	}
	u, err := c.fetchUkify(ctx, logf, dir)
	return u, stub, err
}

func (c *Cache) fetchUkify(ctx context.Context, logf Logf, dir string) (string, error) {
	wrapper := filepath.Join(dir, "ukify")
	uri := debianMirror()
	logf.printf("fetching ukify: systemd-ukify and systemd-boot-efi from Debian %s (%s)", UkifySuite, uri)
	tmp, err := os.MkdirTemp(c.Path(), ".ukify-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	for _, d := range []string{"sources", "lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(tmp, d), 0o755); err != nil {
			return "", err
		}
	}
	src := fmt.Sprintf("Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n", uri, UkifySuite)
	if err := os.WriteFile(filepath.Join(tmp, "sources", UkifySuite+".sources"), []byte(src), 0o644); err != nil {
		return "", err
	}
	opts := []string{"-o", "Dir::Etc::sourcelist=/dev/null", "-o", "Dir::Etc::sourceparts=" + filepath.Join(tmp, "sources"),
		"-o", "Dir::State::Lists=" + filepath.Join(tmp, "lists"), "-o", "Dir::Cache=" + filepath.Join(tmp, "cache"),
		"-o", "APT::Sandbox::User=root"}
	if out, err := runCmd(ctx, tmp, "apt-get", append(opts, "-qq", "update")...); err != nil {
		return "", fmt.Errorf("apt-get update (%s): %w\n%s", UkifySuite, err, tail(out, 2000))
	}
	if out, err := runCmd(ctx, tmp, "apt-get", append(opts, "download", "systemd-ukify", "systemd-boot-efi")...); err != nil {
		return "", fmt.Errorf("apt-get download systemd-ukify systemd-boot-efi (%s): %w\n%s", UkifySuite, err, tail(out, 2000))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 2 {
		return "", fmt.Errorf("systemd-ukify, systemd-boot-efi: expected two .deb files, found %v", debs)
	}
	staging := dir + ".new"
	_ = os.RemoveAll(staging)
	if err := os.MkdirAll(filepath.Join(staging, "pkg"), 0o755); err != nil {
		return "", err
	}
	for _, deb := range debs {
		if out, err := runCmd(ctx, "", "dpkg-deb", "-x", deb, filepath.Join(staging, "pkg")); err != nil {
			return "", fmt.Errorf("dpkg-deb -x %s: %w\n%s", deb, err, out)
		}
	}
	// ukify's shebang is env python3, which may be another interpreter than the system's with
	// its python3-pefile.
	script := fmt.Sprintf("#!/bin/sh\nexec /usr/bin/python3 %s \"$@\"\n", filepath.Join(dir, "pkg", "usr", "bin", "ukify"))
	if err := os.WriteFile(filepath.Join(staging, "ukify"), []byte(script), 0o755); err != nil {
		return "", err
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(staging, dir); err != nil {
		return "", err
	}
	logf.printf("ukify: %s (%s)", wrapper, strings.Join([]string{filepath.Base(debs[0]), filepath.Base(debs[1])}, ", "))
	return wrapper, nil
}

// DebianMirror is used when the machine has no Debian apt source (Ubuntu): Debian's own.
const DebianMirror = "http://deb.debian.org/debian"

// debianMirror is the URI of the machine's enabled Debian bookworm apt source (deb822 stanzas
// or one-line entries, options in brackets skipped), else DebianMirror.
func debianMirror() string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	files = append(files, "/etc/apt/sources.list")
	list, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	files = append(files, list...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if strings.HasSuffix(f, ".sources") {
			for _, stanza := range strings.Split(string(b), "\n\n") {
				fields := map[string]string{}
				for _, line := range strings.Split(stanza, "\n") {
					if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "#") {
						fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
					}
				}
				uris, suites := strings.Fields(fields["uris"]), " "+fields["suites"]+" "
				if len(uris) > 0 && strings.Contains(suites, " bookworm ") && !strings.EqualFold(fields["enabled"], "no") &&
					strings.Contains(strings.ToLower(fields["signed-by"]), "debian") {
					return uris[0]
				}
			}
			continue
		}
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			w := strings.Fields(sc.Text())
			if len(w) > 1 && w[0] == "deb" && strings.HasPrefix(w[1], "[") {
				for len(w) > 1 && !strings.HasSuffix(w[1], "]") {
					w = append(w[:1], w[2:]...)
				}
				w = append(w[:1], w[2:]...)
			}
			if len(w) >= 3 && w[0] == "deb" && w[2] == "bookworm" {
				return w[1]
			}
		}
	}
	return DebianMirror
}
