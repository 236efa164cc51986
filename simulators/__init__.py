"""Synthetic accelerometer streams, publishing them and replaying recordings over MQTT."""
