#!/usr/bin/env bash
# Assembles the directory `cf push` uploads (target/cf-app): the wasm-broker
# binary, the shipped plugins and a broker.toml.
#   deploy/cf/stage.sh [BINARY] [BROKER_TOML]
# BINARY defaults to target/release/wasm-broker. It must run on the stack:
# cflinuxfs4 is Ubuntu 22.04 (glibc 2.35), so build it there (or in a
# cflinuxfs4 container) rather than on a newer distribution.
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=${1:-target/release/wasm-broker}
config=${2:-deploy/cf/broker.toml}
[[ -x $binary ]] || { echo "no broker binary at $binary: cargo build --release -p wasm-broker" >&2; exit 1; }
compgen -G 'plugins/dist/*.wasm' >/dev/null || { echo "no plugins in plugins/dist: cargo xtask build-plugins" >&2; exit 1; }
rm -rf target/cf-app
mkdir -p target/cf-app/plugins
install -m 0755 "$binary" target/cf-app/wasm-broker
install -m 0644 plugins/dist/*.wasm target/cf-app/plugins/
install -m 0644 "$config" target/cf-app/broker.toml
echo "staged target/cf-app: cf push -f deploy/cf/manifest.yml --vars-file <your vars>"
