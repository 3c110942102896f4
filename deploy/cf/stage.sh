#!/usr/bin/env bash
# Assembles the directory `cf push` uploads: the wasm-broker binary, the
# shipped plugins and a broker.toml.
#   deploy/cf/stage.sh [BINARY] [BROKER_TOML] [PLUGIN_DIR]
# BINARY defaults to target/release/wasm-broker, BROKER_TOML to
# deploy/cf/broker.toml, PLUGIN_DIR to plugins/dist; the result goes to
# target/cf-app (manifest.yml's path), or CF_APP_DIR. The binary must run on
# the stack: cflinuxfs4 is Ubuntu 22.04 (glibc 2.35), so build it there (or in
# a cflinuxfs4 container) rather than on a newer distribution.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
binary=$(realpath "${1:-$root/target/release/wasm-broker}")
config=$(realpath "${2:-$root/deploy/cf/broker.toml}")
plugins=$(realpath "${3:-$root/plugins/dist}")
app=${CF_APP_DIR:-$root/target/cf-app}
[[ -x $binary ]] || { echo "no broker binary at $binary: cargo build --release -p wasm-broker" >&2; exit 1; }
compgen -G "$plugins/*.wasm" >/dev/null || { echo "no plugins in $plugins: cargo xtask build-plugins" >&2; exit 1; }
rm -rf "$app"
mkdir -p "$app/plugins"
install -m 0755 "$binary" "$app/wasm-broker"
install -m 0644 "$plugins"/*.wasm "$app/plugins/"
install -m 0644 "$config" "$app/broker.toml"
echo "staged $app: cf push -f deploy/cf/manifest.yml --vars-file <your vars>"
