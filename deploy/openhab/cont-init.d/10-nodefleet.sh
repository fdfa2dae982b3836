# Sourced by the openHAB image's entry point before openHAB starts (so: no exit, no set -e).
# Installs nodefleet's things and items (mounted at /nodefleet/openhab) into $OPENHAB_CONF with
# the broker address, the operator's password and the RO purifier's node name from the
# environment (compose.yaml), and asks for the add-ons they need: the MQTT binding and JSONPath.
# Run again on every start, so a changed password or node name in .env takes effect. The work runs in
# a subshell: nothing here may change the entry point's variables, and a failure only skips this part.
nodefleet_openhab() (
    src=${NODEFLEET_OPENHAB_SOURCE:-/nodefleet/openhab}
    conf=${OPENHAB_CONF:-/openhab/conf}
    owner=${NODEFLEET_OPENHAB_OWNER:-openhab}
    if [ -z "${NODEFLEET_MQTT_OPERATOR_PASSWORD:-}" ]; then
        echo "nodefleet: NODEFLEET_MQTT_OPERATOR_PASSWORD is not set; nodefleet's things are not installed" >&2
        exit 1
    fi
    # sed's replacement must not see its own delimiter or & in the values.
    quote() { printf '%s' "$1" | sed -e 's/[|&\\]/\\&/g'; }
    mkdir -p "$conf/things" "$conf/items" "$conf/services"
    for kind in things items; do
        target="$conf/$kind/nodefleet.$kind"
        sed -e "s|@MQTT_HOST@|$(quote "${NODEFLEET_MQTT_HOST:-mosquitto}")|g" \
            -e "s|@MQTT_PORT@|$(quote "${NODEFLEET_MQTT_PORT:-1883}")|g" \
            -e "s|@OPERATOR_PASSWORD@|$(quote "$NODEFLEET_MQTT_OPERATOR_PASSWORD")|g" \
            -e "s|@ROOT@|$(quote "${NODEFLEET_TOPIC_ROOT:-home}")|g" \
            -e "s|@NODE@|$(quote "${NODEFLEET_OPENHAB_NODE:-ro-purifier}")|g" \
            "$src/$kind/nodefleet.$kind" > "$target.new"
        chmod 600 "$target.new"
        if id "$owner" >/dev/null 2>&1; then chown "$owner" "$target.new"; fi
        mv "$target.new" "$target"
    done
    # addons.cfg: add what is missing to the binding and transformation lines, keeping the user's own.
    addons="$conf/services/addons.cfg"
    touch "$addons"
    for pair in binding:mqtt transformation:jsonpath; do
        key=${pair%%:*}
        addon=${pair#*:}
        if ! grep -Eq "^[[:space:]]*$key[[:space:]]*=" "$addons"; then
            echo "$key = $addon" >> "$addons"
        elif ! grep -Eq "^[[:space:]]*$key[[:space:]]*=.*\\b$addon\\b" "$addons"; then
            sed -i -E "s/^([[:space:]]*$key[[:space:]]*=[[:space:]]*)(.*)$/\\1\\2,$addon/" "$addons"
        fi
    done
    echo "nodefleet: things and items for node ${NODEFLEET_OPENHAB_NODE:-ro-purifier} installed in $conf" >&2
)
nodefleet_openhab || echo "nodefleet: openHAB starts without nodefleet's things" >&2
