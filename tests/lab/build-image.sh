#!/bin/bash
# Builds the lab's guest: a Debian 12 root with OpenZFS from Debian's own packages.
# Called by lab.py (which computes the cache key from this file and guest-init):
#   build-image.sh ZFS_SERIES MIRROR SECURITY_MIRROR OUTDIR
# Leaves OUTDIR/root.img, OUTDIR/vmlinuz, OUTDIR/initrd.img and OUTDIR/versions.txt, and the
# tree itself in OUTDIR/root: lab.py builds the guest's venv disk in it with chroot, at the
# host's speed instead of under emulation.
set -euo pipefail
series=$1 mirror=$2 security=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)

case "$series" in
    2.1) backports=no ;;
    2.3) backports=yes ;;
    *) echo "build-image.sh: unknown OpenZFS series '$series' (2.1 or 2.3)" >&2; exit 2 ;;
esac

work=$(mktemp -d "$out.partial.XXXXXX")
root=$work/root
unmount_all() {
    for m in dev/pts dev proc sys; do
        if mountpoint -q "$root/$m" 2>/dev/null; then umount -l "$root/$m"; fi
    done
}
cleanup() {
    unmount_all
    # --one-file-system: never follow a bind mount of the host's /dev that failed to go away.
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

step() { printf '[lab build %s] %s: %s\n' "$series" "$(date -u +%H:%M:%S)" "$*"; }

step "debootstrap bookworm (minbase)"
debootstrap --variant=minbase --components=main,contrib bookworm "$root" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; exit 1; }

{
    echo "deb $mirror bookworm main contrib"
    echo "deb $security bookworm-security main contrib"
    [ "$backports" = yes ] && echo "deb $mirror bookworm-backports main contrib"
} > "$root/etc/apt/sources.list"
# The guest never boots a normal init: no services may start during the install.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

in_root() { chroot "$root" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }

step "apt-get update"
in_root apt-get update -q > "$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; exit 1; }

base="linux-image-amd64 linux-headers-amd64 python3 python3-venv kmod udev iproute2 procps
      psmisc lsof git e2fsprogs util-linux ca-certificates rsync sudo systemd
      openssh-server openssh-client"
if [ "$backports" = yes ]; then
    bp=bookworm-backports
    zfs="zfs-dkms/$bp zfsutils-linux/$bp libnvpair3linux/$bp libuutil3linux/$bp
         libzfs6linux/$bp libzpool6linux/$bp"
else
    zfs="zfs-dkms zfsutils-linux"
fi
step "apt-get install kernel, zfs-dkms (builds zfs.ko: minutes), python3"
# shellcheck disable=SC2086
in_root apt-get install -y -q --no-install-recommends $base $zfs >> "$work/apt.log" 2>&1 \
    || { tail -40 "$work/apt.log"; exit 1; }
kver=$(ls "$root/lib/modules" | sort -V | tail -1)
find "$root/lib/modules/$kver" -name 'zfs.ko*' | grep -q . \
    || { echo "build-image.sh: zfs.ko was not built for $kver" >&2; tail -40 "$work/apt.log"; exit 1; }
in_root apt-get clean

install -m 0755 "$here/guest-init" "$root/sbin/lab-init"
mkdir -p "$root/mnt/share" "$root/mnt/src" "$root/mnt/wheels"
echo lab > "$root/etc/hostname"
{
    echo "kernel $kver"
    echo "zfs $(in_root dpkg-query -W -f '${Version}' zfsutils-linux)"
    echo "python $(in_root python3 -c 'import platform; print(platform.python_version())')"
} > "$work/versions.txt"

unmount_all
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
step "root.img ($(du -sh "$root" | cut -f1) of files)"
mke2fs -q -t ext4 -L labroot -d "$root" "$work/root.img" 4G
rm -rf "$out"
mkdir -p "$out"
mv "$work/root.img" "$work/vmlinuz" "$work/initrd.img" "$work/versions.txt" "$root" "$out/"
step "done: $(tr '\n' ' ' < "$out/versions.txt")"
