#!/usr/bin/env python3
"""Checks compose.yml and the broker config it mounts: usage check_compose.py SOURCE_DIR."""
import pathlib
import re
import sys

import yaml

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
failures = []


def check(ok, message):
    if not ok:
        failures.append(message)


compose = yaml.safe_load((root / "compose.yml").read_text())
mqtt = compose.get("services", {}).get("mqtt")
check(mqtt is not None, "compose.yml has no service 'mqtt'")
mqtt = mqtt or {}
check(mqtt.get("image") == "eclipse-mosquitto:2-openssl",
      f"image is {mqtt.get('image')!r}, want 'eclipse-mosquitto:2-openssl'")
check(any(str(p).endswith("1883:1883") for p in mqtt.get("ports", [])),
      f"port 1883 is not published: {mqtt.get('ports')}")

mounts = {}
for volume in mqtt.get("volumes", []):
    parts = volume.split(":")
    check(len(parts) in (2, 3), f"unexpected volume syntax {volume!r}")
    mounts[parts[1]] = parts[0]
check(mounts.get("/mosquitto/config") == "./config/mosquitto",
      f"/mosquitto/config must mount ./config/mosquitto (the one broker config), got {mounts.get('/mosquitto/config')!r}")
named = compose.get("volumes") or {}
for path in ("/mosquitto/data", "/mosquitto/log"):
    source = mounts.get(path)
    check(source is not None and source in named,
          f"{path} must be a named volume declared under 'volumes:', got {source!r}")

# The container runs the mounted folder's mosquitto.conf as written.
conf_path = root / "config" / "mosquitto" / "mosquitto.conf"
check(conf_path.is_file(), f"{conf_path} is missing")
lines = conf_path.read_text().splitlines()
settings = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
check("listener 1883" in settings, "the config must listen with 'listener 1883' (rendered for tests)")
for required in ("persistence true", "persistence_location /mosquitto/data/", "max_queued_messages 0",
                 "set_tcp_nodelay true", "log_dest file /mosquitto/log/mosquitto.log",
                 "allow_duplicate_messages true"):
    check(required in settings, f"the config lacks '{required}'")
for option in ("autosave_interval", "max_queued_bytes", "persistent_client_expiration"):
    check(any(re.match(option + r"\s+\S", s) for s in settings), f"the config does not set {option}")
check(not any(s.startswith("user ") for s in settings),
      "the container config must not set 'user' (the image runs as mosquitto; tests append 'user root')")

# Every setting is explained: each paragraph that sets something starts with a comment.
for paragraph in re.split(r"\n\s*\n", "\n".join(lines)):
    first = paragraph.strip().splitlines()[0] if paragraph.strip() else "#"
    check(first.startswith("#"), f"mosquitto.conf: '{first}' has no comment explaining why")
# A second copy for compose, if someone adds one, must not drift.
copy = root / "docker" / "mosquitto_config" / "mosquitto.conf"
if copy.exists():
    check(copy.read_text() == conf_path.read_text(), f"{copy} differs from {conf_path}")

if failures:
    print("\n".join("FAIL: " + f for f in failures))
    sys.exit(1)
print("compose.yml and config/mosquitto/mosquitto.conf look right")
