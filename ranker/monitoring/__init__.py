"""Monitoring: the scorer's served-feature log and what is computed from it.

=================  ==============================================================================
``servedlog``      the log record, the non-blocking background writer (bounded queue, rotated
                   parquet files in a local folder or S3) and the reader
``skew``           training/serving skew: logged vectors against Feast ``get_historical_features``
``drift``          PSI per feature against a like-with-like reference, judged by each feature's healthy range
``online``         online metrics per surface, model version and variant joined from the event log
``abstats``        user-level A/B estimates (delta method), sample-ratio check, mSPRT, fixed-horizon plan
``absim``          many A/A and A/B experiments in the simulator (false positives and power of the rules)
``alertcheck``     exported gauges replayed through the alert rules with promtool
``live``           the simulator as a live environment: engagement drawn for rankings the scorer served
``abtest``         deterministic salted-hash assignment of users to model variants
``export``         the monitors' figures as Prometheus metrics (textfile or Pushgateway)
``report``         one HTML page of all of it
=================  ==============================================================================
"""
