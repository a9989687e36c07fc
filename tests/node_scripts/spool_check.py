# Runs ON MicroPython: the RAM spool's bookkeeping through its own methods, without a network:
# budget, tombstone runs, what goes on `dropped` and in what pieces, what a confirm forgets,
# the resend schedule and what RTC memory keeps across a reset. Prints one line per step, then
# "done".
import json
import time

from espcam import frames, spool

logged = []


def log(*args):
    logged.append(" ".join(str(a) for a in args))


def frame(fid, n):
    return frames.Frame(fid, bytes(n), b"{}")


def batches(sp):
    out = []
    while True:
        reason, ids, marks = sp.dropped_batch()
        if reason is None:
            return out
        out.append((spool.REASONS[reason], ids[0], ids[-1], len(ids)))
        sp.dropped_sent(marks)


sp = spool.RamSpool(100, 15, log)
for fid in range(1, 6):
    sp.add(frame(fid, 40))
print("held", sp.ids, sp.held, "tombs", [r[:3] for r in sp.tombs])
print("said", batches(sp), "again", batches(sp))
print("larger", sp.add(frame(6, 101)), sp.ids, [r[:3] for r in sp.tombs])
sp.confirm([2, 5, 99])
print("after confirm", sp.ids, [r[:3] for r in sp.tombs], sp.state())
print("not yet", sp.tomb_round(time.ticks_ms()), batches(sp))
sp.tomb_due = time.ticks_ms()
print("round", sp.tomb_round(time.ticks_ms()), batches(sp))

big = spool.RamSpool(10, 15, log)
for fid in range(1, 201):
    big.add(frame(fid, 10))
print("runs", [r[:3] for r in big.tombs], "dropped", big.dropped())
print("pieces", batches(big))
big.confirm(list(range(1, 65)))
print("after 64", [r[:3] for r in big.tombs])

print("retry", [sp.retry_ms(t) for t in (1, 2, 3, 4, 5, 6, 7, 20)])

ram = spool.RamSpool(1000, 15, log)
for fid in (7, 8, 10):
    ram.add(frame(fid, 10))
ram.tomb(3, spool.FULL)
doc = json.loads(json.dumps(ram.rtc()))
print("rtc", doc)
back = spool.RamSpool(1000, 15, log, doc, "wdt")
print("after reset", [r[:3] for r in back.tombs], batches(back))
slept = spool.RamSpool(1000, 15, log)
for fid in (11, 12):
    slept.add(frame(fid, 10))
slept.sleeping()
woke = spool.RamSpool(1000, 15, log, json.loads(json.dumps(slept.rtc())), "deepsleep")
print("after sleep", [r[:3] for r in woke.tombs], woke.ids)
print("done")
