"""Kiosk traffic for a museum without kiosks: the traffic model (`traffic`, pure) and the
producer that counts only what Kafka acknowledged (`producer`). `kiosk_simulator.py` is the
command line over both. The pipeline (`lmnh`) knows nothing of this package."""
