#!/bin/sh
# Writes the Redis ACL file of the secured broker to $1 from passwords in the environment:
#   SY_REDIS_ADMIN_PASSWORD      admin: everything (`switchyard keys`, operators)
#   SY_REDIS_API_PASSWORD        api
#   SY_REDIS_SCHEDULER_PASSWORD  scheduler
#   SY_REDIS_WORKER_PASSWORD     worker (Rust and Python workers)
#   SY_REDIS_PUBLISHER_PASSWORD  publisher (direct NATS publishers: cancel flags only)
# The file holds SHA-256 hashes of the passwords, never the passwords. Every password must be
# set: a role without one could not log in, and a typo should stop the broker, not a part.
#
# What each role may do (keys from schemas/src/keys.rs; %R~ is read-only, %W~ write-only):
#   api        rate limits sy:rl:* and cancel flags sy:cancel:* (read, write, its scripts);
#              reads API keys sy:apikey:* and the registry sy:{reg}:*
#   scheduler  every sy:* key (reaping the registry, batch leases, cancel flags)
#   worker     its registry entries sy:{reg}:*; reads sy:cancel:*
#   publisher  sets cancel flags sy:cancel:* (SET/SETEX); reads nothing
# No role but admin may run dangerous commands (KEYS, FLUSHALL, CONFIG, …), SCAN the key
# space, or use pub/sub channels.
set -eu
out=${1:?usage: redis-users.sh ACL-FILE}

hash() {
    name=$1
    eval "password=\${$name:-}"
    if [ -z "$password" ]; then
        echo "redis-users.sh: $name is not set (every role needs a password)" >&2
        exit 1
    fi
    case $password in
        *[[:space:]]*) echo "redis-users.sh: $name holds white space" >&2; exit 1 ;;
    esac
    printf '%s' "$password" | sha256sum | cut -d' ' -f1
}

# Every role may PING: the parts check their login with it when they start. ROLE and CLUSTER
# SLOTS/SHARDS are how a client finds the master under Sentinel and the slots of a Redis Cluster.
base='-@all +ping +role +cluster|slots +cluster|shards'
data='+@read +@write +@transaction -@dangerous -scan -randomkey'

admin=$(hash SY_REDIS_ADMIN_PASSWORD)
api=$(hash SY_REDIS_API_PASSWORD)
scheduler=$(hash SY_REDIS_SCHEDULER_PASSWORD)
worker=$(hash SY_REDIS_WORKER_PASSWORD)
publisher=$(hash SY_REDIS_PUBLISHER_PASSWORD)

umask 077
mkdir -p "$(dirname "$out")"
cat > "$out.tmp" <<ACL
user default off resetpass resetkeys resetchannels -@all
user admin on #$admin ~* &* +@all
user api on #$api resetchannels ~sy:rl:* ~sy:cancel:* %R~sy:apikey:* %R~sy:{reg}:* $base $data +@scripting -@dangerous
user scheduler on #$scheduler resetchannels ~sy:* $base $data +@scripting -@dangerous
user worker on #$worker resetchannels ~sy:{reg}:* %R~sy:cancel:* $base $data
user publisher on #$publisher resetchannels %W~sy:cancel:* $base +set +setex
ACL
mv "$out.tmp" "$out"
