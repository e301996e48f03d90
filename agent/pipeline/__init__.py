"""The data path: readings → spool → resampled windows → CSV files → outbox → upload to the store.

spool       the durable reading log (Arrow IPC segments)
resample    readings → one row per sampling instant (fill rules, aggregates)
windows     the window plan (sampling rate, upload frequency, offset) and window bounds
csvfile     the L4E CSV file of one window
closer      closes due windows: spool → resample → CSV → outbox (WindowCloser)
outbox      files waiting for upload, deleted only after the store confirmed
upload      the upload loop with timeouts and backoff
store       the store (S3 or a folder) behind one interface
diskhealth  disk-full and write-failure state shared by the writers
"""
