#!/usr/bin/env bash
# Creates, on the loopback services, the least-privilege admin accounts the
# shipped broker.toml grants to the shipped plugins (see README.md, "What a
# plugin holds"). Idempotent: every run puts each account back to exactly
# the rights below (revoking anything added since) and resets its password.
# Fails loudly (set -e, and a check per backend) if one cannot be made.
# .ci/run calls it once the services are up; a developer can too.
#
# Development credentials only: the passwords here are the ones broker.toml,
# the Helm chart's CI values and the test harness use. In production make
# the same accounts with your own passwords and give the broker the URLs in
# environment variables (`url_env`, `password_env`).
#
# The administrators that run this (MariaDB root, PostgreSQL postgres, the
# Redis default user, RabbitMQ guest, Mosquitto wasm-broker-admin) stay as
# they are: the tests use them to check what the plugins did.
set -euo pipefail
cd "$(dirname "$0")"

say() { echo "roles: $*"; }
fail() { echo "FATAL: roles: $*" >&2; exit 1; }

# --- MariaDB: the mysql plugin ------------------------------------------------
# The plugin names an instance's database `db` + 16 hex digits and a binding's
# user `u_` + 16 hex digits (plugins/mysql/src/lib.rs). `_` in the database
# part of a GRANT matches any one character, so `db` followed by 16 of them
# matches exactly the 18-character names the plugin makes, and no database
# of another application with a shorter or longer name.
#  - ALL on the plugin's databases, without GRANT OPTION: create, alter and
#    drop them. Granting one to a binding user goes through a procedure.
#  - EXECUTE on the five `wasm_broker` procedures
#    (../../deploy/mariadb/least-privilege.sql): CREATE USER, ALTER USER,
#    GRANT, DROP USER and KILL CONNECTION USER for binding users `u_<hex>`
#    only, run as the locked account wasm_broker_mysql_definer@localhost,
#    which holds CREATE USER and CONNECTION ADMIN. The plugin's account holds
#    neither: MariaDB cannot limit CREATE USER to a name pattern (with it, an
#    account may ALTER USER root).
# No FILE, SUPER, PROCESS, RELOAD, SHUTDOWN, CREATE USER, CONNECTION ADMIN;
# nothing on mysql.*.
MYSQL_USER=wasm_broker_mysql
MYSQL_PASSWORD=wasm-broker-mysql-dev
MYSQL_DATABASES='db________________'
mysql_root() { mysql -uroot -h127.0.0.1 --batch --skip-column-names "$@"; }
mysql_root <../../deploy/mariadb/least-privilege.sql \
  || fail "MariaDB: cannot create the wasm_broker procedures"
mysql_root <<SQL || fail "MariaDB: cannot create $MYSQL_USER"
CREATE USER IF NOT EXISTS '$MYSQL_USER'@'%' IDENTIFIED BY '$MYSQL_PASSWORD';
ALTER USER '$MYSQL_USER'@'%' IDENTIFIED BY '$MYSQL_PASSWORD';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM '$MYSQL_USER'@'%';
GRANT ALL PRIVILEGES ON \`$MYSQL_DATABASES\`.* TO '$MYSQL_USER'@'%';
GRANT EXECUTE ON PROCEDURE wasm_broker.create_user TO '$MYSQL_USER'@'%';
GRANT EXECUTE ON PROCEDURE wasm_broker.alter_user TO '$MYSQL_USER'@'%';
GRANT EXECUTE ON PROCEDURE wasm_broker.grant_database TO '$MYSQL_USER'@'%';
GRANT EXECUTE ON PROCEDURE wasm_broker.drop_user TO '$MYSQL_USER'@'%';
GRANT EXECUTE ON PROCEDURE wasm_broker.kill_user TO '$MYSQL_USER'@'%';
SQL
grants=$(mysql -u"$MYSQL_USER" -p"$MYSQL_PASSWORD" -h127.0.0.1 --batch --skip-column-names \
  -e 'SHOW GRANTS FOR CURRENT_USER') || fail "MariaDB: $MYSQL_USER cannot log in"
if grep -Eq 'FILE|SUPER|CREATE USER|CONNECTION ADMIN|GRANT OPTION|ALL PRIVILEGES ON \*\.\*' <<<"$grants"; then
  fail "MariaDB: $MYSQL_USER holds more than it should: $grants"
fi
say "MariaDB user $MYSQL_USER (account changes through the wasm_broker procedures)"

# --- PostgreSQL: the postgres plugin -----------------------------------------
# LOGIN CREATEDB and pg_signal_backend (to end an unbound role's sessions; it
# cannot signal a superuser's), no CREATEROLE: up to PostgreSQL 15 that would
# let it grant itself pg_execute_server_program and run commands on the
# server. Its roles are made by the SECURITY DEFINER functions of
# deploy/postgres/least-privilege.sql, which that file creates (owned by the
# NOLOGIN role wasm_broker_role_manager) and lets this account call.
PG_ROLE=wasm_broker_postgres
PG_PASSWORD=wasm-broker-postgres-dev
pg_super() { psql -h127.0.0.1 -U postgres -d postgres -X -v ON_ERROR_STOP=1 -q "$@"; }
pg_super <<SQL || fail "PostgreSQL: cannot create $PG_ROLE"
SET client_min_messages = error;
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE $PG_ROLE;
  END IF;
END \$\$;
ALTER ROLE $PG_ROLE PASSWORD '$PG_PASSWORD';
SQL
pg_super -v admin="$PG_ROLE" -f ../../deploy/postgres/least-privilege.sql >/dev/null \
  || fail "PostgreSQL: deploy/postgres/least-privilege.sql failed"
attributes=$(pg_super -Atc \
  "SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles WHERE rolname = '$PG_ROLE'")
[ "$attributes" = 'f|f|t|t' ] \
  || fail "PostgreSQL: $PG_ROLE should be LOGIN CREATEDB only (super|createrole|createdb|login: $attributes)"
say "PostgreSQL role $PG_ROLE (LOGIN CREATEDB, roles through schema wasm_broker)"

# --- Redis: the redis plugin --------------------------------------------------
# The commands the plugin runs, nothing else: PING (provision), SCAN and
# UNLINK of its instances' keys (`inst_*`, deprovision), ACL SETUSER /
# DELUSER / SAVE (bind, unbind); ACL WHOAMI for the broker's probe; HELLO
# and AUTH for the client library's handshake. ACL SETUSER
# can give a user any rights, itself included: what an operator must still
# trust the plugin with. The default user stays as it is.
REDIS_USER=wasm_broker_redis
REDIS_PASSWORD=wasm-broker-redis-dev
answer=$(redis-cli -h 127.0.0.1 ACL SETUSER "$REDIS_USER" reset on ">$REDIS_PASSWORD" \
  '~inst_*' resetchannels -@all +ping +scan +unlink '+acl|setuser' '+acl|deluser' \
  '+acl|save' '+acl|whoami' '+acl|dryrun' +hello +auth) || fail "Redis: cannot reach the server"
[ "$answer" = OK ] || fail "Redis: ACL SETUSER $REDIS_USER answered: $answer"
denied=$(redis-cli -h 127.0.0.1 --user "$REDIS_USER" --pass "$REDIS_PASSWORD" --no-auth-warning \
  CONFIG GET requirepass 2>&1 || true)
grep -q NOPERM <<<"$denied" || fail "Redis: $REDIS_USER may run CONFIG: $denied"
# Kept across a Redis restart only if the server has an aclfile (ACL SAVE
# fails without one, and this script runs again at the next CI start).
redis-cli -h 127.0.0.1 ACL SAVE >/dev/null 2>&1 || true
say "Redis ACL user $REDIS_USER"

# The Python example plugin (plugins/examples/python-redis): the same
# commands, on its own key prefix `pyr_*`, so it cannot unlink the redis
# plugin's keys, nor that one its.
REDIS_PY_USER=wasm_broker_redis_py
REDIS_PY_PASSWORD=wasm-broker-redis-py-dev
answer=$(redis-cli -h 127.0.0.1 ACL SETUSER "$REDIS_PY_USER" reset on ">$REDIS_PY_PASSWORD" \
  '~pyr_*' resetchannels -@all +ping +scan +unlink '+acl|setuser' '+acl|deluser' \
  '+acl|save' '+acl|whoami' '+acl|dryrun' +hello +auth) || fail "Redis: cannot reach the server"
[ "$answer" = OK ] || fail "Redis: ACL SETUSER $REDIS_PY_USER answered: $answer"
redis-cli -h 127.0.0.1 ACL SAVE >/dev/null 2>&1 || true
say "Redis ACL user $REDIS_PY_USER (the Python example plugin)"

# --- RabbitMQ: the rabbitmq plugin --------------------------------------------
# The management API lets only `administrator` create virtual hosts and users
# (`policymaker` and `monitoring` get 401 "Not administrator user"), so the
# plugin's user is an administrator; it gets no permissions on any virtual
# host (it needs none to manage them through the API).
RABBITMQ_USER=wasm_broker_rabbitmq
RABBITMQ_PASSWORD=wasm-broker-rabbitmq-dev
api=http://127.0.0.1:15672/api
# Just enabled (`rabbitmq-plugins enable rabbitmq_management`), the API takes
# a few seconds to answer.
for _ in $(seq 30); do
  curl -sf -o /dev/null -u guest:guest "$api/overview" && break
  sleep 1
done
status=$(curl -s -o /dev/null -w '%{http_code}' -u guest:guest -H 'content-type: application/json' \
  -X PUT "$api/users/$RABBITMQ_USER" \
  -d "{\"password\":\"$RABBITMQ_PASSWORD\",\"tags\":\"administrator\"}") || true
case "$status" in 201 | 204) ;; *) fail "RabbitMQ: PUT /api/users/$RABBITMQ_USER answered $status" ;; esac
permissions=$(curl -sf -u guest:guest "$api/users/$RABBITMQ_USER/permissions") \
  || fail "RabbitMQ: cannot list the permissions of $RABBITMQ_USER"
for vhost in $(python3 -c 'import json,sys; [print(p["vhost"]) for p in json.load(sys.stdin)]' <<<"$permissions"); do
  encoded=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$vhost")
  curl -sf -o /dev/null -u guest:guest -X DELETE "$api/permissions/$encoded/$RABBITMQ_USER" \
    || fail "RabbitMQ: cannot remove the permissions of $RABBITMQ_USER on $vhost"
done
curl -sf -o /dev/null -u "$RABBITMQ_USER:$RABBITMQ_PASSWORD" "$api/whoami" \
  || fail "RabbitMQ: $RABBITMQ_USER cannot log in to the management API"
say "RabbitMQ user $RABBITMQ_USER (administrator, no virtual host permissions)"

# --- Mosquitto (dynamic security on 1884): the mosquitto plugin ---------------
# A client of its own whose role reaches only the dynamic security API
# ($CONTROL/dynamic-security/#), not the admin `dynsec init` made, which may
# also read every topic (`#`, `$SYS/#`). The dynamic security API can still
# give any client any role: what an operator must still trust the plugin with.
MQTT_PORT=${MOSQUITTO_DYNSEC_PORT:-1884}
MQTT_USER=wasm-broker-plugin
MQTT_PASSWORD=wasm-broker-plugin-dev
MQTT_ROLE=wasm-broker-plugin
# mosquitto_ctrl exits 0 even when the broker refuses a command; its
# "Error:" lines (on stderr, after a warning about plain text) tell.
ctrl() {
  local output
  output=$(timeout 10 mosquitto_ctrl -h 127.0.0.1 -p "$MQTT_PORT" -u wasm-broker-admin \
    -P wasm-broker-admin-secret dynsec "$@" 2>&1) || { echo "$output"; return 1; }
  if grep -q 'Error:' <<<"$output"; then echo "$output"; return 1; fi
  echo "$output"
}
ctrl getRole "$MQTT_ROLE" >/dev/null 2>&1 || ctrl createRole "$MQTT_ROLE" >/dev/null \
  || fail "Mosquitto: cannot create role $MQTT_ROLE"
# Each ACL is removed first (refused when it is absent), so a second run
# leaves one of each.
for acl in publishClientSend publishClientReceive subscribePattern unsubscribePattern; do
  ctrl removeRoleACL "$MQTT_ROLE" "$acl" '$CONTROL/dynamic-security/#' >/dev/null 2>&1 || true
  ctrl addRoleACL "$MQTT_ROLE" "$acl" '$CONTROL/dynamic-security/#' allow 0 >/dev/null \
    || fail "Mosquitto: cannot give $MQTT_ROLE $acl"
done
ctrl getClient "$MQTT_USER" >/dev/null 2>&1 || ctrl createClient "$MQTT_USER" -p "$MQTT_PASSWORD" >/dev/null \
  || fail "Mosquitto: cannot create client $MQTT_USER"
ctrl setClientPassword "$MQTT_USER" "$MQTT_PASSWORD" >/dev/null \
  || fail "Mosquitto: cannot set the password of $MQTT_USER"
ctrl addClientRole "$MQTT_USER" "$MQTT_ROLE" >/dev/null 2>&1 || true
client=$(ctrl getClient "$MQTT_USER") || fail "Mosquitto: cannot read client $MQTT_USER: $client"
roles=$(grep -A5 '^Roles:' <<<"$client" | grep -v '^Warning\|^This means\|^$' || true)
grep -q "$MQTT_ROLE" <<<"$roles" || fail "Mosquitto: $MQTT_USER lacks role $MQTT_ROLE: $client"
if grep -Eq '(^|[[:space:]])admin[[:space:]]' <<<"$roles"; then
  fail "Mosquitto: $MQTT_USER holds the admin role"
fi
say "Mosquitto client $MQTT_USER (role $MQTT_ROLE: \$CONTROL/dynamic-security/# only)"
