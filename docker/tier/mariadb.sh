#!/bin/sh
# One MariaDB server of the example tier: tier-mariadb PORT SERVER_ID [PRIMARY_PORT]
# On first start it initialises the data directory, creates the accounts Sluice and the
# application use (docs/setup.md lists the same GRANTs) and, for a replica, points it at the
# primary by GTID. Passwords come from the files in /run/secrets.
set -eu
port=$1
id=$2
primary_port=${3:-}
data=/var/lib/mysql
run=/run/mysqld
mkdir -p "$data" "$run"
chown mysql:mysql "$data" "$run"
cnf=$run/my-$port.cnf
cat > "$cnf" <<CNF
[mysqld]
user = mysql
datadir = $data
socket = $run/mysqld-$port.sock
pid-file = $run/mysqld-$port.pid
port = $port
bind-address = 127.0.0.1
server-id = $id
report-host = 127.0.0.1
report-port = $port
log-bin = mysql-bin
binlog-format = ROW
gtid-strict-mode = ON
log-slave-updates = ON
skip-name-resolve
innodb-buffer-pool-size = 64M
performance-schema = OFF
rpl_semi_sync_master_enabled = ON
rpl_semi_sync_slave_enabled = ON
rpl_semi_sync_master_wait_point = AFTER_SYNC
rpl_semi_sync_master_timeout = 10000
# A replica has semi-sync master enabled too (so that it can be promoted as is); with no
# replica of its own it must not wait for an ACK when it applies (or commits) a transaction.
rpl_semi_sync_master_wait_no_slave = OFF
CNF
if [ -n "$primary_port" ]; then
  echo "read-only = ON" >> "$cnf"
fi
secret() { head -n1 "/run/secrets/$1"; }
if [ ! -d "$data/mysql" ]; then
  mariadb-install-db --defaults-file="$cnf" --auth-root-authentication-method=socket \
    --skip-test-db > /dev/null
  mariadbd --defaults-file="$cnf" --skip-networking --skip-slave-start &
  pid=$!
  i=0
  until mariadb --socket="$run/mysqld-$port.sock" -e 'SELECT 1' > /dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 120 ]; then echo "mariadb did not start" >&2; exit 1; fi
    sleep 0.5
  done
  {
    # The same accounts on every server, outside the binary log: every GTID history starts
    # empty, and any server can be promoted.
    echo "SET sql_log_bin = 0;"
    echo "CREATE USER 'repl'@'%' IDENTIFIED BY '$(secret repl_password)';"
    echo "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';"
    echo "CREATE USER 'sluice_monitor'@'%' IDENTIFIED BY '$(secret monitor_password)';"
    echo "GRANT RELOAD, PROCESS, SUPER, REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN, BINLOG MONITOR, BINLOG ADMIN, SLAVE MONITOR, READ_ONLY ADMIN, CONNECTION ADMIN ON *.* TO 'sluice_monitor'@'%';"
    echo "GRANT ALL PRIVILEGES ON sluice.* TO 'sluice_monitor'@'%';"
    echo "CREATE USER 'app'@'%' IDENTIFIED BY '$(secret app_password)';"
    echo "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, INDEX, ALTER ON guestbook.* TO 'app'@'%';"
    if [ -n "$primary_port" ]; then
      echo "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$primary_port, MASTER_USER='repl', MASTER_PASSWORD='$(secret repl_password)', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=0.25;"
    fi
  } | mariadb --socket="$run/mysqld-$port.sock"
  mariadb-admin --socket="$run/mysqld-$port.sock" shutdown
  wait "$pid" || true
fi
# PID 1 is the server itself (SIGTERM stops it cleanly). A replica starts replicating at once.
exec mariadbd --defaults-file="$cnf"
