#!/usr/bin/env python3
"""A minimal MQTT 5 / 3.1.1 client on a raw socket, to see exactly what a broker answers.

It connects, prints the CONNACK (session present, reason code and every property, by name),
optionally subscribes and receives messages (completing QoS 1 and 2 flows), and prints one JSON
line per packet of interest:

  {"connack": {"session_present": false, "reason_code": 0, "properties": {...}}}
  {"suback": {"reason_codes": [2]}}
  {"disconnect": {"reason_code": 158, "properties": {}}}       (a DISCONNECT from the broker)
  {"publish": {"topic": "a/b", "payload": "x", "qos": 2, "dup": false, "id": 7}}
  {"pubrec": {"id": 1, "reason_code": 0}}                       (also pubrel, pubcomp)
  {"end": "connected" | "count" | "timeout" | "closed" | "dropped"}

It can also publish with QoS 2 step by step (--publish, --repeat, --drop-after-pubrec, --release)
and leave a QoS 2 delivery half done (--drop-at-pubrel), to see how the broker keeps QoS 2's
exactly-once state across connections and nodes.

Exit status: 0 once a CONNACK arrived (whatever its code), 1 when none did.

  mqtt_probe.py --port 1883 -u user -P pass --session-expiry 3600 -s 'a/#' --count 3 --wait 10
"""
import argparse
import json
import socket
import struct
import sys
import time

PROPERTIES = {
    0x01: ("payload_format_indicator", "byte"),
    0x02: ("message_expiry_interval", "u32"),
    0x03: ("content_type", "str"),
    0x08: ("response_topic", "str"),
    0x09: ("correlation_data", "bin"),
    0x0B: ("subscription_identifier", "varint"),
    0x11: ("session_expiry_interval", "u32"),
    0x12: ("assigned_client_identifier", "str"),
    0x13: ("server_keep_alive", "u16"),
    0x15: ("authentication_method", "str"),
    0x16: ("authentication_data", "bin"),
    0x17: ("request_problem_information", "byte"),
    0x18: ("will_delay_interval", "u32"),
    0x19: ("request_response_information", "byte"),
    0x1A: ("response_information", "str"),
    0x1C: ("server_reference", "str"),
    0x1F: ("reason_string", "str"),
    0x21: ("receive_maximum", "u16"),
    0x22: ("topic_alias_maximum", "u16"),
    0x23: ("topic_alias", "u16"),
    0x24: ("maximum_qos", "byte"),
    0x25: ("retain_available", "byte"),
    0x26: ("user_property", "pair"),
    0x27: ("maximum_packet_size", "u32"),
    0x28: ("wildcard_subscription_available", "byte"),
    0x29: ("subscription_identifier_available", "byte"),
    0x2A: ("shared_subscription_available", "byte"),
}


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        b = self.data[self.pos:self.pos + n]
        if len(b) != n:
            raise ValueError("truncated packet")
        self.pos += n
        return b

    def byte(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack("!H", self.take(2))[0]

    def u32(self):
        return struct.unpack("!I", self.take(4))[0]

    def varint(self):
        n, mult = 0, 1
        while True:
            b = self.byte()
            n += (b & 0x7F) * mult
            if not b & 0x80:
                return n
            mult *= 128

    def str(self):
        return self.take(self.u16()).decode("utf-8", "replace")

    def bin(self):
        return self.take(self.u16()).hex()

    def done(self):
        return self.pos >= len(self.data)

    def properties(self):
        end = self.varint() + self.pos
        props = {}
        while self.pos < end:
            ident = self.varint()
            name, kind = PROPERTIES.get(ident, ("0x%02x" % ident, None))
            if kind is None:
                raise ValueError("unknown property " + name)
            if kind == "pair":
                props.setdefault(name, []).append([self.str(), self.str()])
            else:
                props[name] = getattr(self, kind)()
        return props


def read_packet(sock):
    head = sock.recv(1)
    if not head:
        return None, None
    n, mult = 0, 1
    while True:
        b = sock.recv(1)
        if not b:
            return None, None
        n += (b[0] & 0x7F) * mult
        if not b[0] & 0x80:
            break
        mult *= 128
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            return None, None
        body += chunk
    return head[0], body


def emit(kind, value):
    print(json.dumps({kind: value}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-V", "--version", type=int, choices=(4, 5), default=5)
    p.add_argument("-i", "--client-id", default="mqtt-probe")
    p.add_argument("-u", "--username")
    p.add_argument("-P", "--password")
    p.add_argument("--clean", action="store_true", help="clean start (MQTT 5) / clean session (3.1.1)")
    p.add_argument("-x", "--session-expiry", type=int, help="MQTT 5 Session Expiry Interval, seconds")
    p.add_argument("--receive-maximum", type=int)
    p.add_argument("--keep-alive", type=int, default=60)
    p.add_argument("-s", "--subscribe", action="append", default=[], help="a filter, subscribed with --qos")
    p.add_argument("-q", "--qos", type=int, default=2)
    p.add_argument("-n", "--count", type=int, default=0, help="stop after this many messages")
    p.add_argument("-w", "--wait", type=float, default=0, help="seconds to wait for messages")
    p.add_argument("--disconnect-expiry", type=int, help="Session Expiry Interval in the DISCONNECT (MQTT 5)")
    p.add_argument("--no-disconnect", action="store_true", help="close the socket without a DISCONNECT")
    p.add_argument("--publish", metavar="TOPIC", help="publish --message to TOPIC with QoS 2")
    p.add_argument("-m", "--message", default="", help="the payload of --publish")
    p.add_argument("--publish-id", type=int, default=1, help="the packet identifier of --publish")
    p.add_argument("--repeat", type=int, default=1, help="send --publish this many times (DUP on the repeats)")
    p.add_argument("--drop-after-pubrec", action="store_true",
                   help="close the socket after --publish's PUBREC, without PUBREL or DISCONNECT")
    p.add_argument("--release", type=int, metavar="ID", help="send PUBREL for ID first, wait for PUBCOMP")
    p.add_argument("--drop-at-pubrel", action="store_true",
                   help="close the socket at the first PUBREL, without PUBCOMP or DISCONNECT")
    a = p.parse_args()
    v5 = a.version == 5

    sock = socket.create_connection((a.host, a.port), timeout=10)
    flags = 0x02 if a.clean else 0
    payload = string(a.client_id)
    if a.username is not None:
        flags |= 0x80
        payload += string(a.username)
    if a.password is not None:
        flags |= 0x40
        payload += string(a.password)
    var = string("MQTT") + bytes([a.version, flags]) + struct.pack("!H", a.keep_alive)
    if v5:
        props = b""
        if a.session_expiry is not None:
            props += bytes([0x11]) + struct.pack("!I", a.session_expiry)
        if a.receive_maximum is not None:
            props += bytes([0x21]) + struct.pack("!H", a.receive_maximum)
        var += varint(len(props)) + props
    body = var + payload
    sock.sendall(bytes([0x10]) + varint(len(body)) + body)

    kind, body = read_packet(sock)
    if kind is None or kind >> 4 != 2:
        emit("end", "closed")
        return 1
    r = Reader(body)
    ack_flags, code = r.byte(), r.byte()
    emit("connack", {"session_present": bool(ack_flags & 1), "reason_code": code,
                     "properties": r.properties() if v5 and not r.done() else {}})
    if code != 0:
        emit("end", "closed")
        return 0

    def pid_ack(packet_type, ident):
        sock.sendall(bytes([packet_type, 2]) + struct.pack("!H", ident))

    received = 0

    def next_packet(deadline):
        """The next packet from the broker, handled and reported; (type, reader), or None at the
        deadline, or ("closed", None)."""
        nonlocal received
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            kind, body = read_packet(sock)
        except socket.timeout:
            return None
        if kind is None:
            return "closed", None
        ptype = kind >> 4
        r = Reader(body)
        if ptype == 3:  # PUBLISH
            qos = (kind >> 1) & 3
            topic = r.str()
            ident = r.u16() if qos else None
            props = r.properties() if v5 else {}
            received += 1
            emit("publish", {"topic": topic, "payload": body[r.pos:].decode("utf-8", "replace"), "qos": qos,
                             "dup": bool(kind & 0x08), "id": ident, "properties": props})
            if qos == 1:
                pid_ack(0x40, ident)
            elif qos == 2:
                pid_ack(0x50, ident)
        elif ptype in (5, 6, 7):  # PUBREC, PUBREL, PUBCOMP
            ident = r.u16()
            code = r.byte() if not r.done() else 0
            emit({5: "pubrec", 6: "pubrel", 7: "pubcomp"}[ptype], {"id": ident, "reason_code": code})
            if ptype == 6 and not a.drop_at_pubrel:
                pid_ack(0x70, ident)
        elif ptype == 9:  # SUBACK
            r.u16()
            props = r.properties() if v5 else {}
            emit("suback", {"reason_codes": list(r.take(len(body) - r.pos)), "properties": props})
        elif ptype == 14:  # DISCONNECT from the broker
            code = r.byte() if not r.done() else 0
            emit("disconnect", {"reason_code": code, "properties": r.properties() if v5 and not r.done() else {}})
            return "closed", None
        return ptype, r

    def wait_for(ptype, seconds=10):
        """Reads packets until one of type `ptype`; False when the connection closed or time ran out."""
        deadline = time.monotonic() + seconds
        while True:
            got = next_packet(deadline)
            if got is None or got[0] == "closed":
                return False
            if got[0] == ptype:
                return True

    def finish(end):
        sock.close()
        emit("end", end)
        return 0

    # --release ID: the PUBREL of a QoS 2 publish whose PUBREC came on an earlier connection.
    if a.release is not None:
        sock.sendall(bytes([0x62, 2]) + struct.pack("!H", a.release))
        if not wait_for(7):
            return finish("closed")

    # --publish TOPIC: a QoS 2 publish, sent --repeat times (DUP set on the repeats) before PUBREL.
    if a.publish is not None:
        var = string(a.publish) + struct.pack("!H", a.publish_id) + (varint(0) if v5 else b"")
        body = var + a.message.encode()
        for i in range(a.repeat):
            sock.sendall(bytes([0x34 | (0x08 if i else 0)]) + varint(len(body)) + body)
        for _ in range(a.repeat):
            if not wait_for(5):
                return finish("closed")
        if a.drop_after_pubrec:
            return finish("dropped")  # no PUBREL, no DISCONNECT
        sock.sendall(bytes([0x62, 2]) + struct.pack("!H", a.publish_id))
        if not wait_for(7):
            return finish("closed")

    if a.subscribe:
        body = struct.pack("!H", 1) + (varint(0) if v5 else b"")
        for f in a.subscribe:
            body += string(f) + bytes([a.qos])
        sock.sendall(bytes([0x82]) + varint(len(body)) + body)
        if not wait_for(9):
            return finish("closed")

    end = "connected"
    if a.wait > 0:
        deadline = time.monotonic() + a.wait
        end = "timeout"
        while not (a.count and received >= a.count):
            got = next_packet(deadline)
            if got is None:
                break
            if got[0] == "closed":
                return finish("closed")
            if got[0] == 6 and a.drop_at_pubrel:
                return finish("dropped")  # no PUBCOMP, no DISCONNECT
        else:
            end = "count"
    if end != "closed" and not a.no_disconnect:
        if v5 and a.disconnect_expiry is not None:
            props = bytes([0x11]) + struct.pack("!I", a.disconnect_expiry)
            body = bytes([0]) + varint(len(props)) + props
            sock.sendall(bytes([0xE0]) + varint(len(body)) + body)
        else:
            sock.sendall(bytes([0xE0, 0]))
    sock.close()
    emit("end", end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
