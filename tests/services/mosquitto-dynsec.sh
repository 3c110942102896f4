#!/usr/bin/env bash
# Starts, if it is not already running, a Mosquitto with the dynamic security
# plugin on 127.0.0.1:1884 for the mosquitto plugin's tests (the machine's own
# Mosquitto on 1883 stays anonymous and untouched). Idempotent: a second run
# finds it up and does nothing. .ci/run calls it; a developer can too.
#
# Development credentials only: the admin login below is the one the tests
# use to check what the plugin did, and the one tests/services/roles.sh uses
# to make the narrower client broker.toml grants the plugin.
#
# Environment: MOSQUITTO_DYNSEC_DIR (data, config and log; default
# /var/lib/wasm-broker-mosquitto), MOSQUITTO_DYNSEC_PORT (default 1884).
set -euo pipefail

dir=${MOSQUITTO_DYNSEC_DIR:-/var/lib/wasm-broker-mosquitto}
port=${MOSQUITTO_DYNSEC_PORT:-1884}
admin_user=wasm-broker-admin
admin_password=wasm-broker-admin-secret

# Debian's mosquitto package ships the plugin here (`dpkg -L mosquitto | grep dynamic`).
plugin=${MOSQUITTO_DYNSEC_PLUGIN:-/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so}

# Up means: the admin logs in and the dynamic security plugin answers.
answers() {
  timeout 10 mosquitto_ctrl -h 127.0.0.1 -p "$port" -u "$admin_user" -P "$admin_password" \
    dynsec getDefaultACLAccess >/dev/null 2>&1
}

if answers; then
  echo "Mosquitto with dynamic security is up on 127.0.0.1:$port"
  exit 0
fi

[ -f "$plugin" ] || { echo "FATAL: no $plugin (install Debian's mosquitto package)" >&2; exit 1; }
mkdir -p "$dir"
# `init` writes the admin client with every right over the dynamic security
# API; it refuses to overwrite, so an existing file (and the roles and
# clients the tests left in it) is kept.
if [ ! -f "$dir/dynamic-security.json" ]; then
  mosquitto_ctrl dynsec init "$dir/dynamic-security.json" "$admin_user" "$admin_password" >/dev/null
fi
cat >"$dir/mosquitto.conf" <<EOF
# Written by tests/services/mosquitto-dynsec.sh.
per_listener_settings false
listener $port 127.0.0.1
allow_anonymous false
persistence false
pid_file $dir/mosquitto.pid
log_dest file $dir/mosquitto.log
plugin $plugin
plugin_opt_config_file $dir/dynamic-security.json
EOF
# Started as root, mosquitto drops to the `mosquitto` user, which must be able
# to rewrite the dynamic security file (the plugin saves every change there).
if [ "$(id -u)" = 0 ] && getent passwd mosquitto >/dev/null; then
  chown -R mosquitto: "$dir"
fi
chmod 700 "$dir"
chmod 600 "$dir/dynamic-security.json"
mosquitto -d -c "$dir/mosquitto.conf"

for _ in $(seq 30); do
  if answers; then
    echo "Mosquitto with dynamic security is up on 127.0.0.1:$port"
    exit 0
  fi
  sleep 1
done
echo "FATAL: Mosquitto with dynamic security did not come up on 127.0.0.1:$port (see $dir/mosquitto.log)" >&2
exit 1
