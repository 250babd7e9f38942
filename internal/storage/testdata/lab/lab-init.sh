#!/bin/bash
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs run /run; mount -t tmpfs tmp /tmp
while read m; do insmod /modules/$m 2>&1 | grep -v "File exists" ; done < /modules/order
for i in $(seq 50); do [ -e /dev/vda ] && break; sleep 0.1; done
echo "LAB: modules loaded"; 
if [ -x /lab.sh ]; then /lab.sh 2>&1; fi
echo "LAB: END"
sync; echo o > /proc/sysrq-trigger; sleep 10
