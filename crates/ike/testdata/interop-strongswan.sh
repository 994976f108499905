#!/bin/sh
# Runs tests/interop_strongswan.rs against strongSwan's charon inside a
# private network namespace (needs root and strongSwan installed:
# apt-get install charon-systemd or strongswan-charon + strongswan-swanctl).
# Usage: sh crates/ike/testdata/interop-strongswan.sh   (from the repo root)
set -eu
ROOT=$(pwd)
W=/tmp/ike-interop
CHARON_BIN=${CHARON_BIN:-/usr/lib/ipsec/charon}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo test -p vpnnat-ike --test interop_strongswan --no-run 2>&1 | tail -1
BIN=$(ls -t "$CARGO_TARGET_DIR"/debug/deps/interop_strongswan-* | grep -v '\.d$' | head -1)
rm -rf "$W"; mkdir -p "$W/swanctl/conf.d"
cat > "$W/strongswan.conf" <<CONF
charon {
  load_modular = yes
  install_routes = no
  port = 1500
  port_nat_t = 14500
  filelog {
    log {
      path = $W/charon.log
      default = 2
      ike = 2
      knl = 2
    }
  }
  plugins {
    include /etc/strongswan.d/charon/*.conf
    vici { socket = unix://$W/charon.vici }
  }
}
CONF
cat > "$W/swanctl/swanctl.conf" <<'CONF'
connections {
  router {
    version = 2
    local_addrs = 127.0.0.1
    remote_addrs = 127.0.0.2
    proposals = aes256gcm16-prfsha256-x25519,aes128gcm16-prfsha256-ecp256
    local { auth = psk
            id = @LID@ }
    remote { auth = psk
             id = @RID@ }
    children {
      c { local_ts = @LTS@
          remote_ts = @RTS@
          esp_proposals = aes256gcm16,aes128gcm16
          mode = tunnel }
    }
  }
}
secrets { ike-1 { id-1 = keyid:router-17
                  id-2 = gw1.center.example
                  secret = "interop pre-shared key 0123456789" } }
CONF
run_case() { # name test local_id remote_id local_ts remote_ts initiate
  unshare -n sh -eu -c '
    W='"$W"'; ip link set lo up; ip addr add 127.0.0.2/8 dev lo
    sed "s|@LID@|'"$3"'|; s|@RID@|'"$4"'|; s|@LTS@|'"$5"'|; s|@RTS@|'"$6"'|" "$W/swanctl.tmpl" > "$W/swanctl/swanctl.conf"
    STRONGSWAN_CONF=$W/strongswan.conf '"$CHARON_BIN"' & CPID=$!
    for i in 1 2 3 4 5 6 7 8 9 10; do [ -S $W/charon.vici ] && break; sleep 0.5; done
    swanctl --load-all --file $W/swanctl/swanctl.conf --uri unix://$W/charon.vici >/dev/null
    if [ '"$7"' = yes ]; then
      ( for i in $(seq 1 40); do [ -f $W/responder-ready ] && break; sleep 0.25; done
        swanctl --initiate --child c --uri unix://$W/charon.vici --timeout 10 > $W/initiate.log 2>&1 || true  ) &
      ( for i in $(seq 1 120); do [ -f $W/rekey-now ] && break; sleep 0.25; done
        [ -f $W/rekey-now ] && swanctl --rekey --ike router --uri unix://$W/charon.vici > $W/rekey.log 2>&1 || true ) &
    fi
    rc=0; VPNNAT_IKE_INTEROP=1 '"$BIN"' --exact '"$2"' --nocapture || rc=$?
    kill $CPID; wait $CPID 2>/dev/null || true
    exit $rc'
}
rm -f "$W/responder-ready" "$W/rekey-now"
mv "$W/swanctl/swanctl.conf" "$W/swanctl.tmpl"
run_case responder our_initiator_against_charon keyid:router-17 gw1.center.example 100.64.0.0/24 10.0.0.0/8 no
rm -f "$W/charon.vici"
run_case initiator charon_against_our_responder gw1.center.example keyid:router-17 10.1.0.0/16 100.64.0.5/32 yes
echo "interop: both cases passed (charon log: $W/charon.log)"
