-- One event per transaction, with payload sizes like ticketd's (metadata ~120 B, payload ~200 B).
INSERT INTO bench_events (stream_id, version, event_id, event_type, schema_version, recorded_at,
                          metadata, payload, prev_hash, hash)
VALUES (gen_random_uuid(), 1, gen_random_uuid(), 'ticket.commented', 1, now(),
        decode(repeat('ab', 120), 'hex'), decode(repeat('cd', 200), 'hex'),
        decode(repeat('00', 32), 'hex'), sha256(random()::text::bytea));
