"""What the index keeps in memory per node (frames and bytes, the newest frame, the earliest
arrival, whether any frame is counted lost) is read by the store workers without the index's
lock. After any sequence of adds, removals, drops and losses it must say what the table says."""

from __future__ import annotations

import random

from espcam.backend.index import Index
from espcam.backend.records import StoredFrame


def from_table(index: Index, node: str, cutoff: float) -> tuple:
    db = index.db
    count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM frames WHERE "
                             "node = ?", (node,)).fetchone()
    newest = db.execute("SELECT path FROM frames WHERE node = ? ORDER BY taken_at DESC, "
                        "frame_id DESC, received_at DESC LIMIT 1", (node,)).fetchone()
    old = db.execute("SELECT 1 FROM frames WHERE node = ? AND received_at < ? LIMIT 1",
                     (node, cutoff)).fetchone()
    return (count, size), newest[0] if newest else None, old is not None


def test_the_cached_answers_agree_with_the_table_after_random_changes(tmp_path):
    rnd = random.Random(14)
    index = Index(tmp_path)
    rows: dict[str, list[StoredFrame]] = {"cam-a": [], "cam-b": []}
    fid = 0
    for step in range(600):
        node = rnd.choice(list(rows))
        op = rnd.random()
        if op < 0.6 or not rows[node]:
            fid += 1
            # Arrivals out of order, as frames stored side by side finish.
            received = 1000.0 + fid + rnd.uniform(-300, 5)
            f = StoredFrame(node, fid, None, received, rnd.randrange(1, 5000), 1, 1, None,
                            fid, f"{node}/d/{fid}.jpg")
            index.add(f, received)
            rows[node].append(f)
        elif op < 0.8:
            f = rows[node].pop(rnd.randrange(len(rows[node])))
            index.remove(node, f.path, f.bytes)
        elif op < 0.9:
            f = rows[node].pop(rnd.randrange(len(rows[node])))
            index.drop(node, f.path)
        else:
            lost = fid + 1000 + step
            index.count_lost(node, [lost], "test", 0.0)
            assert index.found(node, lost)  # then it arrives after all
        cutoff = 1000.0 + rnd.uniform(-300, fid + 5)
        for n in rows:
            cached = (index.totals(n), index.newest_path(n), index.older_than(n, cutoff))
            assert cached == from_table(index, n, cutoff), (step, n)
            assert index.found(n, -1) is False
    index.close()
