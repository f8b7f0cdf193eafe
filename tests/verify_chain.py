#!/usr/bin/env python3
"""Recompute every ticketd hash chain from an NDJSON export, trusting nothing but the file.

    python3 verify_chain.py EXPORT.ndjson [--anchor EARLIER.ndjson]    (- for stdin)

Reads `ticketd export --format ndjson` output, or the body of
`GET /v1/audit/events` with `Accept: application/x-ndjson`: one JSON object a line, in log
order. For every event it rebuilds the canonical bytes defined in docs/AUDIT.md, hashes them
with SHA-256 and checks, as `ticketd verify` does:

  hash_mismatch     the stored hash is not the hash of the event's bytes
  broken_link       prev_hash is not the hash of the stream's previous event
  missing_versions  a stream skips versions (names the first missing one)
  out_of_order      a version comes after a higher one of its stream

With --anchor, an earlier export's last event of each stream must still be there with the
same hash (catching truncation, removal, and rewrites that recomputed every hash):

  anchor_missing    the anchored version is gone
  anchor_mismatch   the anchored version has another hash

It does not decode payloads (that needs MessagePack and the event schemas), so `ticketd
verify`'s `undecodable` has no counterpart here.

Prints one `FAIL stream=<id> version=<n> problem=<name>: <detail>` line per finding and a
summary line; exits 0 when every chain holds, 1 on any finding, 2 on unreadable input.
Python 3 standard library only.
"""

import argparse
import datetime
import hashlib
import json
import struct
import sys
import uuid

DOMAIN_TAG = b"ticketd.event.v1"
ZERO_HASH = bytes(32)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def micros(rfc3339):
    """Microseconds since the Unix epoch, exactly (no floating point)."""
    at = datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError("recorded_at has no time zone")
    return (at - EPOCH) // datetime.timedelta(microseconds=1)


def length_prefixed(data):
    return struct.pack(">I", len(data)) + data


def canonical_bytes(event, prev_hash):
    return b"".join(
        [
            DOMAIN_TAG,
            prev_hash,
            uuid.UUID(event["stream"]).bytes,
            struct.pack(">Q", event["version"]),
            uuid.UUID(event["id"]).bytes,
            length_prefixed(event["type"].encode("utf-8")),
            struct.pack(">I", event["schema_version"]),
            struct.pack(">q", micros(event["recorded_at"])),
            length_prefixed(bytes.fromhex(event["metadata"])),
            length_prefixed(bytes.fromhex(event["payload"])),
        ]
    )


# docs/AUDIT.md's known vector (domain/tests/known_hash.txt): checked on every run, so this
# script cannot silently drift from the canonical bytes ticketd hashes.
KNOWN_EVENT = {
    "stream": "00000000-0000-0000-0000-000000000000",
    "version": 1,
    "id": "00000000-0000-0000-0000-000000000000",
    "type": "ticket.read",
    "schema_version": 1,
    "recorded_at": "2023-11-14T22:13:20.000000Z",
    "metadata": "",
    "payload": "80",
}
KNOWN_HASH = "1a08c1462aca16b7be603e7990b7d9835eb18fc8ede3e8a6326e411d3ac5dd05"


def self_test():
    got = hashlib.sha256(canonical_bytes(KNOWN_EVENT, ZERO_HASH)).hexdigest()
    if got != KNOWN_HASH:
        raise AssertionError("known vector hashes to %s, not %s" % (got, KNOWN_HASH))


def records(lines):
    """Yields (event, stream, version, prev_hash, hash) per non-blank line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            yield (event, str(uuid.UUID(event["stream"])), event["version"],
                   bytes.fromhex(event["prev_hash"]), bytes.fromhex(event["hash"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError("line %d: %s" % (number, e)) from e


def anchors_of(lines):
    """The last (version, hash) of each stream in an earlier export."""
    last = {}
    for _, stream, version, _, stored in records(lines):
        if version >= last.get(stream, (0, b""))[0]:
            last[stream] = (version, stored)
    return last


def verify(lines, anchors=None):
    """Returns (events, streams, findings); a finding is (stream, version, problem, detail)."""
    anchors = dict(anchors or {})
    heads = {}  # stream -> (version, hash) of the last event seen
    findings = []
    events = 0
    for event, stream, version, prev_hash, stored in records(lines):
        try:
            computed = hashlib.sha256(canonical_bytes(event, prev_hash)).digest()
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise ValueError("event %d: %s" % (events + 1, e)) from e
        events += 1
        head_version, head_hash = heads.get(stream, (0, ZERO_HASH))
        expected = head_version + 1
        if version > expected:
            findings.append(
                (stream, expected, "missing_versions",
                 "versions %d..%d are missing: version %d follows version %d in the log"
                 % (expected, version - 1, version, head_version)))
        elif version < expected:
            findings.append(
                (stream, version, "out_of_order",
                 "version %d comes after version %d in the log" % (version, head_version)))
        elif prev_hash != head_hash:
            findings.append(
                (stream, version, "broken_link",
                 "prev_hash %s is not the hash %s of version %d"
                 % (prev_hash.hex(), head_hash.hex(), head_version)))
        if computed != stored:
            findings.append(
                (stream, version, "hash_mismatch",
                 "stored hash %s but the event's bytes hash to %s"
                 % (stored.hex(), computed.hex())))
        anchor = anchors.get(stream)
        if anchor is not None and anchor[0] == version:
            del anchors[stream]
            if anchor[1] != stored:
                findings.append(
                    (stream, version, "anchor_mismatch",
                     "the anchor has hash %s for this version, the log %s: its history was "
                     "rewritten" % (anchor[1].hex(), stored.hex())))
        # Continue from what is stored, as ticketd verify does.
        if version >= head_version:
            heads[stream] = (version, stored)
    for stream, (version, _) in sorted(anchors.items()):
        findings.append(
            (stream, version, "anchor_missing",
             "the anchor names version %d, which the log no longer holds: the stream was "
             "truncated or removed" % version))
    return events, len(heads), findings


def main(argv):
    self_test()
    parser = argparse.ArgumentParser(description="Recompute ticketd hash chains.")
    parser.add_argument("export", help="an NDJSON export, or - for stdin")
    parser.add_argument("--anchor", help="an earlier NDJSON export whose heads must remain")
    args = parser.parse_args(argv[1:])
    try:
        anchors = None
        if args.anchor:
            with open(args.anchor, encoding="utf-8") as f:
                anchors = anchors_of(f)
            if not anchors:
                # As `ticketd verify --anchor`: an empty anchor would check nothing.
                raise ValueError("the anchor %s holds no events" % args.anchor)
        if args.export == "-":
            result = verify(sys.stdin, anchors)
        else:
            with open(args.export, encoding="utf-8") as f:
                result = verify(f, anchors)
    except (OSError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    events, streams, findings = result
    for stream, version, problem, detail in findings:
        print("FAIL stream=%s version=%d problem=%s: %s" % (stream, version, problem, detail))
    verdict = "FAILED" if findings else "ok"
    print("%s: %d events in %d streams, %d findings" % (verdict, events, streams, len(findings)))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
