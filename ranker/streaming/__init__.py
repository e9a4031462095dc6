"""The streaming half of the feature platform: events from a broker update the online store within a
second, with the same feature declarations (feature_repo/features/realtime.py) that training reads.

windows.py / backfill.py compute the real-time features (event time, allowed lateness, dedup) and their
offline history; messages.py, broker.py, processor.py, writer.py move them from the broker to the store.
"""
