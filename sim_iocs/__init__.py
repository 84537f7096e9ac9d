"""Simulated EPICS IOCs (caproto) for developing and testing the Bluesky plugin."""
