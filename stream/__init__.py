"""MQTT in and out, decoding, per-device buffers, the consumer service and the command line."""
