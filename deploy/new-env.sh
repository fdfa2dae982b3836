#!/bin/sh
# Prints a .env for compose.yaml with a new random password for each broker
# user and the database, and the fleet's OTA master key:
#   deploy/new-env.sh > .env && chmod 600 .env
# Then set NODEFLEET_PUBLIC_HOST to this host's LAN address (nodes use it).
# The broker users are created from these on Mosquitto's first start only
# (deploy/mosquitto/init-dynsec.sh); change them later with mosquitto_ctrl.
set -eu

secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }  # 128 bits, safe inside a URL
key() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }  # 256 bits as 64 hex digits, as `openssl rand -hex 32`

echo "# nodefleet compose settings, made by deploy/new-env.sh. Keep this file private."
echo "# NODEFLEET_PUBLIC_HOST=192.168.1.10"
echo "NODEFLEET_TZ=UTC"
echo "# For the openHAB profile: the RO purifier's node name, as \`nodefleet devices\` shows it."
echo "# NODEFLEET_OPENHAB_NODE=ro-purifier-a1b2c3"
echo "# Ports (these are the defaults): NODEFLEET_MQTT_PORT=1883 NODEFLEET_MQTT_WS_PORT=8083 NODEFLEET_HTTP_PORT=8080"
echo "POSTGRES_PASSWORD=$(secret)"
echo "NODEFLEET_MQTT_ADMIN_PASSWORD=$(secret)"
echo "NODEFLEET_MQTT_TELEMETRY_PASSWORD=$(secret)"
echo "NODEFLEET_MQTT_SCHEDULER_PASSWORD=$(secret)"
echo "NODEFLEET_MQTT_OTA_PASSWORD=$(secret)"
echo "NODEFLEET_MQTT_OPERATOR_PASSWORD=$(secret)"
echo "# The fleet's OTA master key (64 hex digits, e.g. \`openssl rand -hex 32\`): node keys derive from it, so"
echo "# never change it once nodes are registered. Remove it and OTA is off (the provisioner says so at start)."
echo "NODEFLEET_OTA_MASTER_KEY=$(key)"
