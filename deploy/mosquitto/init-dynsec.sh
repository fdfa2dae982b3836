#!/bin/sh
# Entry point of the Mosquitto container: on the first start, create the
# dynamic-security file (no anonymous clients; the provisioner as admin, able to
# create a user per node; one user per service and the operator with every
# ordinary topic), then run Mosquitto. Later starts keep the file as it is: the
# provisioner has added node users to it, and passwords are changed with
# `mosquitto_ctrl dynsec setClientPassword`, not by editing .env.
#
# Environment (compose.yaml passes it from .env):
#   NODEFLEET_MQTT_ADMIN_PASSWORD   password of the admin user (required on the first start)
#   NODEFLEET_MQTT_ADMIN_USER       its name (default: provisioner)
#   NODEFLEET_MQTT_SERVICE_LOGINS   "user:password user:password ..." for the services and the operator
#   NODEFLEET_MQTT_PORT, NODEFLEET_MQTT_WS_PORT, NODEFLEET_MQTT_LISTEN_HOST
#                                   where the MQTT and WebSocket listeners of mosquitto.conf listen
#                                   (default: as the file says, 1883 and 8083 on 0.0.0.0)
#   NODEFLEET_MQTT_TLS_DIR, NODEFLEET_MQTT_TLS_PORT
#                                   where tls-init's ca.pem, broker.pem and broker.key are (default
#                                   /nodefleet-tls/tls) and the TLS listener's port (8883); no files, no TLS
# Paths, for running it outside the image: NODEFLEET_DYNSEC_FILE, NODEFLEET_MOSQUITTO_CONF,
# NODEFLEET_DYNSEC_PLUGIN, NODEFLEET_DYNSEC_INIT_PORT (a loopback port used only while initialising).
set -eu
umask 077  # the files made here hold password hashes

file=${NODEFLEET_DYNSEC_FILE:-/mosquitto/data/dynamic-security.json}
conf=${NODEFLEET_MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}
plugin=${NODEFLEET_DYNSEC_PLUGIN:-/usr/lib/mosquitto_dynamic_security.so}
port=${NODEFLEET_DYNSEC_INIT_PORT:-1884}
admin=${NODEFLEET_MQTT_ADMIN_USER:-provisioner}

say() { echo "init-dynsec: $*" >&2; }

# Mosquitto started as root runs as the user mosquitto, which must be able to rewrite the file.
own() { if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then chown -R mosquitto:mosquitto "$@"; fi; }

# One dynamic-security command on the initialising broker, as user $1 with password $2; a command that
# does not finish within 10 s fails the start. (mosquitto_ctrl warns about the unencrypted connection on
# stderr: it is loopback only.)
ctrl() {
    as_user=$1 as_password=$2
    shift 2
    timeout 10 mosquitto_ctrl -h 127.0.0.1 -p "$port" -u "$as_user" -P "$as_password" dynsec "$@" >/dev/null 2>&1
}

initialise() {
    : "${NODEFLEET_MQTT_ADMIN_PASSWORD:?is not set: put it in .env (see compose.yaml)}"
    logins=${NODEFLEET_MQTT_SERVICE_LOGINS:-}
    folder=$(dirname "$file")
    work="$folder/.dynamic-security.init.json"
    mkdir -p "$folder"
    rm -f "$work"
    # The broker disconnects a client whose roles change, and mosquitto_ctrl 2.0.11 then retries
    # forever: so a throw-away admin builds the roles and the provisioner's user, then the provisioner
    # deletes it.
    init_user=nodefleet-init
    init_password=$(tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 32)
    mosquitto_ctrl dynsec init "$work" "$init_user" "$init_password" >/dev/null
    own "$folder"
    # A broker on loopback only, with the new file, to apply the rest through the plugin itself
    # (it hashes the passwords); nothing outside the container can reach it.
    init_conf="$folder/.init-mosquitto.conf"
    printf 'listener %s 127.0.0.1\nallow_anonymous false\nplugin %s\nplugin_opt_config_file %s\npersistence false\nlog_dest stderr\nlog_type error\n' \
        "$port" "$plugin" "$work" > "$init_conf"
    mosquitto -c "$init_conf" &
    broker=$!
    # Any failure from here on (set -e) must not leave the initialising broker behind.
    trap 'kill "$broker" 2>/dev/null; say "initialisation failed; $file was not created"' EXIT
    tries=0
    until ctrl "$init_user" "$init_password" getDefaultACLAccess; do
        tries=$((tries + 1))
        if [ "$tries" -gt 100 ] || ! kill -0 "$broker" 2>/dev/null; then
            say "the initialising broker did not answer on 127.0.0.1:$port"
            exit 1
        fi
        sleep 0.1
    done
    setup() { ctrl "$init_user" "$init_password" "$@"; }
    # The provisioner: the dynamic-security topics, plus every ordinary topic (configs, discovery, replies).
    # (mosquitto_ctrl 2.0.11 also spins without addRoleACL's priority argument, so it is always given.)
    setup createRole provisioner
    setup addRoleACL provisioner publishClientSend '$CONTROL/dynamic-security/#' allow 0
    setup addRoleACL provisioner subscribePattern '$CONTROL/dynamic-security/#' allow 0
    # The plugin's answers reach only an explicit receive ACL, whatever the default says.
    setup addRoleACL provisioner publishClientReceive '$CONTROL/dynamic-security/#' allow 0
    setup addRoleACL provisioner publishClientSend '#' allow 0
    setup addRoleACL provisioner subscribePattern '#' allow 0
    setup createClient "$admin" -p "$NODEFLEET_MQTT_ADMIN_PASSWORD"
    setup addClientRole "$admin" provisioner
    # The services and the operator: every ordinary topic, none of the control topics.
    setup createRole service
    setup addRoleACL service publishClientSend '#' allow 0
    setup addRoleACL service subscribePattern '#' allow 0
    for login in $logins; do
        user=${login%%:*}
        password=${login#*:}
        if [ -z "$user" ] || [ "$user" = "$login" ] || [ -z "$password" ]; then
            say "NODEFLEET_MQTT_SERVICE_LOGINS: '$user' needs user:password"
            exit 1
        fi
        setup createClient "$user" -p "$password"
        setup addClientRole "$user" service
    done
    ctrl "$admin" "$NODEFLEET_MQTT_ADMIN_PASSWORD" deleteClient "$init_user"
    ctrl "$admin" "$NODEFLEET_MQTT_ADMIN_PASSWORD" deleteRole admin
    trap - EXIT
    kill "$broker"
    wait "$broker" || true
    rm -f "$init_conf"
    mv "$work" "$file"
    say "created $file: admin '$admin', service users: $(for l in $logins; do printf '%s ' "${l%%:*}"; done)"
}

# Mosquitto's configuration has no variables: the listener lines are rewritten into a copy instead.
listeners() {
    mqtt_port=${NODEFLEET_MQTT_PORT:-1883}
    ws_port=${NODEFLEET_MQTT_WS_PORT:-8083}
    host=${NODEFLEET_MQTT_LISTEN_HOST:-0.0.0.0}
    if [ "$mqtt_port $ws_port $host" = "1883 8083 0.0.0.0" ]; then
        return
    fi
    for line in "listener 1883 0.0.0.0" "listener 8083 0.0.0.0"; do
        if ! grep -qx "$line" "$conf"; then
            say "$conf has no line '$line' to move to the configured port"
            exit 1
        fi
    done
    moved=$(mktemp "${TMPDIR:-/tmp}/mosquitto.XXXXXX")
    sed -e "s/^listener 1883 0\.0\.0\.0\$/listener $mqtt_port $host/" \
        -e "s/^listener 8083 0\.0\.0\.0\$/listener $ws_port $host/" "$conf" > "$moved"
    chmod 644 "$moved"
    conf=$moved
}

# MQTT over TLS once compose's tls-init has made the files (python -m nodefleet.tls): a listener is added to
# a copy of the configuration. Mosquitto started as root reads its files as the user mosquitto, so they are
# copied beside the dynamic-security file and given to that user.
tls_listener() {
    dir=${NODEFLEET_MQTT_TLS_DIR:-/nodefleet-tls/tls}
    if [ ! -f "$dir/ca.pem" ] || [ ! -f "$dir/broker.pem" ] || [ ! -f "$dir/broker.key" ]; then
        say "no TLS files in $dir: MQTT over TLS is off"
        return
    fi
    tls_port=${NODEFLEET_MQTT_TLS_PORT:-8883}
    host=${NODEFLEET_MQTT_LISTEN_HOST:-0.0.0.0}
    copy="$(dirname "$file")/tls"
    mkdir -p "$copy"
    cp "$dir/ca.pem" "$dir/broker.pem" "$dir/broker.key" "$copy/"
    own "$copy"
    with_tls=$(mktemp "${TMPDIR:-/tmp}/mosquitto.XXXXXX")
    cat "$conf" > "$with_tls"
    printf '\n# MQTT over TLS (added by init-dynsec.sh from %s)\nlistener %s %s\ncafile %s/ca.pem\ncertfile %s/broker.pem\nkeyfile %s/broker.key\n' \
        "$dir" "$tls_port" "$host" "$copy" "$copy" "$copy" >> "$with_tls"
    chmod 644 "$with_tls"
    conf=$with_tls
    say "MQTT over TLS on $host:$tls_port"
}

if [ ! -f "$file" ]; then
    initialise
fi
listeners
tls_listener
exec mosquitto -c "$conf"
