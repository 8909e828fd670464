#!/bin/bash
# The guest's boot after PID 1 (guest-init) mounted the share: mounts, udev, zfs.ko, then the
# run's command (/mnt/share/run). Its output goes to the console and /mnt/share/output, its exit
# code to /mnt/share/rc: that is how lab.py learns the outcome.
# Under systemd (lab.init=systemd) /run, /dev/pts and /dev/shm are its own already.
if [ ! -d /run/systemd/system ]; then
    mkdir -p /dev/pts /dev/shm
    mount -t devpts devpts /dev/pts
    mount -t tmpfs tmpfs /dev/shm
    mount -t tmpfs tmpfs /run
fi
mount -t tmpfs tmpfs /tmp
hostname lab
ip link set lo up
for tag in src wheels; do
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro "$tag" "/mnt/$tag"
done
# zpool create on whole disks needs udev to see the partitions it writes.
/lib/systemd/systemd-udevd --daemon > /dev/null 2>&1
udevadm trigger > /dev/null 2>&1
udevadm settle > /dev/null 2>&1
if ! modprobe zfs; then
    echo "lab-boot: modprobe zfs failed" > /dev/console
    echo 125 > /mnt/share/rc
    exit
fi
echo "lab-init: zfs ready" > /dev/console
cd /root
export TERM=dumb
/mnt/share/run > >(tee /mnt/share/output > /dev/console) 2>&1 < /dev/null
rc=$?
wait $! 2>/dev/null
echo $rc > /mnt/share/rc
