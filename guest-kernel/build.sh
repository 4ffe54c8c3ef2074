#!/usr/bin/env bash
# Build husk's guest kernel: an uncompressed vmlinux from Debian's
# linux-source-6.12, with husk's patches (patches/*.patch) and configuration
# fragment (husk.config) applied on top of `make tinyconfig`.
#
# The result is cached by a hash of every input (the source tarball, the
# patches, the fragment and this script), so a second run is instant.
#
#   guest-kernel/build.sh            build (or find) the kernel, print its path last
#                                    (a bzImage of the same kernel lies beside it)
#   guest-kernel/build.sh --print    print the path the kernel would have, build nothing
#
# Environment:
#   HUSK_KERNEL_SOURCE  the source tarball (default /usr/src/linux-source-6.12.tar.xz,
#                       from `apt-get install linux-source-6.12`)
#   HUSK_CACHE_DIR      cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/husk)
#   HUSK_KERNEL_JOBS    parallel make jobs (default: number of CPUs)
#   HUSK_KERNEL_KEEP_BUILD=1  keep the build tree beside the cached vmlinux
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src_tar=${HUSK_KERNEL_SOURCE:-/usr/src/linux-source-6.12.tar.xz}
cache_root=${HUSK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/husk}
jobs=${HUSK_KERNEL_JOBS:-$(nproc)}

say() { printf 'guest-kernel: %s\n' "$*" >&2; }
die() { printf 'guest-kernel: error: %s\n' "$*" >&2; exit 1; }

if [[ ! -r $src_tar ]]; then
    die "kernel source $src_tar not found
hint: install it with 'apt-get install linux-source-6.12', or point HUSK_KERNEL_SOURCE at the tarball"
fi

# The cache key: every input that changes the result.
key=$(
    {
        printf 'src %s\n' "$(stat -c '%s %Y' "$src_tar") $(basename "$src_tar")"
        sha256sum "$here/build.sh" "$here/husk.config" "$here"/patches/*.patch | awk '{print $1}'
    } | sha256sum | cut -c1-16
)
out_dir=$cache_root/kernel/$key
vmlinux=$out_dir/vmlinux

if [[ ${1:-} == --print ]]; then
    echo "$vmlinux"
    exit 0
fi

if [[ -s $vmlinux ]]; then
    say "cached: $vmlinux"
    echo "$vmlinux"
    exit 0
fi

# Build dependencies: fail early and say which package provides each.
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (package $2)"); }
need gcc gcc
need make make
need flex flex
need bison bison
need bc bc
need perl perl
need xz xz-utils
need patch patch
need lz4 lz4
[[ -e /usr/include/gelf.h ]] || missing+=("gelf.h (package libelf-dev)")
[[ -e /usr/include/openssl/ssl.h ]] || missing+=("openssl headers (package libssl-dev)")
if ((${#missing[@]})); then
    die "missing build dependencies: ${missing[*]}
hint: apt-get install gcc make flex bison bc perl xz-utils patch lz4 libelf-dev libssl-dev"
fi

mkdir -p "$out_dir"
lock=$out_dir/.lock
exec 9>"$lock"
if ! flock -n 9; then
    say "another build of $key is running; waiting for it"
    flock 9
fi
if [[ -s $vmlinux ]]; then
    echo "$vmlinux"
    exit 0
fi

start=$(date +%s)
work=$out_dir/build
rm -rf "$work"
mkdir -p "$work"
log=$out_dir/build.log
: >"$log"

say "[1/5] unpacking $(basename "$src_tar")"
tar -xf "$src_tar" -C "$work" --strip-components=1

say "[2/5] applying $(ls "$here"/patches/*.patch | wc -l) husk patches"
for p in "$here"/patches/*.patch; do
    patch -d "$work" -p1 --forward --quiet <"$p" >>"$log" 2>&1 || die "patch $(basename "$p") does not apply; see $log"
done

say "[3/5] configuring (tinyconfig + husk.config)"
make -C "$work" tinyconfig >>"$log" 2>&1 || die "make tinyconfig failed; see $log"
"$work/scripts/kconfig/merge_config.sh" -m -O "$work" "$work/.config" "$here/husk.config" >>"$log" 2>&1 \
    || die "merging husk.config failed; see $log"
make -C "$work" olddefconfig >>"$log" 2>&1 || die "make olddefconfig failed; see $log"
# Every option in the fragment must have survived dependency resolution.
bad=()
while IFS= read -r line; do
    case $line in
    CONFIG_*=*)
        grep -qxF "$line" "$work/.config" || bad+=("$line")
        ;;
    "# CONFIG_"*" is not set")
        opt=${line#\# }
        opt=${opt%% *}
        if grep -q "^$opt=" "$work/.config"; then bad+=("$line"); fi
        ;;
    esac
done <"$here/husk.config"
if ((${#bad[@]})); then
    die "these husk.config settings did not take effect (a dependency is missing): ${bad[*]}"
fi

say "[4/5] compiling vmlinux and bzImage with $jobs jobs (log: $log)"
make -C "$work" -j"$jobs" vmlinux bzImage >>"$log" 2>&1 &
make_pid=$!
while kill -0 "$make_pid" 2>/dev/null; do
    sleep 10
    n=$(grep -c '^  CC ' "$log" || true)
    say "      ... $n files compiled, $(($(date +%s) - start)) s"
done
wait "$make_pid" || {
    tail -n 30 "$log" >&2
    die "kernel build failed; see $log"
}

say "[5/5] caching"
cp "$work/vmlinux" "$vmlinux.tmp"
cp "$work/arch/x86/boot/bzImage" "$out_dir/bzImage"
cp "$work/.config" "$out_dir/config"
strip --strip-debug "$vmlinux.tmp" 2>/dev/null || true
mv "$vmlinux.tmp" "$vmlinux"
[[ ${HUSK_KERNEL_KEEP_BUILD:-0} == 1 ]] || rm -rf "$work"
say "built in $(($(date +%s) - start)) s: $(du -h "$vmlinux" | cut -f1) $vmlinux"
echo "$vmlinux"
