"""A plain ZMQ SUB socket (pyzmq, i.e. libzmq) reading an llmd worker's KV events.

Usage: kv_events_sub.py EVENTS_ENDPOINT REPLAY_ENDPOINT
Prints "ready" once subscribed; reads until a line arrives on stdin, deliberately dropping
the batch with sequence number 2 and fetching it back from the replay socket (a DEALER
speaking vLLM's replay protocol); then replays every batch in order into a set of live
block hashes and prints a JSON summary.
"""
import json
import sys
import threading

import msgspec
import zmq

events_ep, replay_ep = sys.argv[1], sys.argv[2]
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.connect(events_ep)
sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
print("ready", flush=True)

done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()

DROP = 2
batches, topics, seen = {}, set(), []
poller = zmq.Poller()
poller.register(sub, zmq.POLLIN)
quiet = 0
while True:
    if dict(poller.poll(100)).get(sub):
        topic, seq, payload = sub.recv_multipart()
        seq = int.from_bytes(seq, "big")
        topics.add(topic.decode())
        seen.append(seq)
        if seq != DROP:
            batches[seq] = msgspec.msgpack.decode(payload)
        quiet = 0
    elif done.is_set():
        quiet += 1
        if quiet > 5:
            break

# Recover the dropped batch (and anything else missed) from the replay socket.
recovered = False
missing = [s for s in range(max(seen) + 1) if s not in batches] if seen else []
if missing:
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(replay_ep)
    dealer.send_multipart([b"", min(missing).to_bytes(8, "big")])
    while True:
        if not dealer.poll(5000):
            raise SystemExit("replay timed out")
        _, seq, payload = dealer.recv_multipart()
        if seq == (-1).to_bytes(8, "big", signed=True):
            break
        seq = int.from_bytes(seq, "big")
        if seq not in batches:
            batches[seq] = msgspec.msgpack.decode(payload)
            recovered = recovered or seq == DROP

assert sorted(batches) == list(range(len(batches))), "a gap remains"
live, removed = set(), 0
for seq in sorted(batches):
    ts, events = batches[seq][0], batches[seq][1]
    assert isinstance(ts, float)
    for ev in events:
        kind = ev[0]
        if kind == "BlockStored":
            hashes, parent, tokens, block_size = ev[1], ev[2], ev[3], ev[4]
            assert len(tokens) == len(hashes) * block_size
            live.update(hashes)
        elif kind == "BlockRemoved":
            removed += len(ev[1])
            live.difference_update(ev[1])
        elif kind == "AllBlocksCleared":
            live.clear()
        else:
            raise SystemExit(f"unknown event {kind}")

assert len(topics) == 1, topics
print(json.dumps({
    "batches": len(batches),
    "removed": removed,
    "recovered_gap": recovered,
    "topic": topics.pop(),
    "live_blocks": len(live),
    "live": sorted(live),
}))
