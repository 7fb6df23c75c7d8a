#!/bin/sh
# Install the netfs plumbing: a /usr/sbin/netfs wrapper (mount.fuse and
# mount(8) run helpers without PATH), the mount helper as
# /sbin/mount.fuse.netfs and /sbin/mount.netfs, the systemd unit and the man
# page.  Idempotent: running it again rewrites the same files.
#
#   sh mount-helper/install.sh [--netfs PATH] [--prefix DIR] [--sbin-dir DIR]
#                              [--unit-dir DIR] [--dest-root DIR] [--no-systemd]
#
#   --netfs PATH     the netfs executable to run (default: the project's
#                    .venv/bin/netfs, else `command -v netfs`)
#   --prefix DIR     where the wrapper and man page go (default /usr):
#                    DIR/sbin/netfs, DIR/share/man/man8/netfs.8
#   --sbin-dir DIR   where mount(8) looks for mount.netfs and mount.fuse.netfs
#                    (default /sbin)
#   --unit-dir DIR   where netfs.service goes (default /etc/systemd/system)
#   --dest-root DIR  staging root: files are written under DIR, but refer to
#                    each other by their final paths (like DESTDIR)
#   --no-systemd     do not install the unit
#   --uninstall      remove what an install with the same options wrote
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")

netfs=""
prefix=/usr
sbin_dir=/sbin
unit_dir=/etc/systemd/system
dest_root=""
systemd=1
uninstall=0

die() {
    echo "install.sh: $*" >&2
    exit 1
}

need_arg() {
    [ $# -ge 2 ] || die "$1 needs an argument"
}

while [ $# -gt 0 ]; do
    case $1 in
        --netfs) need_arg "$@"; netfs=$2; shift 2 ;;
        --netfs=*) netfs=${1#*=}; shift ;;
        --prefix) need_arg "$@"; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --sbin-dir) need_arg "$@"; sbin_dir=$2; shift 2 ;;
        --sbin-dir=*) sbin_dir=${1#*=}; shift ;;
        --unit-dir) need_arg "$@"; unit_dir=$2; shift 2 ;;
        --unit-dir=*) unit_dir=${1#*=}; shift ;;
        --dest-root | --destdir) need_arg "$@"; dest_root=$2; shift 2 ;;
        --dest-root=* | --destdir=*) dest_root=${1#*=}; shift ;;
        --no-systemd) systemd=0; shift ;;
        --uninstall) uninstall=1; shift ;;
        -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

for d in "$prefix" "$sbin_dir" "$unit_dir"; do
    case $d in /*) ;; *) die "'$d' is not an absolute path" ;; esac
done
case $dest_root in "" | /*) ;; *) dest_root=$(pwd)/$dest_root ;; esac
dest_root=${dest_root%/}

wrapper=$prefix/sbin/netfs
# one script, installed under both names: mount(8) runs mount.netfs for
# `-t netfs`, mount.fuse.netfs for `-t fuse.netfs`
helper=$sbin_dir/mount.fuse.netfs
helper_short=$sbin_dir/mount.netfs
unit=$unit_dir/netfs.service
manpage=$prefix/share/man/man8/netfs.8

if [ "$uninstall" = 1 ]; then
    removed="$wrapper $helper $helper_short $manpage"
    [ "$systemd" = 1 ] && removed="$removed $unit"
    for f in $removed; do rm -f "$dest_root$f"; done
    echo "removed $removed${dest_root:+ under $dest_root}"
    exit 0
fi

if [ -z "$netfs" ]; then
    if [ -x "$top/.venv/bin/netfs" ]; then
        netfs=$top/.venv/bin/netfs
    else
        netfs=$(command -v netfs || true)
    fi
fi
[ -n "$netfs" ] || die "no netfs executable found; give --netfs PATH"
case $netfs in /*) ;; *) netfs=$(cd "$(dirname "$netfs")" && pwd)/$(basename "$netfs") ;; esac
[ -x "$netfs" ] || die "$netfs is not executable"
[ "$netfs" != "$wrapper" ] || die "--netfs must not be the wrapper itself ($wrapper)"

# install_file SRC-CONTENT-ON-STDIN DEST MODE: write atomically, only if changed.
install_file() {
    dest=$dest_root$1
    mode=$2
    mkdir -p "$(dirname "$dest")"
    tmp=$dest.tmp.$$
    cat > "$tmp"
    chmod "$mode" "$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$dest"
    fi
    echo "installed $dest"
}

install_file "$wrapper" 755 <<WRAPPER
#!/bin/sh
# netfs wrapper installed by netfs's mount-helper/install.sh: mount(8) and
# mount.fuse run helpers without PATH, so the real executable is named here.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
exec '$netfs' "\$@"
WRAPPER

for h in "$helper" "$helper_short"; do
    sed "s|^NETFS=.*|NETFS='$wrapper'|" "$here/mount.fuse.netfs" | install_file "$h" 755
done

if [ "$systemd" = 1 ]; then
    sed "s|/usr/sbin/netfs|$wrapper|g" "$here/netfs.service" | install_file "$unit" 644
fi

if [ -f "$top/man/netfs.8" ]; then
    install_file "$manpage" 644 < "$top/man/netfs.8"
fi

if [ -z "$dest_root" ] && [ "$systemd" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
