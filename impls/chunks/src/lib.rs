//! ReadWriterAt pipeline stages: arbitrary, chunked, synced, puller, pusher, tracking, lockable.
