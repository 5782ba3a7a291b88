"""The services hepstream starts on one machine: Kafka-protocol broker and XRootD server, stopped by PID."""
