"""The tables of the index (index.py): frames, frames counted lost, what the analysis found,
known nodes. Kept apart from the code that reads and writes them."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    node        TEXT    NOT NULL,
    frame_id    INTEGER NOT NULL,
    captured_at REAL,
    received_at REAL    NOT NULL,
    taken_at    REAL    NOT NULL,   -- captured_at if the node's clock was set, else received_at
    bytes       INTEGER NOT NULL,
    width       INTEGER,
    height      INTEGER,
    trigger     TEXT,
    crc         INTEGER NOT NULL,
    path        TEXT    NOT NULL UNIQUE,
    -- A frame id is re-used only by a node that lost its flash; then the CRC tells them apart.
    PRIMARY KEY (node, frame_id, crc)
);
CREATE INDEX IF NOT EXISTS frames_by_time ON frames (node, taken_at);
-- Retention goes by arrival: a node's clock cannot make a frame old (or young).
CREATE INDEX IF NOT EXISTS frames_by_arrival ON frames (node, received_at);
-- Frames counted lost (protocol version 2): counted once, whatever comes again.
CREATE TABLE IF NOT EXISTS lost (
    node     TEXT    NOT NULL,
    frame_id INTEGER NOT NULL,
    reason   TEXT    NOT NULL,
    at       REAL    NOT NULL,
    PRIMARY KEY (node, frame_id)
);
-- What the analysis stage found in a frame (findings.py); gone with the frame.
CREATE TABLE IF NOT EXISTS analysis (
    node        TEXT    NOT NULL,
    frame_id    INTEGER NOT NULL,
    crc         INTEGER NOT NULL,
    analysed_at REAL    NOT NULL,
    motion      REAL,               -- percent changed since the node's previous analysed frame
    motion_box  TEXT,               -- JSON [left, top, right, bottom], frame pixels
    moved       INTEGER NOT NULL,   -- motion at or over the node's threshold
    faces       INTEGER NOT NULL,
    PRIMARY KEY (node, frame_id, crc)
);
CREATE TABLE IF NOT EXISTS faces_seen (
    node     TEXT    NOT NULL,
    frame_id INTEGER NOT NULL,
    crc      INTEGER NOT NULL,
    n        INTEGER NOT NULL,      -- the face's number in the frame
    name     TEXT,                  -- the enrolled person; NULL: matched no one
    distance REAL,                  -- to the closest enrolled face; NULL: no one enrolled
    box      TEXT    NOT NULL,      -- JSON [left, top, right, bottom], frame pixels
    PRIMARY KEY (node, frame_id, crc, n)
);
CREATE INDEX IF NOT EXISTS faces_by_name ON faces_seen (node, name);
CREATE TRIGGER IF NOT EXISTS findings_go_with_their_frame AFTER DELETE ON frames BEGIN
    DELETE FROM analysis WHERE node = OLD.node AND frame_id = OLD.frame_id AND crc = OLD.crc;
    DELETE FROM faces_seen WHERE node = OLD.node AND frame_id = OLD.frame_id AND crc = OLD.crc;
END;
CREATE TABLE IF NOT EXISTS nodes (
    node         TEXT PRIMARY KEY,
    availability TEXT,
    state        TEXT,
    last_seen    REAL,
    last_frame   INTEGER
);
"""
