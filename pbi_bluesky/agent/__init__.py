"""The anomaly agent: rescan flagged samples and tell defects from transients.

It follows the live scorer's verdicts (the verdict feed, else analysis
runs in Tiled), holds a lease so one of several agents acts, asks the queue
server (bluesky-queueserver-api) to rescan flagged samples as its policy allows, tells
confirmed defects from transients, and records its requests and decisions in Tiled.
"""

from pbi_bluesky.agent.core import Agent, Request
from pbi_bluesky.agent.lease import Lease
from pbi_bluesky.agent.policy import DEFAULT_POLICY_FILE, AgentPolicy, PolicyError, load_policy
from pbi_bluesky.agent.records import DECISION, REQUEST, RecordWriter
from pbi_bluesky.agent.rescans import AgentItem, QueueRefused, QueueUnavailable, RescanQueue
from pbi_bluesky.agent.runner import build_agent, run_agent
from pbi_bluesky.agent.source import AnalysisResult, FeedFollower, TiledFollower

__all__ = [
    "DECISION",
    "DEFAULT_POLICY_FILE",
    "REQUEST",
    "Agent",
    "AgentItem",
    "AgentPolicy",
    "AnalysisResult",
    "FeedFollower",
    "Lease",
    "PolicyError",
    "QueueRefused",
    "QueueUnavailable",
    "RecordWriter",
    "Request",
    "RescanQueue",
    "TiledFollower",
    "build_agent",
    "load_policy",
    "run_agent",
]
