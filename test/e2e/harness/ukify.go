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

// Ukify returns a command that runs ukify from Debian 13's systemd-ukify package, fetched once
// into the cache with the machine's own Debian mirror (apt lists kept apart from the
// system's, nothing installed) and run with the system's python3 and python3-pefile.
func (c *Cache) Ukify(ctx context.Context, logf Logf) (string, error) {
	dir := c.Path("ukify")
	wrapper := filepath.Join(dir, "ukify")
	if exists(wrapper) {
		return wrapper, nil
	}
	unlock, err := c.Lock("ukify")
	if err != nil {
		return "", err
	}
	defer unlock()
	if exists(wrapper) {
		return wrapper, nil
	}
	uri, err := debianMirror()
	if err != nil {
		return "", err
	}
	logf.printf("fetching ukify: systemd-ukify from Debian %s (%s)", UkifySuite, uri)
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
	if out, err := runCmd(ctx, tmp, "apt-get", append(opts, "download", "systemd-ukify")...); err != nil {
		return "", fmt.Errorf("apt-get download systemd-ukify (%s): %w\n%s", UkifySuite, err, tail(out, 2000))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "systemd-ukify_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("systemd-ukify: expected one .deb, found %v", debs)
	}
	staging := dir + ".new"
	_ = os.RemoveAll(staging)
	if err := os.MkdirAll(filepath.Join(staging, "pkg"), 0o755); err != nil {
		return "", err
	}
	if out, err := runCmd(ctx, "", "dpkg-deb", "-x", debs[0], filepath.Join(staging, "pkg")); err != nil {
		return "", fmt.Errorf("dpkg-deb -x %s: %w\n%s", debs[0], err, out)
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
	logf.printf("ukify: %s (%s)", wrapper, filepath.Base(debs[0]))
	return wrapper, nil
}

// debianMirror is the URI of the machine's Debian bookworm apt source (deb822 or one-line).
func debianMirror() (string, error) {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	files = append(files, "/etc/apt/sources.list")
	list, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	files = append(files, list...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var uri string
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if v, ok := strings.CutPrefix(line, "URIs:"); ok {
				uri = strings.Fields(v)[0]
			}
			if v, ok := strings.CutPrefix(line, "Suites:"); ok && uri != "" && strings.Contains(" "+v+" ", " bookworm ") {
				return uri, nil
			}
			if w := strings.Fields(line); len(w) >= 3 && w[0] == "deb" && w[2] == "bookworm" {
				return w[1], nil
			}
		}
	}
	return "", fmt.Errorf("no Debian bookworm apt source in /etc/apt: cannot fetch systemd-ukify from %s", UkifySuite)
}
