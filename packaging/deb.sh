#!/usr/bin/env bash
# deb.sh OUTDIR -- build the Debian package and check it (`make deb`).
#
# dpkg-buildpackage wants debian/ at the root of the source tree; the repository keeps it in
# packaging/debian so the root stays clean. So: copy the tree (the files git knows, plus new
# ones it does not ignore) to OUTDIR/src/batchd-VERSION, put packaging/debian there as
# debian/, and build the binary package there (-us -uc -b). Then, on the .deb:
#   - its file list (dpkg-deb -c) has the files expected and no test or bench program;
#   - its control data recommends redis-server and postgresql and lists the conffile;
#   - unpacked into a scratch root (dpkg -x), that root's batchd checks that root's
#     /etc/batchd/batchd.yaml (--check-config), and test/pkg_unit.sh runs systemd-analyze
#     verify and security on that root's unit.
# Output: OUTDIR/batchd_VERSION_ARCH.deb (with .buildinfo, .changes), OUTDIR/root.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-build-deb}" && cd "${1:-build-deb}" && pwd)
cd "$top"
version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
stage=$out/src/batchd-$version
fail() { echo "deb: FAIL: $*" >&2; exit 1; }

rm -rf "$out/src" "$out/root" "$out"/batchd_*
mkdir -p "$stage"
if git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$top" ls-files -z --cached --others --exclude-standard |
    (cd "$top" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _) |
    tar -C "$top" --null -T - -cf - | tar -C "$stage" -xf -
else
  tar -C "$top" --exclude='./build*' --exclude=./var --exclude=node_modules -cf - . |
    tar -C "$stage" -xf -
fi
rm -rf "$stage/debian"
cp -r packaging/debian "$stage/debian"

echo "deb: building batchd $version in $stage" >&2
t0=$(date +%s)
(cd "$stage" && dpkg-buildpackage -us -uc -b -j"$(nproc)") >"$out/build.log" 2>&1 || {
  tail -60 "$out/build.log" >&2; fail "dpkg-buildpackage (whole log: $out/build.log)"; }
mv "$out/src"/batchd_"$version"_* "$out/"
deb=$out/batchd_${version}_${arch}.deb
[ -f "$deb" ] || fail "no $deb"
echo "deb: built $deb in $(( $(date +%s) - t0 )) s" >&2

# The files: the expected ones are there, nothing from test/ or bench/ is.
list=$(dpkg-deb -c "$deb" | awk '{print $NF}')
expect=(./usr/bin/batchd ./etc/batchd/batchd.yaml ./lib/systemd/system/batchd.service
        ./usr/share/man/man8/batchd.8.gz)
if [ -f docs/batchctl.1 ]; then expect+=(./usr/share/man/man1/batchctl.1.gz); fi
# batchctl when the tree builds it (its target may live in any CMakeLists.txt).
if find "$stage"/obj-* -name batchctl -type f -perm -u+x 2>/dev/null | grep -q .; then
  expect+=(./usr/bin/batchctl)
fi
for f in "${expect[@]}"; do
  grep -qxF "$f" <<<"$list" || { echo "$list" >&2; fail "$f missing from the package"; }
done
if grep -E '/(test_|it_|bench_|fake_model|fuzz)' <<<"$list"; then
  fail "test or bench programs in the package (above)"
fi
info=$(dpkg-deb -I "$deb")
grep -q '^ Recommends: redis-server, postgresql$' <<<"$info" || { echo "$info" >&2; fail "Recommends"; }
[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles)" = /etc/batchd/batchd.yaml ] ||
  fail "conffiles is not /etc/batchd/batchd.yaml"

# Unpacked: the packaged batchd checks the packaged config; the packaged unit verifies.
root=$out/root
dpkg -x "$deb" "$root"
"$root/usr/bin/batchd" --version
"$root/usr/bin/batchd" --config "$root/etc/batchd/batchd.yaml" --check-config
BD_SOURCE_DIR=$top BD_BATCHD_BIN=$root/usr/bin/batchd \
  BD_UNIT=$root/lib/systemd/system/batchd.service BD_CONFIG=$root/etc/batchd/batchd.yaml \
  test/pkg_unit.sh
echo "deb: ok: $deb ($(du -k "$deb" | cut -f1) KiB)"
