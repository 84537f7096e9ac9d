"""PolyBlendInsight for Bluesky: live SAXS anomaly detection for polymer blends."""
