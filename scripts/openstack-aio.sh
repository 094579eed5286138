#!/usr/bin/env bash
# An all-in-one OpenStack (Debian 12's Zed packages) on this machine, for
# amirun's OpenStack backend and its tests (issue 16).
#
#   scripts/openstack-aio.sh [up|down|status]     (default: up)
#
# up: installs what is missing, writes the configuration, creates the
#     databases, starts every service that is not running and waits until
#     each answers.  Idempotent: a second run changes nothing and only checks
#     that the services answer.  Needs root; no systemd (each service is
#     started here as a daemon, logs under /var/log/amirun-aio/).
# down: stops the services this script started (by their pid files).
#
# What runs, all on 127.0.0.1 only:
#   MariaDB :3306, RabbitMQ :5672 (epmd :4369, distribution :25672),
#   Keystone :5000 (uwsgi), Glance :9292 (file store), Placement :8778
#   (uwsgi), Neutron API :9696 (uwsgi), Nova API :8774 (uwsgi) + conductor
#   + scheduler + compute (libvirt, virt_type=qemu: TCG guests), libvirtd +
#   virtlogd (unix sockets only; libvirt's default NAT network is off).
# Config drives (user data for guests without a network) need genisoimage.
# No Cinder: its LVM driver needs the kernel's device-mapper, and its iSCSI
# or NVMe-oF targets need configfs and kernel modules; these machines'
# kernel has none of them (no /dev/mapper/control, `modprobe dm_mod` finds
# no module, lvcreate: "Required device-mapper target(s) not detected").
# (Ceph RBD, all userspace, could back it; not built.)
# Measured here (2 cores, loaded): packages ~11 min; first configuration
# ~1.5 min (up to 8 min under heavy load); a second run ~2-4 s.
# Networking: the Neutron API server alone (ML2, no agents, no networks),
# because Nova asks it for a server's ports.  Servers are booted with
# `networks: none` (compute microversion >= 2.37); the guests have no NIC.
# Fake compute hosts: AIO_FAKE_HOSTS (default 3) more nova-compute
# processes on Nova's fake driver, hosts fake-1..fake-N, in availability
# zone `fake` (aggregate fake-hosts): servers asked for there are placed and
# tracked but run nowhere.  Servers without a zone go to zone `aio`
# (aggregate aio), whose one host `aio` runs real QEMU (TCG) guests.
#
# Clients: /etc/openstack/clouds.yaml, cloud `amirun-aio` (admin in project
# admin), `amirun-aio-demo` (member of project demo), region RegionOne.
set -euo pipefail

ACTION=${1:-up}
AIO_STATE=/var/lib/amirun-aio
AIO_LOG=/var/log/amirun-aio
AIO_RUN=/run/amirun-aio
SECRETS=/etc/amirun-aio/secrets.env
CLOUDS=/etc/openstack/clouds.yaml
HOST=127.0.0.1
KEYSTONE_URL=http://$HOST:5000/v3
REGION=RegionOne
FAKE_HOSTS=${AIO_FAKE_HOSTS:-3}

PACKAGES=(mariadb-server python3-pymysql rabbitmq-server keystone glance placement-api
	nova-api nova-conductor nova-scheduler nova-compute-qemu neutron-api python3-openstackclient
	qemu-system-x86 qemu-utils uwsgi-plugin-python3 genisoimage)

log() { printf 'openstack-aio: %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
[ "$(id -u)" = 0 ] || die "run as root"
mkdir -p "$AIO_STATE" "$AIO_LOG" "$AIO_RUN"

# ---------------------------------------------------------------- helpers

# write_file PATH MODE OWNER < content: replace PATH only when it differs.
# Prints "changed" (and returns 0) when it wrote, so callers can restart.
write_file() {
	local path=$1 mode=$2 owner=$3 tmp
	tmp=$(mktemp "$path.XXXXXX" 2>/dev/null || mktemp)
	cat >"$tmp"
	if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
		rm -f "$tmp"
		return 1
	fi
	chmod "$mode" "$tmp"
	chown "$owner" "$tmp"
	mv -f "$tmp" "$path"
	log "wrote $path"
	return 0
}

pid_alive() { # PIDFILE
	[ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# conf_hash FILE...: a short digest of configuration files; part of each
# service's recorded command line, so that a changed file restarts it.
conf_hash() { cat "$@" | sha256sum | cut -c1-16; }

# daemon NAME USER CMD...: start CMD in its own session as USER unless its
# pid file names a live process started with the same command line (it is
# restarted when that changed).  Output to $AIO_LOG/NAME.log.
daemon() {
	local name=$1 user=$2 pidf="$AIO_RUN/$1.pid"
	shift 2
	if pid_alive "$pidf"; then
		[ "$(cat "$AIO_RUN/$name.cmd" 2>/dev/null)" = "$*" ] && return 0
		stop_daemon "$name"
	fi
	echo "$*" >"$AIO_RUN/$name.cmd"
	log "starting $name"
	local logf="$AIO_LOG/$name.log"
	touch "$logf"
	chown "$user" "$logf"
	if [ "$user" = root ]; then
		setsid "$@" </dev/null >>"$logf" 2>&1 &
	else
		setsid runuser -u "$user" -- "$@" </dev/null >>"$logf" 2>&1 &
	fi
	echo $! >"$pidf"
}

stop_daemon() { # NAME: TERM it and wait (at most 30 s) until it is gone.
	local pidf="$AIO_RUN/$1.pid" i=0
	pid_alive "$pidf" || return 0
	log "stopping $1"
	kill "$(cat "$pidf")" 2>/dev/null || true
	while pid_alive "$pidf" && [ $i -lt 60 ]; do
		sleep 0.5
		i=$((i + 1))
	done
	rm -f "$pidf"
}

wait_port() { # NAME PORT [SECONDS]
	local i=0 max=${3:-120}
	while ! (exec 3<>"/dev/tcp/$HOST/$2") 2>/dev/null; do
		i=$((i + 1))
		[ $i -lt $((max * 2)) ] || die "$1 does not listen on $HOST:$2 after ${max}s (see $AIO_LOG/)"
		sleep 0.5
	done
}

wait_http() { # NAME URL [SECONDS]: until the URL answers with any HTTP status
	local i=0 max=${3:-180}
	while ! curl -s -o /dev/null -m 5 "$2"; do
		i=$((i + 1))
		[ $i -lt $((max / 2)) ] || die "$1 does not answer at $2 after ${max}s (see $AIO_LOG/)"
		sleep 2
	done
}

# once NAME KEY CMD...: run CMD unless it already succeeded with this KEY.
once() {
	local stamp="$AIO_STATE/done.$1" key=$2
	shift 2
	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then return 0; fi
	log "step $(basename "$stamp" | sed 's/^done\.//')"
	"$@"
	echo "$key" >"$stamp"
}

# uwsgi_app NAME USER PORT WSGI_FILE [UWSGI_ARGS...]: one uwsgi master and
# UWSGI_PROCESSES (1) workers of UWSGI_THREADS (8) threads on HOST:PORT;
# restarted when its command line changed.
# "Connection: close": uwsgi's http-socket does not keep connections alive,
# and a client that reuses one gets its next POST reset.
uwsgi_app() {
	local name=$1 user=$2 port=$3 wsgi=$4 pidf="$AIO_RUN/$1.pid"
	shift 4
	local cmd=(uwsgi --plugins python3 --master --die-on-term --lazy-apps --enable-threads
		--processes "${UWSGI_PROCESSES:-1}" --threads "${UWSGI_THREADS:-8}" --buffer-size 65535 --add-header "Connection: close"
		--http-socket "$HOST:$port" --wsgi-file "$wsgi" --uid "$user" --gid "$user"
		--pidfile "$pidf" --daemonize "$AIO_LOG/$name.log" "$@")
	if pid_alive "$pidf"; then
		[ "$(cat "$AIO_RUN/$name.cmd" 2>/dev/null)" = "${cmd[*]}" ] && return 0
		stop_daemon "$name"
	fi
	log "starting $name (uwsgi on $HOST:$port)"
	touch "$AIO_LOG/$name.log"
	chown "$user" "$AIO_LOG/$name.log"
	"${cmd[@]}" >/dev/null
	echo "${cmd[*]}" >"$AIO_RUN/$name.cmd"
	local i=0
	while ! pid_alive "$pidf"; do
		i=$((i + 1))
		[ $i -lt 40 ] || die "$name did not start (see $AIO_LOG/$name.log)"
		sleep 0.25
	done
}

stop_all() {
	local name dom
	# Guests first: their QEMU processes would outlive libvirtd (Nova finds
	# them shut off at the next start).
	if pid_alive "$AIO_RUN/libvirtd.pid"; then
		for dom in $(virsh -c qemu:///system list --name 2>/dev/null); do
			log "stopping guest $dom"
			virsh -c qemu:///system destroy "$dom" >/dev/null 2>&1 || true
		done
	fi
	for name in "$AIO_RUN"/nova-compute-fake-*.pid; do
		[ -e "$name" ] && stop_daemon "$(basename "$name" .pid)"
	done
	for name in nova-compute nova-scheduler nova-conductor nova-api neutron-api placement glance-api keystone libvirtd virtlogd; do
		stop_daemon "$name"
	done
	if pid_alive "$AIO_RUN/rabbitmq.pid"; then
		log "stopping rabbitmq"
		rabbitmqctl stop >/dev/null 2>&1 || true
		epmd -kill >/dev/null 2>&1 || true
	fi
	rm -f "$AIO_RUN/rabbitmq.pid"
	if [ -S /run/mysqld/mysqld.sock ]; then
		log "stopping mariadb"
		mysqladmin shutdown 2>/dev/null || true
	fi
}

case "$ACTION" in
up) UP_STARTED=$(date -u '+%F %T') ;;
down)
	stop_all
	exit 0
	;;
status)
	for f in "$AIO_RUN"/*.pid; do
		[ -e "$f" ] || continue
		if pid_alive "$f"; then s=running; else s=dead; fi
		printf '%-16s %s\n' "$(basename "$f" .pid)" "$s"
	done
	exit 0
	;;
*) die "usage: $0 [up|down|status]" ;;
esac

# ---------------------------------------------------------------- packages

install_packages() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	log "installing ${missing[*]}"
	# Debian's OpenStack packages ask debconf whether to set up databases
	# and register endpoints: no, this script does that by hand.
	local q
	for q in keystone/configure_db keystone/create-admin-tenant keystone/register-endpoint \
		glance/configure_db glance/register-endpoint nova/configure_db nova/register-endpoint \
		placement/configure_db placement/register-endpoint neutron/configure_db neutron/register-endpoint; do
		echo "${q%%/*}-common $q boolean false"
		echo "${q%%/*} $q boolean false"
		echo "${q%%/*}-api $q boolean false"
		echo "${q%%/*}-server $q boolean false"
	done | debconf-set-selections
	# Keep the packages' init scripts from starting anything: no systemd here,
	# and the services are started below with this script's settings.
	local had_policy=0
	[ -e /usr/sbin/policy-rc.d ] && had_policy=1
	if [ $had_policy = 0 ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
	[ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
	qemu-img --version >/dev/null || die "qemu-img is missing after the install"
}
install_packages

# ---------------------------------------------------------------- secrets

# One random password per account, made once (a later run adds only new ones).
mkdir -p "$(dirname "$SECRETS")"
chmod 700 "$(dirname "$SECRETS")"
touch "$SECRETS"
chmod 600 "$SECRETS"
for v in DB RABBIT ADMIN DEMO GLANCE NOVA PLACEMENT NEUTRON; do
	grep -q "^${v}_PASS=" "$SECRETS" ||
		echo "${v}_PASS=$(head -c 18 /dev/urandom | base64 | tr '+/' 'xy')" >>"$SECRETS"
done
# shellcheck disable=SC1090
. "$SECRETS"

dburl() { echo "mysql+pymysql://$1:${DB_PASS}@$HOST/$2?charset=utf8"; }
RABBIT_URL="rabbit://openstack:${RABBIT_PASS}@$HOST:5672/"

# ---------------------------------------------------------------- MariaDB

write_file /etc/mysql/mariadb.conf.d/99-amirun-aio.cnf 644 root:root <<EOT || true
[mysqld]
bind-address = $HOST
max_connections = 1024
innodb_buffer_pool_size = 256M
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
EOT
if ! mysqladmin ping >/dev/null 2>&1; then
	log "starting mariadb"
	mkdir -p /run/mysqld
	chown mysql:mysql /run/mysqld
	setsid mysqld_safe </dev/null >>"$AIO_LOG/mariadb.log" 2>&1 &
	i=0
	until mysqladmin ping >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -lt 120 ] || die "mariadb did not start (see $AIO_LOG/mariadb.log, /var/log/mysql/)"
		sleep 0.5
	done
fi
create_dbs() {
	local sql="" db
	for db in keystone glance placement nova_api nova nova_cell0 neutron; do
		sql+="CREATE DATABASE IF NOT EXISTS $db;"
	done
	sql+="CREATE USER IF NOT EXISTS 'openstack'@'localhost' IDENTIFIED BY '$DB_PASS';"
	sql+="CREATE USER IF NOT EXISTS 'openstack'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';"
	sql+="ALTER USER 'openstack'@'localhost' IDENTIFIED BY '$DB_PASS';"
	sql+="ALTER USER 'openstack'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';"
	for db in keystone glance placement nova_api nova nova_cell0 neutron; do
		sql+="GRANT ALL PRIVILEGES ON $db.* TO 'openstack'@'localhost';"
		sql+="GRANT ALL PRIVILEGES ON $db.* TO 'openstack'@'127.0.0.1';"
	done
	mysql -e "$sql"
}
once databases "v2-$DB_PASS" create_dbs

# ---------------------------------------------------------------- RabbitMQ

write_file /etc/rabbitmq/rabbitmq-env.conf 644 root:root <<EOT || true
NODE_IP_ADDRESS=$HOST
NODE_PORT=5672
NODENAME=rabbit@localhost
ERL_EPMD_ADDRESS=$HOST
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOT
if ! rabbitmqctl -q status >/dev/null 2>&1; then
	log "starting rabbitmq"
	export ERL_EPMD_ADDRESS=$HOST
	rabbitmq-server -detached >>"$AIO_LOG/rabbitmq.log" 2>&1
	rabbitmqctl -q wait --timeout 120 /var/lib/rabbitmq/mnesia/rabbit@localhost.pid >/dev/null ||
		die "rabbitmq did not start (see /var/log/rabbitmq/)"
fi
cat /var/lib/rabbitmq/mnesia/rabbit@localhost.pid >"$AIO_RUN/rabbitmq.pid" 2>/dev/null || true
rabbit_user() {
	rabbitmqctl -q add_user openstack "$RABBIT_PASS" >/dev/null 2>&1 ||
		rabbitmqctl -q change_password openstack "$RABBIT_PASS" >/dev/null
	rabbitmqctl -q set_permissions openstack ".*" ".*" ".*" >/dev/null
}
once rabbit-user "v1-$RABBIT_PASS" rabbit_user

# ---------------------------------------------------------------- Keystone

# authtoken SERVICE_USER PASSWORD: the [keystone_authtoken] section of a service.
authtoken() {
	cat <<EOT
[keystone_authtoken]
www_authenticate_uri = http://$HOST:5000
auth_url = http://$HOST:5000
memcached_servers =
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $1
password = $2
region_name = $REGION
EOT
}

write_file /etc/keystone/keystone.conf 640 root:keystone <<EOT || true
[DEFAULT]
log_dir = /var/log/keystone
[database]
connection = $(dburl openstack keystone)
[token]
provider = fernet
[cache]
enabled = false
EOT
keystone_db() {
	runuser -u keystone -- keystone-manage db_sync
	keystone-manage fernet_setup --keystone-user keystone --keystone-group keystone
	keystone-manage credential_setup --keystone-user keystone --keystone-group keystone
	keystone-manage bootstrap --bootstrap-password "$ADMIN_PASS" \
		--bootstrap-admin-url "$KEYSTONE_URL" --bootstrap-internal-url "$KEYSTONE_URL" \
		--bootstrap-public-url "$KEYSTONE_URL" --bootstrap-region-id "$REGION"
}
once keystone-db "v1-$ADMIN_PASS-$(dpkg-query -W -f='${Version}' keystone)" keystone_db
uwsgi_app keystone keystone 5000 /usr/bin/keystone-wsgi-public --env "AIO_CONF=$(conf_hash /etc/keystone/keystone.conf)"
wait_http keystone "$KEYSTONE_URL"


# clouds.yaml for every client (openstack CLI, amirun).
mkdir -p "$(dirname "$CLOUDS")"
write_file "$CLOUDS" 600 root:root <<EOT || true
# Written by amirun's scripts/openstack-aio.sh.
clouds:
  amirun-aio:
    region_name: $REGION
    interface: public
    identity_api_version: 3
    auth:
      auth_url: $KEYSTONE_URL
      username: admin
      password: $ADMIN_PASS
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
  amirun-aio-demo:
    region_name: $REGION
    interface: public
    identity_api_version: 3
    auth:
      auth_url: $KEYSTONE_URL
      username: demo
      password: $DEMO_PASS
      project_name: demo
      user_domain_name: Default
      project_domain_name: Default
EOT

# Projects, users, services and endpoints, in one Python process (each
# `openstack` CLI start costs seconds on a loaded machine).
keystone_objects() {
	DEMO_PASS=$DEMO_PASS GLANCE_PASS=$GLANCE_PASS NOVA_PASS=$NOVA_PASS \
		PLACEMENT_PASS=$PLACEMENT_PASS NEUTRON_PASS=$NEUTRON_PASS HOST=$HOST REGION=$REGION \
		/usr/bin/python3 - <<'PY'
import os
import openstack

c = openstack.connect(cloud="amirun-aio")
idn = c.identity
dom = idn.find_domain("default") or idn.find_domain("Default")

def project(name):
    return idn.find_project(name, domain_id=dom.id) or idn.create_project(name=name, domain_id=dom.id)

def role(name):
    return idn.find_role(name) or idn.create_role(name=name)

def user(name, password):
    u = idn.find_user(name, domain_id=dom.id)
    if u is None:
        return idn.create_user(name=name, password=password, domain_id=dom.id)
    return idn.update_user(u, password=password)

service, demo = project("service"), project("demo")
admin, member = role("admin"), role("member")
idn.assign_project_role_to_user(demo, user("demo", os.environ["DEMO_PASS"]), member)
for name in ("glance", "nova", "placement", "neutron"):
    idn.assign_project_role_to_user(service, user(name, os.environ[name.upper() + "_PASS"]), admin)

host, region = os.environ["HOST"], os.environ["REGION"]
for name, kind, path in (("glance", "image", "9292"), ("nova", "compute", "8774/v2.1"),
                         ("placement", "placement", "8778"), ("neutron", "network", "9696")):
    svc = next((s for s in idn.services() if s.type == kind), None) or \
        idn.create_service(name=name, type=kind)
    have = {e.interface for e in idn.endpoints(service_id=svc.id)}
    for iface in ("public", "internal", "admin"):
        if iface not in have:
            idn.create_endpoint(service_id=svc.id, interface=iface,
                                url=f"http://{host}:{path}", region_id=region)
PY
}
once keystone-objects "v2-$ADMIN_PASS-$DEMO_PASS" keystone_objects

# ---------------------------------------------------------------- Glance

{
	cat <<EOT
[DEFAULT]
bind_host = $HOST
bind_port = 9292
workers = 1
log_dir = /var/log/glance
[database]
connection = $(dburl openstack glance)
[glance_store]
stores = file
default_store = file
filesystem_store_datadir = /var/lib/glance/images/
[paste_deploy]
flavor = keystone
[oslo_concurrency]
lock_path = /var/lib/glance/lock
EOT
	authtoken glance "$GLANCE_PASS"
} | write_file /etc/glance/glance-api.conf 640 root:glance || true
mkdir -p /var/lib/glance/images /var/lib/glance/lock
chown glance:glance /var/lib/glance/images /var/lib/glance/lock
once glance-db "v1-$(dpkg-query -W -f='${Version}' glance-api)" runuser -u glance -- glance-manage db_sync
daemon glance-api glance env "AIO_CONF=$(conf_hash /etc/glance/glance-api.conf)" \
	glance-api --config-file /etc/glance/glance-api.conf

# ---------------------------------------------------------------- Placement

{
	cat <<EOT
[DEFAULT]
log_dir = /var/log/placement
[api]
auth_strategy = keystone
[placement_database]
connection = $(dburl openstack placement)
EOT
	authtoken placement "$PLACEMENT_PASS"
} | write_file /etc/placement/placement.conf 640 root:placement || true
once placement-db "v1-$(dpkg-query -W -f='${Version}' placement-api)" runuser -u placement -- placement-manage db sync
uwsgi_app placement placement 8778 /usr/bin/placement-api --env "AIO_CONF=$(conf_hash /etc/placement/placement.conf)"

# ---------------------------------------------------------------- Neutron

# Only the API server, ML2 with no mechanism driver and no agents: Nova asks
# Neutron for a server's ports (none: servers boot with networks=none).
{
	cat <<EOT
[DEFAULT]
core_plugin = ml2
service_plugins =
auth_strategy = keystone
transport_url = $RABBIT_URL
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
log_dir = /var/log/neutron
[database]
connection = $(dburl openstack neutron)
[oslo_concurrency]
lock_path = /var/lib/neutron/tmp
EOT
	authtoken neutron "$NEUTRON_PASS"
} | write_file /etc/neutron/neutron.conf 640 root:neutron || true
write_file /etc/neutron/plugins/ml2/ml2_conf.ini 640 root:neutron <<EOT || true
[ml2]
type_drivers = local,flat
tenant_network_types = local
mechanism_drivers =
extension_drivers =
EOT
mkdir -p /var/lib/neutron/tmp
chown neutron:neutron /var/lib/neutron/tmp
NEUTRON_ARGS="--config-file=/etc/neutron/neutron.conf --config-file=/etc/neutron/plugins/ml2/ml2_conf.ini"
# shellcheck disable=SC2086 # two arguments
once neutron-db "v1-$(dpkg-query -W -f='${Version}' neutron-common)" \
	runuser -u neutron -- neutron-db-manage $NEUTRON_ARGS upgrade heads
# Neutron's WSGI app, with SQLAlchemy's mappers configured before the first
# request: otherwise a first `GET /v2.0/ports` (Nova's, when it deletes a
# server) fails with "type object 'Port' has no attribute 'port_forwardings'"
# because backrefs of models are not there yet.
write_file "$AIO_STATE/neutron-api-wsgi.py" 644 root:root <<'EOT' || true
"""neutron-api for uwsgi (scripts/openstack-aio.sh), mappers configured at start."""
import runpy

from sqlalchemy import orm

application = runpy.run_path("/usr/bin/neutron-api", run_name="neutron_api")["application"]
orm.configure_mappers()
EOT
# One thread per worker, as for nova-api below: neutron-api monkey-patches
# eventlet, and with threads a worker deadlocked ("greenlet.error: cannot
# switch to a different thread"), which hung every Nova call that asks it
# for ports.
UWSGI_PROCESSES=2 UWSGI_THREADS=1 uwsgi_app neutron-api neutron 9696 "$AIO_STATE/neutron-api-wsgi.py" --pyargv "$NEUTRON_ARGS" \
	--env "AIO_CONF=$(conf_hash /etc/neutron/neutron.conf /etc/neutron/plugins/ml2/ml2_conf.ini "$AIO_STATE/neutron-api-wsgi.py")"

# ---------------------------------------------------------------- Nova

nova_conf() { # HOST COMPUTE_DRIVER
	cat <<EOT
[DEFAULT]
transport_url = $RABBIT_URL
my_ip = $HOST
host = $1
state_path = /var/lib/nova
instances_path = /var/lib/nova/instances
log_dir = /var/log/nova
rootwrap_config = /etc/nova/rootwrap.conf
enabled_apis = osapi_compute
compute_driver = $2
force_raw_images = false
default_schedule_zone = aio
[api]
auth_strategy = keystone
[api_database]
connection = $(dburl openstack nova_api)
[database]
connection = $(dburl openstack nova)
[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = 30
[libvirt]
virt_type = qemu
cpu_mode = none
[vnc]
enabled = false
[spice]
enabled = false
[oslo_concurrency]
lock_path = /var/lib/nova/tmp
[oslo_messaging_notifications]
driver = noop
[placement]
region_name = $REGION
auth_type = password
auth_url = http://$HOST:5000/v3
project_domain_name = Default
user_domain_name = Default
project_name = service
username = placement
password = $PLACEMENT_PASS
[glance]
region_name = $REGION
[neutron]
region_name = $REGION
auth_type = password
auth_url = http://$HOST:5000/v3
project_domain_name = Default
user_domain_name = Default
project_name = service
username = nova
password = $NOVA_PASS
[wsgi]
api_paste_config = /etc/nova/api-paste.ini
EOT
	authtoken nova "$NOVA_PASS"
}
nova_conf aio libvirt.LibvirtDriver | write_file /etc/nova/nova.conf 640 root:nova || true
mkdir -p /var/lib/nova/tmp /var/lib/nova/instances
chown nova:nova /var/lib/nova/tmp /var/lib/nova/instances
nova_db() {
	runuser -u nova -- nova-manage api_db sync
	runuser -u nova -- nova-manage cell_v2 map_cell0
	runuser -u nova -- nova-manage cell_v2 list_cells | grep -q ' cell1 ' ||
		runuser -u nova -- nova-manage cell_v2 create_cell --name=cell1
	runuser -u nova -- nova-manage db sync
}
once nova-db "v1-$DB_PASS-$(dpkg-query -W -f='${Version}' nova-common)" nova_db
NOVA_CONF="AIO_CONF=$(conf_hash /etc/nova/nova.conf)"
# One thread per worker, as Debian's own nova-api-uwsgi.ini: nova-api
# monkey-patches eventlet, and with threads the replies of its RPC calls
# (console log, …) were lost (MessagingTimeout after 60 s).
UWSGI_PROCESSES=2 UWSGI_THREADS=1 uwsgi_app nova-api nova 8774 /usr/bin/nova-api-wsgi --env "$NOVA_CONF"
daemon nova-conductor nova env "$NOVA_CONF" nova-conductor --config-file /etc/nova/nova.conf
daemon nova-scheduler nova env "$NOVA_CONF" nova-scheduler --config-file /etc/nova/nova.conf

# libvirt: unix sockets only, no cgroups or security driver (no systemd,
# no AppArmor here), and its default NAT network stays off.
write_file /etc/libvirt/qemu.conf 600 root:root <<EOT || true
cgroup_controllers = [ ]
security_driver = "none"
EOT
# The unix socket without polkit (no D-Bus here): members of group libvirt
# (nova) may use it.
write_file /etc/libvirt/libvirtd.conf 644 root:root <<EOT || true
unix_sock_group = "libvirt"
unix_sock_ro_perms = "0770"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
EOT
rm -f /etc/libvirt/qemu/networks/autostart/default.xml
daemon virtlogd root virtlogd
daemon libvirtd root env "AIO_CONF=$(conf_hash /etc/libvirt/libvirtd.conf /etc/libvirt/qemu.conf)" libvirtd
i=0
until runuser -u nova -- virsh -c qemu:///system version >/dev/null 2>&1; do
	i=$((i + 1))
	[ $i -lt 120 ] || die "libvirtd does not answer (see $AIO_LOG/libvirtd.log)"
	sleep 0.5
done
daemon nova-compute nova env "$NOVA_CONF" nova-compute --config-file /etc/nova/nova.conf

# Fake hosts: the same nova.conf, then one file that renames the host and
# swaps the driver.
for n in $(seq 1 "$FAKE_HOSTS"); do
	write_file "/etc/nova/fake-$n.conf" 640 root:nova <<EOT || true
[DEFAULT]
host = fake-$n
compute_driver = fake.FakeDriver
EOT
	daemon "nova-compute-fake-$n" nova env "$NOVA_CONF" "AIO_FAKE=$(conf_hash "/etc/nova/fake-$n.conf")" \
		nova-compute --config-file /etc/nova/nova.conf --config-file "/etc/nova/fake-$n.conf"
done

# ---------------------------------------------------------------- ready?

wait_http glance "http://$HOST:9292/"
wait_http placement "http://$HOST:8778/"
wait_http nova-api "http://$HOST:8774/"
wait_http neutron "http://$HOST:9696/"
wait_compute() {
	local i=0
	local want=$((FAKE_HOSTS + 1))
	until [ "$(mysql -N -e "SELECT COUNT(*) FROM nova.services WHERE topic='compute' AND deleted=0 AND disabled=0 AND updated_at > NOW() - INTERVAL 60 SECOND")" -ge "$want" ]; do
		i=$((i + 1))
		[ $i -lt 100 ] || die "not all $want nova-compute services are up (see $AIO_LOG/nova-compute*.log)"
		sleep 3
	done
	runuser -u nova -- nova-manage cell_v2 discover_hosts >/dev/null
}
once compute-discovered "v2-$FAKE_HOSTS" wait_compute

# Zones are aggregates (Nova mirrors them to Placement, whose prefilter
# places by zone): `aio` = host aio, `fake` = the fake hosts.
zones() {
	FAKE_HOSTS=$FAKE_HOSTS /usr/bin/python3 - <<'PY'
import os
import openstack

c = openstack.connect(cloud="amirun-aio")
fakes = [f"fake-{n}" for n in range(1, int(os.environ["FAKE_HOSTS"]) + 1)]
for name, zone, hosts in (("aio", "aio", ["aio"]), ("fake-hosts", "fake", fakes)):
    if not hosts:
        continue
    agg = next((a for a in c.compute.aggregates() if a.name == name), None) or \
        c.compute.create_aggregate(name=name, availability_zone=zone)
    for h in hosts:
        if h not in (agg.hosts or []):
            agg = c.compute.add_host_to_aggregate(agg, h)
PY
}
once zones "v2-$FAKE_HOSTS" zones

# No compute quota for the admin and demo projects (tests launch dozens of
# servers on the fake hosts; the default is 10 instances, 20 cores).
quotas() {
	/usr/bin/python3 - <<'PY'
import openstack

c = openstack.connect(cloud="amirun-aio")
for project in ("admin", "demo"):
    c.set_compute_quotas(project, instances=-1, cores=-1, ram=-1)
PY
}
once quotas "v1" quotas

# Every run: the scheduler places only on compute services that reported
# since they (re)started; until then a launch gets "No valid host".
compute_reporting() {
	local i=0 want=$((FAKE_HOSTS + 1))
	until [ "$(mysql -N -e "SELECT COUNT(*) FROM nova.services WHERE topic='compute' AND deleted=0 AND disabled=0 AND updated_at > '$UP_STARTED'")" -ge "$want" ]; do
		i=$((i + 1))
		[ $i -lt 100 ] || die "not all $want nova-compute services reported (see $AIO_LOG/nova-compute*.log)"
		sleep 2
	done
}
compute_reporting

cat <<EOT
openstack-aio: ready.  Point a client at it with
  export OS_CLIENT_CONFIG_FILE=$CLOUDS OS_CLOUD=amirun-aio    # admin
  (or OS_CLOUD=amirun-aio-demo: member of project demo)
  openstack server list
Region $REGION; Keystone $KEYSTONE_URL; servers boot with networks=none
(compute API microversion >= 2.37); zone aio = host aio (QEMU/TCG guests),
zone fake = $FAKE_HOSTS fake-driver hosts.  Logs: $AIO_LOG/.  Stop: $0 down
EOT
