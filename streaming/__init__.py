"""Producing: ROOT files read chunk by chunk with uproot, published to Kafka."""
