"""Peers for the benchmark: what a user would pick instead of kafka_pipeline.py, run on the
same topic, broker and database server (Quix Streams' PostgreSQLSink; Kafka Connect with the
Debezium JDBC sink, at its defaults and tuned). `python -m bench.peers` runs them alone."""

from bench.peers.harness import PeerResult
from bench.peers.run import Prepared, prepare, run_peers

__all__ = ["PeerResult", "Prepared", "prepare", "run_peers"]
