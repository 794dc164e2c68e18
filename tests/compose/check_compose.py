#!/usr/bin/env python3
"""Checks compose.yml and the broker configs it mounts (config/mosquitto, and config/mosquitto-secure for
the secured service of the profile "secure"): usage check_compose.py SOURCE_DIR."""
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


# --- The secured variant: service mqtt-secure, profile "secure", config/mosquitto-secure/ ---------------
secure = compose.get("services", {}).get("mqtt-secure")
check(secure is not None, "compose.yml has no service 'mqtt-secure'")
secure = secure or {}
check(secure.get("image") == "eclipse-mosquitto:2-openssl",
      f"mqtt-secure: image is {secure.get('image')!r}, want 'eclipse-mosquitto:2-openssl'")
check(secure.get("profiles") == ["secure"],
      f"mqtt-secure must be in the profile 'secure' only (started by --profile secure), got {secure.get('profiles')!r}")
for port in ("8883:8883", "8884:8884"):
    check(any(str(p).endswith(port) for p in secure.get("ports", [])),
          f"mqtt-secure: port {port} is not published: {secure.get('ports')}")
check(not any(str(p).endswith(":1883") for p in secure.get("ports", [])),
      "mqtt-secure must not publish a plain MQTT port")
secure_mounts = {}
for volume in secure.get("volumes", []):
    parts = volume.split(":")
    check(len(parts) in (2, 3), f"mqtt-secure: unexpected volume syntax {volume!r}")
    secure_mounts[parts[1]] = parts
config_mount = secure_mounts.get("/mosquitto/config", [None])
check(config_mount[0] == "./config/mosquitto-secure",
      f"mqtt-secure: /mosquitto/config must mount ./config/mosquitto-secure, got {config_mount[0]!r}")
check(config_mount[-1] == "ro", "mqtt-secure: mount ./config/mosquitto-secure read-only (':ro')")
for path in ("/mosquitto/data", "/mosquitto/log"):
    source = secure_mounts.get(path, [None])[0]
    check(source is not None and source in named and source != mounts.get(path),
          f"mqtt-secure: {path} must be a named volume of its own, got {source!r}")
health = secure.get("healthcheck") or {}
test = health.get("test")
check(isinstance(test, list) and len(test) >= 2 and test[0] in ("CMD", "CMD-SHELL"),
      f"mqtt-secure: the healthcheck needs a test [CMD-SHELL, ...], got {test!r}")
command = " ".join(test[1:]) if isinstance(test, list) else str(test)
for part in ("mosquitto_sub", "-p 8883", "--cafile /mosquitto/config/certs/ca.crt", "-u healthcheck",
             "/mosquitto/config/certs/healthcheck.password", "$$SYS/broker/uptime", "-C 1", "-W "):
    check(part in command, f"mqtt-secure: the healthcheck lacks '{part}': {command}")
for key in ("interval", "timeout", "retries"):
    check(key in health, f"mqtt-secure: the healthcheck does not set {key}")

secure_dir = root / "config" / "mosquitto-secure"
secure_conf = secure_dir / "mosquitto.conf"
check(secure_conf.is_file(), f"{secure_conf} is missing")
secure_lines = secure_conf.read_text().splitlines() if secure_conf.is_file() else []
secure_settings = [line.strip() for line in secure_lines if line.strip() and not line.lstrip().startswith("#")]
for required in ("listener 8883", "listener 8884", "allow_anonymous false",
                 "password_file /mosquitto/config/certs/passwd", "acl_file /mosquitto/config/acl",
                 "require_certificate true", "use_identity_as_username true"):
    check(required in secure_settings, f"the secured config lacks '{required}'")
check(not any(s.startswith("listener ") and s not in ("listener 8883", "listener 8884") for s in secure_settings),
      "the secured config may only listen with 'listener 8883' and 'listener 8884' (rendered for tests)")
for option in ("cafile", "certfile", "keyfile"):
    values = [s.split(None, 1)[1] for s in secure_settings if s.startswith(option + " ")]
    check(len(values) == 2 and all(v.startswith("/mosquitto/config/certs/") for v in values),
          f"the secured config needs {option} under /mosquitto/config/certs/ for each listener, got {values}")
tls_versions = [s for s in secure_settings if s.startswith("tls_version ")]
check(len(tls_versions) == 2 and all(v.split()[1] in ("tlsv1.2", "tlsv1.3") for v in tls_versions),
      f"each TLS listener needs tls_version tlsv1.2 or tlsv1.3, got {tls_versions}")
check(not any(s.startswith("user ") for s in secure_settings),
      "the secured config must not set 'user' (the image runs as mosquitto; tests append 'user root')")
# The delivery settings are the plain config's, value for value: every line of config/mosquitto's but its
# listener and anonymous access.
for setting in settings:
    if setting.split()[0] in ("listener", "allow_anonymous"):
        continue
    check(setting in secure_settings, f"the secured config lacks '{setting}' of config/mosquitto/mosquitto.conf")
for paragraph in re.split(r"\n\s*\n", "\n".join(secure_lines)):
    first = paragraph.strip().splitlines()[0] if paragraph.strip() else "#"
    check(first.startswith("#"), f"config/mosquitto-secure/mosquitto.conf: '{first}' has no comment explaining why")

# The ACL: rules of the users named in the password file that scripts/make-test-ca writes, every rule
# explained by a comment line right above it (a "#" after a rule would be part of its topic).
acl_path = secure_dir / "acl"
check(acl_path.is_file(), f"{acl_path} is missing")
acl_lines = acl_path.read_text().splitlines() if acl_path.is_file() else []
users = set()
for number, line in enumerate(acl_lines):
    words = line.split()
    if not words or line.startswith("#"):
        continue
    check(words[0] in ("user", "topic", "pattern"), f"acl line {number + 1}: unknown rule {line!r}")
    if words[0] == "user":
        users.add(words[1])
        continue
    check(len(words) == 3 and words[1] in ("read", "write", "readwrite", "deny"),
          f"acl line {number + 1}: want '{words[0]} read|write|readwrite|deny TOPIC', got {line!r}")
    previous = next((l for l in reversed(acl_lines[:number]) if l.strip()), "")
    check(previous.startswith("#") or previous.split()[:1] in (["topic"], ["pattern"]),
          f"acl line {number + 1}: {line!r} has no comment explaining why")
check(users == {"publisher", "subscriber", "caller", "healthcheck"},
      f"the ACL's users are {sorted(users)}, want publisher, subscriber, caller and healthcheck")
check("pattern read xymqtt/results/%c/#" in acl_lines, "the ACL lacks 'pattern read xymqtt/results/%c/#'")
check("topic read $SYS/broker/uptime" in acl_lines, "the ACL does not let the healthcheck read $SYS/broker/uptime")
ca_script = root / "scripts" / "make-test-ca"
check(ca_script.is_file() and all(f"[{user}]" in ca_script.read_text() for user in users),
      "scripts/make-test-ca must make a password for every user of the ACL")
# The generated files are never committed.
ignore = secure_dir / "certs" / ".gitignore"
check(ignore.is_file() and "*" in ignore.read_text().split(),
      f"{ignore} must ignore everything in certs/ (generated certificates, keys and passwords)")

if failures:
    print("\n".join("FAIL: " + f for f in failures))
    sys.exit(1)
print("compose.yml, config/mosquitto/mosquitto.conf and config/mosquitto-secure/ look right")
