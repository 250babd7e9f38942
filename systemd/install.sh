#!/bin/sh
# Installs cvmboot into a root tree: install.sh DESTDIR BINARY [CONFIG]
# (`make install DESTDIR=… [CONFIG=…]`; the e2e harness uses it for the images it builds).
set -eu
dest=${1:?usage: install.sh DESTDIR BINARY [CONFIG]}
bin=${2:?usage: install.sh DESTDIR BINARY [CONFIG]}
cfg=${3:-}
here=$(dirname "$0")
install -D -m 0755 "$bin" "$dest/usr/bin/cvmboot"
for unit in "$here"/*.service "$here"/*.socket; do
	install -D -m 0644 "$unit" "$dest/usr/lib/systemd/system/$(basename "$unit")"
done
# Units of earlier versions, which cvmboot-root.service replaced: left behind they would run
# steps that no longer exist alone, without the generator's FailureAction=.
for old in cvmboot-overlay.service cvmboot-storage.service; do
	rm -f "$dest/usr/lib/systemd/system/$old" "$dest"/etc/systemd/system/*/"$old"
done
install -D -m 0755 "$here/cvmboot-generator" "$dest/usr/lib/systemd/system-generators/cvmboot-generator"
for f in "$here"/dracut/90cvmboot/*; do
	# dracut runs module-setup.sh; the rest is data.
	install -D -m 0755 "$f" "$dest/usr/lib/dracut/modules.d/90cvmboot/$(basename "$f")"
done
install -D -m 0644 "$here/dracut/90-cvmboot.conf" "$dest/usr/lib/dracut/dracut.conf.d/90-cvmboot.conf"
if [ -n "$cfg" ]; then
	install -D -m 0644 "$cfg" "$dest/etc/cvmboot/config.yaml"
fi
